"""Ed25519 keys of signed landmarks: generate, save, load, and the short key id catalogues pin.

The key id is derived from the public key (not chosen by the operator), so a catalogue entry's
``key_id`` and ``pubkey`` can be checked against each other.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geoprobe.errors import InputError

MAX_KEY_BYTES = 64 * 1024
PRIVATE_NAME = "landmark.key"
PUBLIC_NAME = "landmark.pub"


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw public key bytes, as the catalogue stores them (base64)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pubkey: bytes) -> str:
    """First 8 bytes of SHA-256 of the raw public key, hex: short enough to print, long enough to
    tell apart."""
    return hashlib.sha256(pubkey).hexdigest()[:16]


def public_from_raw(pubkey: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(pubkey)


def save_private(path: str | Path, key: Ed25519PrivateKey) -> None:
    """PKCS#8 PEM, created with mode 0600 from the start (never world-readable, not even
    briefly)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_private(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)  # a PEM key is a few hundred bytes; /dev/zero is not
    except OSError as exc:
        raise InputError(f"cannot read key: {exc.strerror}", file=p) from None
    if len(data) > MAX_KEY_BYTES:
        raise InputError("not an unencrypted PEM private key (too large)", file=p)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError("not an unencrypted PEM private key", file=p) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError("not an Ed25519 private key", file=p)
    return key


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_path: Path
    public_path: Path
    pubkey_b64: str
    key_id: str


def keygen(out_dir: str | Path) -> KeyPair:
    """Write ``landmark.key`` (0600) and ``landmark.pub`` (base64 + key id) into ``out_dir``.

    Refuses to overwrite an existing key: replacing a landmark's key silently would break every
    catalogue that pins it.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / PRIVATE_NAME, d / PUBLIC_NAME
    if priv.exists():
        raise InputError("a key already exists here; refusing to overwrite it", file=priv)
    key = generate()
    save_private(priv, key)
    raw = public_raw(key)
    b64 = base64.b64encode(raw).decode("ascii")
    kid = key_id(raw)
    pub.write_text(f"{b64} {kid}\n")
    return KeyPair(private_path=priv, public_path=pub, pubkey_b64=b64, key_id=kid)
