"""The VM's Ed25519 identity key: it answers landmarks' challenges and signs attestations.

It lives in the state directory with mode 0600. When run as root, a key file that another user
owns or can read is refused: whoever can replace or read it can speak as this VM.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geoprobe.errors import InputError
from geoprobe.probe import keys

PRIVATE_NAME = "identity.key"
PUBLIC_NAME = "identity.pub"


def private_path(state_dir: Path) -> Path:
    return state_dir / PRIVATE_NAME


def load(path: Path) -> Ed25519PrivateKey:
    """Load the key, refusing one that others could have written or read."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read the VM identity key: {exc.strerror}", file=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError("the VM identity key is not a regular file", file=path)
    if st.st_mode & 0o077:
        raise InputError(
            f"the VM identity key is open to others (mode {stat.S_IMODE(st.st_mode):o}); "
            "chmod 600 it",
            file=path,
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise InputError("the VM identity key belongs to another user", file=path)
    return keys.load_private(path)


def load_or_create(state_dir: Path) -> Ed25519PrivateKey:
    """The VM's key, created (0600, with ``identity.pub`` beside it) on first use."""
    path = private_path(state_dir)
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = keys.generate()
        try:
            keys.save_private(path, key)
        except FileExistsError:  # another process made it first: use theirs
            return load(path)
        except OSError as exc:
            raise InputError(
                f"cannot create the VM identity key: {exc.strerror}", file=path
            ) from None
        raw = keys.public_raw(key)
        (state_dir / PUBLIC_NAME).write_text(
            f"{base64.b64encode(raw).decode('ascii')} {keys.key_id(raw)}\n"
        )
        return key
    return load(path)


def parse_public(text: str, *, where: str) -> Ed25519PublicKey:
    """A public key as ``identity.pub`` holds it (base64, optionally followed by its key id)."""
    words = text.split()
    if not words:
        raise InputError("no public key", file=where)
    try:
        raw = base64.b64decode(words[0], validate=True)
        return keys.public_from_raw(raw)
    except (binascii.Error, ValueError):
        raise InputError("not a base64 Ed25519 public key", file=where) from None


def load_public(spec: str) -> Ed25519PublicKey:
    """``spec`` is an ``identity.pub`` file, or the base64 key itself."""
    p = Path(spec)
    if p.is_file():
        try:
            return parse_public(p.read_text(errors="replace")[:4096], where=str(p))
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", file=p) from None
    return parse_public(spec, where="--vm-key")
