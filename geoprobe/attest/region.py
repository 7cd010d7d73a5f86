"""The sound region from landmark-timed RTTs, and its certificate against the country polygons.

Both the VM (when it attests) and the auditor (when it verifies) call this one function, so a
certificate verifies exactly when the landmark-signed RTTs support it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from geoprobe.geo.regions import CapIntersection, CountryLookup, sample_cap
from geoprobe.geo.sphere import EARTH_RADIUS_KM, SOUND_KM_PER_MS, to_xyz
from geoprobe.landmarks import Landmark

BASIS = "sound bound (100 km per ms) on landmark-timed RTTs"


@dataclass(frozen=True, slots=True)
class Certificate:
    country: str | None  # set only when the sound region lies wholly inside one country
    reason: str
    area_km2: float | None = None
    landmarks: tuple[str, ...] = ()


def certify(
    landmarks: Mapping[str, Landmark], rtts: Mapping[str, float], countries: CountryLookup
) -> Certificate:
    """Certify from ``rtts`` (landmark id -> landmark-timed minimum RTT, ms)."""
    use = tuple(
        sorted(
            (lid, landmarks[lid].lat, landmarks[lid].lon, float(r))
            for lid, r in rtts.items()
            if lid in landmarks and not landmarks[lid].anycast and math.isfinite(r) and r >= 0
        )
    )
    if not use:
        return Certificate(None, "no landmark-timed RTT to a catalogue landmark")
    return _certify(use, cast(Hashable, countries))


@functools.lru_cache(maxsize=4096)
def _certify(use: tuple[tuple[str, float, float, float], ...], lookup: Hashable) -> Certificate:
    """Deterministic in its inputs: an auditor re-checking a chain pays for each round once."""
    countries = cast(CountryLookup, lookup)
    ids = tuple(u[0] for u in use)
    lat = np.array([u[1] for u in use], dtype=float)
    lon = np.array([u[2] for u in use], dtype=float)
    radius = np.array([u[3] for u in use], dtype=float) * SOUND_KM_PER_MS
    i = int(np.argmin(radius))
    sample = sample_cap(float(lat[i]), float(lon[i]), float(radius[i]), points=3000)
    cos_r = np.cos(np.minimum(radius / EARTH_RADIUS_KM, math.pi))
    dots = sample.xyz @ to_xyz(lat, lon).T
    inside: npt.NDArray[np.bool_] = np.asarray((dots >= cos_r[None, :] - 1e-12).all(axis=1))
    region = CapIntersection(lat, lon, radius, sample, inside)
    if region.empty:
        return Certificate(None, "the landmark-timed bounds have no common point", 0.0, ids)
    area = round(region.area_km2, 0)
    country = countries.certify(region.polygon())
    if country is None:
        return Certificate(
            None, f"the sound region ({area:.0f} km2) is not inside one country", area, ids
        )
    return Certificate(
        country, f"the sound region ({area:.0f} km2) lies inside {country}", area, ids
    )
