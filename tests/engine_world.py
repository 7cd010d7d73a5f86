"""A small generated world for engine tests: three box-shaped countries, landmarks, honest RTTs.

RTTs never beat light in fibre (path inflation >= 1.2, plus access delays), so the sound bound
holds for every pair, exactly as physics guarantees for real measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry import box

from geoprobe.datasets import Dataset, Server
from geoprobe.geo.countries import CountryIndex
from geoprobe.geo.sphere import distance_matrix_km

COUNTRIES = {
    "AA": box(0.0, 40.0, 10.0, 50.0),
    "BB": box(10.0, 40.0, 20.0, 50.0),
    "CC": box(0.0, 30.0, 20.0, 40.0),
}

_INDEX: CountryIndex | None = None


def countries() -> CountryIndex:
    global _INDEX
    if _INDEX is None:
        _INDEX = CountryIndex(
            COUNTRIES, {"AA": "Aland", "BB": "Bland", "CC": "Cland"}, cell_deg=0.5
        )
    return _INDEX


def code_of(lat: float, lon: float) -> str:
    return str(countries().codes_at(np.array([lat]), np.array([lon]))[0])


def rtt_between(
    rng: np.random.Generator, km: np.ndarray, access_a: np.ndarray, access_b: np.ndarray
) -> np.ndarray:
    inflation = rng.uniform(1.2, 2.0, size=km.shape)
    return np.asarray(km / 100.0 * inflation + access_a + access_b, dtype=float)


@dataclass
class World:
    dataset: Dataset
    access: np.ndarray
    rng: np.random.Generator

    def measure(self, lat: float, lon: float, access: float = 0.3) -> dict[str, float]:
        """Honest RTTs from a VM at (lat, lon) to every landmark."""
        ds = self.dataset
        km = distance_matrix_km([lat], [lon], ds.lats, ds.lons)[0]
        r = rtt_between(self.rng, km, self.access, np.full(len(km), access))
        return {s.id: float(v) for s, v in zip(ds.servers, r)}


def make_world(n: int = 36, seed: int = 7) -> World:
    rng = np.random.default_rng(seed)
    lat = rng.uniform(31.0, 49.0, n)
    lon = rng.uniform(1.0, 19.0, n)
    servers = [
        Server(id=f"L{i:02d}", name=f"lm{i}", lat=float(a), lon=float(o), country=code_of(a, o))
        for i, (a, o) in enumerate(zip(lat, lon))
    ]
    km = distance_matrix_km(lat, lon, lat, lon)
    access = rng.uniform(0.1, 1.5, n)
    r = rtt_between(rng, km, access[:, None], access[None, :])
    np.fill_diagonal(r, np.nan)
    ds = Dataset(
        name="synthetic", servers=servers, rtt_min=r, rtt_avg=r * 1.1, rtt_mdev=np.full_like(r, 0.1)
    )
    return World(ds, access, rng)


def write_generic(ds: Dataset, directory: Path) -> Path:
    """Write a world as the generic pair landmarks.csv + rtts.csv (both directions)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "landmarks.csv").open("w") as fh:
        fh.write("id,lat,lon,country\n")
        for s in ds.servers:
            fh.write(f"{s.id},{s.lat},{s.lon},{s.country or ''}\n")
    with (directory / "rtts.csv").open("w") as fh:
        fh.write("src,dst,rtt_ms\n")
        n = len(ds.servers)
        for i in range(n):
            for j in range(n):
                if i != j and np.isfinite(ds.rtt_min[i, j]):
                    fh.write(f"{ds.servers[i].id},{ds.servers[j].id},{ds.rtt_min[i, j]:.4f}\n")
    return directory
