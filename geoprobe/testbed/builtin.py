"""The built-in world: ~100 data-centre cities and RTTs from a physical delay model.

It lets ``geoprobe demo`` run offline on a fresh machine without any dataset. The RTT of a pair is
an access delay plus the great-circle distance at light-in-fibre speed times a route inflation
(real paths are 1.3-1.9x longer than the great circle), drawn per pair from a fixed seed so the
world is the same on every machine. It is a model, not a measurement: use ``--dataset`` for real
data.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np

from geoprobe.datasets import Dataset, Server
from geoprobe.geo.sphere import SOUND_KM_PER_MS, haversine_km

CITIES = Path(__file__).resolve().parent.parent / "data" / "world" / "cities.csv"
ACCESS_MS = 0.3
INFLATION = (1.3, 1.9)
DEFAULT_CITY = "Frankfurt"


def builtin_dataset(seed: int = 2020) -> Dataset:
    with CITIES.open(newline="") as f:
        servers = [
            Server(
                id=r["id"],
                name=r["id"],
                lat=float(r["lat"]),
                lon=float(r["lon"]),
                country=r["country"],
            )
            for r in csv.DictReader(f)
        ]
    lat = np.array([s.lat for s in servers])
    lon = np.array([s.lon for s in servers])
    km = np.asarray(
        haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]), dtype=float
    )
    rng = random.Random(seed)
    n = len(servers)
    inflation = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            inflation[i, j] = inflation[j, i] = rng.uniform(*INFLATION)
    rmin = ACCESS_MS + km / SOUND_KM_PER_MS * inflation
    np.fill_diagonal(rmin, np.nan)
    ravg = rmin * 1.03 + 0.1
    mdev = rmin * 0.01 + 0.05
    return Dataset(
        name="builtin",
        servers=servers,
        rtt_min=rmin,
        rtt_avg=ravg,
        rtt_mdev=mdev,
        source=f"built-in world ({CITIES.name}, physical delay model)",
    )
