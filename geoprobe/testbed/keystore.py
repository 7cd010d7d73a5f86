"""Signing keys of the emulated landmarks: fresh per run, or kept in a directory to be shared.

Two testbeds that must serve one catalogue (the QEMU lab's two sites) point ``--keys-dir`` at the
same directory: the first creates a key per landmark, the next ones load the same keys.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.probe import keys

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


def key_file(keys_dir: Path, landmark_id: str) -> Path:
    """``<id>.key`` when the id is a safe file name, else a hash of it (ids come from datasets)."""
    stem = (
        landmark_id
        if _SAFE.match(landmark_id)
        else "id-" + hashlib.sha256(landmark_id.encode()).hexdigest()[:24]
    )
    return keys_dir / f"{stem}.key"


def landmark_keys(ids: Sequence[str], keys_dir: Path | None = None) -> dict[str, Ed25519PrivateKey]:
    """One Ed25519 key per landmark id: loaded from ``keys_dir`` when there, else generated (and
    saved there, mode 0600, when a directory is given)."""
    if keys_dir is None:
        return {lid: keys.generate() for lid in ids}
    keys_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Ed25519PrivateKey] = {}
    for lid in ids:
        path = key_file(keys_dir, lid)
        if path.exists():
            out[lid] = keys.load_private(path)
            continue
        key = keys.generate()
        try:
            keys.save_private(path, key)
        except FileExistsError:  # another testbed created it a moment ago: use that one
            key = keys.load_private(path)
        out[lid] = key
    return out
