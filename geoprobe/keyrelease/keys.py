"""Keys of the release protocol: the server's Ed25519 key, and a client's Ed25519 + X25519 pair.

Private keys are PKCS#8 PEM files created 0600. A key file that group or others may read is
refused when loaded: a secret that leaked to another local user is no longer the client's.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from geoprobe.errors import InputError

SERVER_KEY = "server.key"
CLIENT_SIGN_KEY = "client.key"
CLIENT_BOX_KEY = "client-box.key"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write_private(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InputError("a key already exists here; refusing to overwrite it", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot create key: {exc.strerror}", file=path) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def read_private_file(path: Path, *, field: str | None = None) -> bytes:
    """A private file's bytes; refused when it is not a regular file or others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=path, field=field) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError("not a regular file", file=path, field=field)
        if st.st_mode & 0o077:
            raise InputError(
                f"mode {stat.S_IMODE(st.st_mode):04o}: group and others must not have access"
                " (chmod 600)",
                file=path,
                field=field,
            )
        return f.read(64 * 1024)


def _load(path: Path, field: str | None) -> object:
    data = read_private_file(path, field=field)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError("not an unencrypted PEM private key", file=path, field=field) from None


def load_sign_key(path: Path, *, field: str | None = None) -> Ed25519PrivateKey:
    key = _load(path, field)
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError("not an Ed25519 private key", file=path, field=field)
    return key


def load_box_key(path: Path, *, field: str | None = None) -> X25519PrivateKey:
    key = _load(path, field)
    if not isinstance(key, X25519PrivateKey):
        raise InputError("not an X25519 private key", file=path, field=field)
    return key


def ed25519_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public(text: object, kind: str) -> bytes:
    """32 raw bytes from base64; ValueError or TypeError with a short reason otherwise."""
    if not isinstance(text, str):
        raise TypeError("must be a base64 string")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"must be a 32-byte {kind} public key, got {len(raw)} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class ServerKeys:
    key_path: Path
    pubkey: str


@dataclass(frozen=True, slots=True)
class ClientKeys:
    sign_path: Path
    box_path: Path
    sign_pubkey: str
    box_pubkey: str


def keygen_server(out_dir: Path) -> ServerKeys:
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    path = out_dir / SERVER_KEY
    _write_private(path, key)
    return ServerKeys(path, b64(ed25519_raw(key)))


def keygen_client(out_dir: Path) -> ClientKeys:
    out_dir.mkdir(parents=True, exist_ok=True)
    sign, box = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    sp, bp = out_dir / CLIENT_SIGN_KEY, out_dir / CLIENT_BOX_KEY
    if bp.exists():
        raise InputError("a key already exists here; refusing to overwrite it", file=bp)
    _write_private(sp, sign)
    _write_private(bp, box)
    return ClientKeys(sp, bp, b64(ed25519_raw(sign)), b64(x25519_raw(box)))
