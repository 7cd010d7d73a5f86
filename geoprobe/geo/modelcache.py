"""A fitted calibration on disk, so a fresh ``geoprobe locate`` does not refit the catalogue.

Fitting a 250-landmark catalogue (bestlines, soft-ranging table, and the tempering fitted by
locating the catalogue's own landmarks) takes about a second; a cached model loads in milliseconds.
The key hashes everything the fit reads -- the landmarks' ids, positions and claimed countries, the
catalogue's RTTs, the country lookup it was tempered with, and ``MODEL_VERSION`` -- so a changed
catalogue or a new engine never reuses a stale model.

Files are numpy ``.npz`` archives read with ``allow_pickle=False``: a cache file is data, never
code. A file that is unreadable, truncated or of the wrong shape is ignored (the caller refits and
overwrites it); writes go to a temporary file in the same directory and are renamed into place, so a
reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoprobe.geo.calibration import R_EDGES, U_BINS, Model

#: Bump whenever fitting or the Model's fields change meaning: old cache files then miss.
MODEL_VERSION = 3
_META = "__meta__"


def model_key(
    landmarks: Sequence[tuple[str, float, float, str | None]],
    rtts: Sequence[tuple[str, str, float]],
    countries_key: str,
) -> str:
    """The cache key of a fit: (id, lat, lon, country) per landmark, (src, dst, ms) per RTT."""
    raw = json.dumps(
        {
            "version": MODEL_VERSION,
            "countries": countries_key,
            "landmarks": [[i, float(a), float(o), c] for i, a, o, c in landmarks],
            "rtts": [[s, d, float(v)] for s, d, v in rtts],
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def cache_path(directory: Path, key: str) -> Path:
    return directory / "models" / f"{key}.npz"


def save(path: Path, model: Model) -> None:
    """Write ``model`` atomically (temporary file in the same directory, then ``os.replace``)."""
    arrays: dict[str, Any] = {}
    meta: dict[str, Any] = {"version": MODEL_VERSION}
    for f in dataclasses.fields(Model):
        value = getattr(model, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            meta[f.name] = value
    arrays[_META] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: Path) -> Model | None:
    """The model stored at ``path``; None when it is missing, corrupt or from another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[_META][()]))
            arrays: dict[str, Any] = {k: np.array(z[k]) for k in z.files if k != _META}
        if not isinstance(meta, dict) or meta.pop("version", None) != MODEL_VERSION:
            return None
        model = Model(**meta, **arrays)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    return model if _well_formed(model) else None


def _well_formed(m: Model) -> bool:
    n = len(m.ids)
    if not (
        isinstance(m.ids, list)
        and all(isinstance(i, str) for i in m.ids)
        and isinstance(m.excluded, dict)
    ):
        return False
    per_landmark = (m.lat, m.lon, m.slope, m.intercept, m.offset)
    if any(a.shape != (n,) or a.dtype.kind != "f" for a in per_landmark):
        return False
    if m.table.shape != (len(R_EDGES) - 1, U_BINS) or not np.isfinite(m.table).all():
        return False
    return m.rtt.shape in ((n, n), (0, 0)) and bool(
        np.isfinite(m.slope).all() and (m.slope > 0).all()
    )
