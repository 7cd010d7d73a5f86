"""The WonderProxy settings the engine is judged in: all servers, thinned, Europe, the Americas.

Shared by the engine benchmarks so every figure is measured on the same subsets. A design choice
that helps only one of them is tuning to that subset, not a better engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoprobe.datasets import Dataset
from geoprobe.geo.sphere import distance_matrix_km

SHARED = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wonderproxy-pings-2020-07"
)
EUROPE = (-25.0, 34.0, 45.0, 72.0)  # lon min, lat min, lon max, lat max
AMERICAS = (-170.0, -60.0, -30.0, 75.0)


def subset(ds: Dataset, keep: np.ndarray, name: str) -> Dataset:
    ix = np.flatnonzero(keep)
    grid = np.ix_(ix, ix)
    return Dataset(
        name=f"{ds.name}/{name}",
        servers=[ds.servers[i] for i in ix],
        rtt_min=ds.rtt_min[grid],
        rtt_avg=ds.rtt_avg[grid],
        rtt_mdev=ds.rtt_mdev[grid],
        warnings=list(ds.warnings),
        source=ds.source,
    )


def thinned(ds: Dataset, min_km: float = 100.0, seed: int = 0) -> Dataset:
    """Greedily keep servers (in a seeded random order) at least ``min_km`` from every kept one."""
    km = distance_matrix_km(ds.lats, ds.lons, ds.lats, ds.lons)
    keep = np.zeros(len(ds), dtype=bool)
    for i in np.random.default_rng(seed).permutation(len(ds)):
        if not (keep & (km[i] < min_km)).any():
            keep[i] = True
    return subset(ds, keep, f"thinned-{min_km:.0f}km")


def boxed(ds: Dataset, bbox: tuple[float, float, float, float], name: str) -> Dataset:
    lo0, la0, lo1, la1 = bbox
    keep = (ds.lons >= lo0) & (ds.lons <= lo1) & (ds.lats >= la0) & (ds.lats <= la1)
    return subset(ds, keep, name)


def settings(ds: Dataset) -> dict[str, Dataset]:
    return {
        "all": ds,
        "thinned": thinned(ds),
        "europe": boxed(ds, EUROPE, "europe"),
        "americas": boxed(ds, AMERICAS, "americas"),
    }
