"""A small synthetic world for the watch tests: landmarks on a grid over Europe, RTTs from distance.

RTT = 1.5 x the sound bound + 0.4 ms + exponential jitter, so every RTT respects physics (the sound
bound never excludes the truth) and moves change RTTs the way real ones do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from shapely.geometry import mapping

from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.geo.sphere import cap_polygon, haversine_km

LANDMARKS = [
    (f"lm{i:02d}", float(lat), float(lon))
    for i, (lat, lon) in enumerate((la, lo) for la in range(38, 62, 4) for lo in range(-8, 30, 4))
]


def rtts_at(
    lat: float, lon: float, rng: np.random.Generator, *, jitter: float = 0.1, added: float = 0.0
) -> dict[str, float]:
    out = {}
    for lid, llat, llon in LANDMARKS:
        d = float(haversine_km(lat, lon, llat, llon))
        out[lid] = 1.5 * d / 100.0 + 0.4 + float(rng.exponential(jitter)) + added
    return out


class CapRegion:
    """A spherical cap as a Region (real polygon from the sphere module)."""

    def __init__(self, lat: float, lon: float, radius_km: float) -> None:
        self.lat, self.lon, self.radius_km = lat, lon, radius_km
        self.geometry = cap_polygon(lat, lon, radius_km)

    @property
    def area_km2(self) -> float:
        return float(np.pi * self.radius_km**2)

    def contains(self, lat: float, lon: float) -> bool:
        return bool(haversine_km(lat, lon, self.lat, self.lon) <= self.radius_km)

    def to_geojson(self) -> dict[str, Any]:
        return dict(mapping(self.geometry))


def make_fix(
    lat: float,
    lon: float,
    radius_km: float = 150.0,
    countries: list[tuple[str, float]] | None = None,
    certified: str | None = None,
    bound: str = "calibrated",
) -> Fix:
    region = CapRegion(lat, lon, radius_km)
    shares = [CountryShare(c, p, p) for c, p in (countries or [])]
    return Fix(
        lat=lat,
        lon=lon,
        error_radius_km=radius_km / 2,
        bound=bound,  # type: ignore[arg-type]
        countries=shares,
        certified=certified,
        region=region,
        sound_region=region,
        landmarks_used=[lid for lid, _, _ in LANDMARKS],
    )
