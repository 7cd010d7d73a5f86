"""Feasible regions on the sphere: intersections of caps, and sampled (grid) regions.

Both satisfy ``geoprobe.geo.fix.Region`` (area, containment, GeoJSON). Areas come from a sample of
points with known area weights (a local azimuthal-equidistant grid), which is accurate to a few
per cent; containment of a cap intersection is exact; polygons are built only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from geoprobe.geo.sphere import (
    EARTH_RADIUS_KM,
    HALF_CIRCUMFERENCE_KM,
    cap_polygon,
    destination,
    to_xyz,
)

FArray = npt.NDArray[np.float64]
BArray = npt.NDArray[np.bool_]
IArray = npt.NDArray[np.intp]


class CountryLookup(Protocol):
    """What the engine needs from ``geoprobe.geo.countries.CountryIndex``."""

    def codes_at(self, lat: FArray, lon: FArray) -> npt.NDArray[np.str_]: ...

    def certify(self, region: BaseGeometry) -> str | None: ...

    def land_parts(self, region: BaseGeometry) -> Sequence[LandPartLike]: ...


class LandPartLike(Protocol):
    """One country's land inside a region (``geoprobe.geo.countries.LandPart``)."""

    @property
    def code(self) -> str: ...

    @property
    def area_km2(self) -> float: ...

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...

    @property
    def outline(self) -> BaseGeometry: ...


@dataclass(slots=True)
class Sample:
    """Points covering a cap, each standing for ``weight`` km2 of the sphere."""

    lat: FArray
    lon: FArray
    xyz: FArray
    weight: FArray
    spacing_km: float

    def subset(self, mask: BArray) -> Sample:
        return Sample(
            self.lat[mask], self.lon[mask], self.xyz[mask], self.weight[mask], self.spacing_km
        )

    def __len__(self) -> int:
        return len(self.lat)


def sample_cap(
    lat: float, lon: float, radius_km: float, *, points: int = 4000, min_spacing_km: float = 1.0
) -> Sample:
    """A regular grid in the cap's azimuthal-equidistant plane, mapped back to the sphere.

    The spacing adapts to the cap, so a 30 km cap and a 5000 km cap cost the same; each point's
    weight is its true area on the sphere (the projection stretches areas by (rho/R)/sin(rho/R)).
    """
    radius = min(max(radius_km, min_spacing_km), HALF_CIRCUMFERENCE_KM * 0.999)
    spacing = max(radius * math.sqrt(math.pi / points), min_spacing_km)
    k = math.ceil(radius / spacing)
    g = (np.arange(-k, k + 1) * spacing).astype(float)
    x, y = np.meshgrid(g, g)
    rho = np.hypot(x, y).ravel()
    keep = rho <= radius + 1e-9
    rho = rho[keep]
    bearing = np.degrees(np.arctan2(x.ravel()[keep], y.ravel()[keep]))
    plat, plon = destination(np.full(len(rho), lat), np.full(len(rho), lon), bearing, rho)
    ang = rho / EARTH_RADIUS_KM
    with np.errstate(invalid="ignore", divide="ignore"):
        stretch = np.where(ang > 1e-9, np.sin(ang) / np.maximum(ang, 1e-12), 1.0)
    w = spacing * spacing * stretch
    plat, plon = np.asarray(plat, float), np.asarray(plon, float)
    return Sample(plat, plon, to_xyz(plat, plon), np.asarray(w, float), spacing)


@dataclass(slots=True)
class CapIntersection:
    """The intersection of spherical caps (centres in degrees, radii in km)."""

    lat: FArray
    lon: FArray
    radius_km: FArray
    sample: Sample  # points of the smallest cap ...
    inside: BArray  # ... and which of them lie in every cap

    @property
    def area_km2(self) -> float:
        return float(self.sample.weight[self.inside].sum())

    @property
    def empty(self) -> bool:
        return not bool(self.inside.any())

    def contains(self, lat: float, lon: float) -> bool:
        p = to_xyz(lat, lon)
        cosd = to_xyz(self.lat, self.lon) @ p
        return bool(
            (cosd >= np.cos(np.minimum(self.radius_km / EARTH_RADIUS_KM, math.pi)) - 1e-12).all()
        )

    def polygon(self, max_caps: int | None = 8) -> BaseGeometry:
        """A lon/lat superset of the region: the intersection of the ``max_caps`` smallest caps.

        ``None``: every cap that cuts the smallest one (the others contain it whole).
        """
        order = self.cutting() if max_caps is None else np.argsort(self.radius_km)[:max_caps]
        geom: BaseGeometry | None = None
        for i in order:
            c = cap_polygon(float(self.lat[i]), float(self.lon[i]), float(self.radius_km[i]))
            geom = c if geom is None else geom.intersection(c)
            if geom.is_empty:
                break
        return geom if geom is not None else shapely.Polygon()

    def cutting(self) -> IArray:
        """The caps that cut the smallest one (the others contain it whole), smallest first."""
        order = np.argsort(self.radius_km)
        if not len(order):
            return order
        s = int(order[0])
        cent = to_xyz(self.lat, self.lon).reshape(-1, 3)
        dcent = np.arccos(np.clip(cent @ cent[s], -1.0, 1.0)) * EARTH_RADIUS_KM
        rest = order[(dcent[order] + self.radius_km[s]) > self.radius_km[order]]
        return np.concatenate([[s], rest[rest != s]]).astype(np.intp)

    def within(self, lat: FArray, lon: FArray, slack_km: float = 0.0) -> BArray:
        """Which points lie in every cap grown by ``slack_km`` (exact on the sphere)."""
        caps = self.cutting()
        xyz = to_xyz(lat, lon).reshape(-1, 3)
        cent = to_xyz(self.lat[caps], self.lon[caps]).reshape(-1, 3)
        limit = np.cos(np.minimum((self.radius_km[caps] + slack_km) / EARTH_RADIUS_KM, math.pi))
        out: BArray = np.asarray((xyz @ cent.T >= limit[None, :] - 1e-12).all(axis=1), dtype=bool)
        return out

    def to_geojson(self) -> dict[str, Any]:
        return dict(mapping(self.polygon()))


@dataclass(slots=True)
class SampledRegion:
    """A region given by sample points (e.g. the 95 % highest-posterior set)."""

    sample: Sample

    @property
    def area_km2(self) -> float:
        return float(self.sample.weight.sum())

    def contains(self, lat: float, lon: float) -> bool:
        if len(self.sample) == 0:
            return False
        p = to_xyz(lat, lon)
        chord = np.linalg.norm(self.sample.xyz - p, axis=1).min()
        return bool(chord * EARTH_RADIUS_KM <= self.sample.spacing_km * 0.75)

    def to_geojson(self) -> dict[str, Any]:
        s = self.sample
        if len(s) == 0:
            return {"type": "MultiPolygon", "coordinates": []}
        dlat = s.spacing_km / 111.2 / 2
        dlon = dlat / np.maximum(np.cos(np.radians(s.lat)), 0.05)
        boxes = shapely.box(s.lon - dlon, s.lat - dlat, s.lon + dlon, s.lat + dlat)
        return dict(mapping(shapely.union_all(boxes)))
