"""A synthetic European world for command tests: a catalogue on 127.0.0.1 and replayed RTTs.

RTTs come from tests/watch/watch_world.py (1.5 x the sound bound plus jitter), so no packet is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from geoprobe.geo.countries import default_index
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement, save_measurements

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "watch"))
from watch_world import LANDMARKS, rtts_at

FRANKFURT = (50.11, 8.68)
MADRID = (40.42, -3.70)


def make_catalogue(path: Path) -> Path:
    """Landmarks on a grid over Europe, all at 127.0.0.1 on a port nothing answers."""
    idx = default_index()
    lms = [
        Landmark(
            id=lid, lat=lat, lon=lon, country=idx.code_at(lat, lon), address="127.0.0.1", udp_port=9
        )
        for lid, lat, lon in LANDMARKS
    ]
    rtts = [
        (a, b, 1.5 * float(haversine_km(alat, alon, blat, blon)) / 100 + 0.8)
        for a, alat, alon in LANDMARKS
        for b, blat, blon in LANDMARKS
        if a < b
    ]
    Catalogue(landmarks=lms, rtts=rtts, name="synthetic-europe").save(path)
    return path


def replay(tmp: Path, at: tuple[float, float], seed: int) -> Path:
    """Measurements taken at ``at``, saved for ``--replay``."""
    r = rtts_at(*at, np.random.default_rng(seed))
    ms = [Measurement(landmark_id=k, method="udp", rtts_ms=[v], sent=1) for k, v in r.items()]
    p = tmp / f"m-{at[0]}-{at[1]}-{seed}.json"
    save_measurements(p, ms)
    return p
