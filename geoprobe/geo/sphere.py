"""Sphere maths, vectorised with numpy: distances, destinations, and spherical caps as polygons.

Everything works on a sphere of radius ``EARTH_RADIUS_KM``; the error against the ellipsoid
(< 0.5 %) is far below what RTTs can resolve. Cap polygons are deliberately a little too large,
because certification must be sound: a polygon that misses part of a cap could certify a country
the VM is not in.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

EARTH_RADIUS_KM = 6371.0088
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM
#: Light in fibre covers ~200 km per ms one way, so 1 ms of round trip bounds the distance to 100
#: km.
SOUND_KM_PER_MS = 100.0

Array = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> Any:
    """Great-circle distance in km; broadcasts like numpy (scalars in, float out)."""
    p1, l1, p2, l2 = (np.radians(np.asarray(v, dtype=float)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    d = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if d.ndim == 0 else d


def to_xyz(lat: ArrayLike, lon: ArrayLike) -> Array:
    """Unit vectors (..., 3): chord distances between them order like great-circle distances."""
    p, l_ = np.radians(np.asarray(lat, dtype=float)), np.radians(np.asarray(lon, dtype=float))
    return np.stack([np.cos(p) * np.cos(l_), np.cos(p) * np.sin(l_), np.sin(p)], axis=-1)


def from_xyz(xyz: ArrayLike) -> tuple[Array, Array]:
    v = np.asarray(xyz, dtype=float)
    lat = np.degrees(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    lon = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    return lat, lon


def chord_for_km(km: ArrayLike) -> Any:
    """Chord length on the unit sphere for a great-circle distance (for KD-tree ball queries)."""
    ang = np.clip(np.asarray(km, dtype=float) / EARTH_RADIUS_KM, 0.0, math.pi)
    return 2.0 * np.sin(ang / 2.0)


def distance_matrix_km(
    lat_a: ArrayLike, lon_a: ArrayLike, lat_b: ArrayLike, lon_b: ArrayLike
) -> Array:
    """All pairwise distances (len(a) x len(b)) via unit-vector dot products (fast, accurate > 1
    m)."""
    a = to_xyz(lat_a, lon_a).reshape(-1, 3)
    b = to_xyz(lat_b, lon_b).reshape(-1, 3)
    dot = np.clip(a @ b.T, -1.0, 1.0)
    return np.asarray(np.arccos(dot) * EARTH_RADIUS_KM, dtype=float)


def destination(
    lat: ArrayLike, lon: ArrayLike, bearing_deg: ArrayLike, distance_km: ArrayLike
) -> tuple[Any, Any]:
    """The point reached from (lat, lon) going ``distance_km`` along initial bearing; lon in [-180,
    180)."""
    p1 = np.radians(np.asarray(lat, dtype=float))
    l1 = np.radians(np.asarray(lon, dtype=float))
    th = np.radians(np.asarray(bearing_deg, dtype=float))
    dl = np.asarray(distance_km, dtype=float) / EARTH_RADIUS_KM
    sp2 = np.sin(p1) * np.cos(dl) + np.cos(p1) * np.sin(dl) * np.cos(th)
    p2 = np.arcsin(np.clip(sp2, -1.0, 1.0))
    l2 = l1 + np.arctan2(np.sin(th) * np.sin(dl) * np.cos(p1), np.cos(dl) - np.sin(p1) * sp2)
    lat2 = np.degrees(p2)
    lon2 = (np.degrees(l2) + 180.0) % 360.0 - 180.0
    if np.ndim(lat2) == 0:
        return float(lat2), float(lon2)
    return lat2, lon2


def cap_area_km2(radius_km: float) -> float:
    """Area of a spherical cap of geodesic radius ``radius_km``."""
    ang = min(max(radius_km, 0.0) / EARTH_RADIUS_KM, math.pi)
    return 2.0 * math.pi * EARTH_RADIUS_KM**2 * (1.0 - math.cos(ang))


def cap_polygon(
    lat: float,
    lon: float,
    radius_km: float,
    *,
    samples: int = 256,
    margin: float = 0.01,
    margin_km: float = 2.0,
) -> BaseGeometry:
    """A lon/lat (multi)polygon that contains the spherical cap; split at the antimeridian.

    The radius is enlarged by ``margin`` (relative) plus ``margin_km`` so that straight lon/lat
    edges between boundary samples stay outside the true circle. A cap that reaches a pole becomes a
    latitude band up to that pole, which is a (conservative) superset.
    """
    r = radius_km * (1.0 + margin) + margin_km
    if r >= HALF_CIRCUMFERENCE_KM * 0.999:
        return box(-180.0, -90.0, 180.0, 90.0)
    ang_deg = math.degrees(r / EARTH_RADIUS_KM)
    north, south = lat + ang_deg >= 90.0 - 1e-9, lat - ang_deg <= -90.0 + 1e-9
    if north and south:
        return box(-180.0, -90.0, 180.0, 90.0)
    if north or south:
        return _polar_cap(lat, lon, r, samples, 90.0 if north else -90.0)
    bearings = np.linspace(0.0, 360.0, samples, endpoint=False)
    blat, blon = destination(
        np.full(samples, lat), np.full(samples, lon), bearings, np.full(samples, r)
    )
    # Unwrap longitudes so the ring is continuous around the centre, then cut at +-180.
    rel = (np.asarray(blon) - lon + 180.0) % 360.0 - 180.0
    ring = Polygon(np.column_stack([lon + rel, blat]))
    if not ring.is_valid:
        ring = ring.buffer(0)
    pieces: list[Polygon] = []
    for shift in (-360.0, 0.0, 360.0):
        window = box(-180.0 + shift, -90.0, 180.0 + shift, 90.0)
        part = ring.intersection(window)
        if part.is_empty:
            continue
        from shapely.affinity import translate

        part = translate(part, xoff=-shift)
        pieces.extend(_polygons(part))
    if len(pieces) == 1:
        return pieces[0]
    return MultiPolygon(pieces)


def _polar_cap(lat: float, lon: float, r: float, samples: int, pole: float) -> BaseGeometry:
    """A cap holding a pole: its edge, as a function of longitude, closed along the pole.

    The edge circles the pole once, so sorted by longitude it is a curve from -180 to 180; the
    straight lon/lat edges between samples stay outside the circle thanks to the enlarged radius.
    """
    bearings = np.linspace(0.0, 360.0, samples * 2, endpoint=False)
    blat, blon = destination(
        np.full(len(bearings), lat),
        np.full(len(bearings), lon),
        bearings,
        np.full(len(bearings), r),
    )
    order = np.argsort(blon)
    x, y = np.asarray(blon)[order], np.asarray(blat)[order]
    # The edge's latitude where it crosses the antimeridian, between the last and first samples.
    span = x[0] + 360.0 - x[-1]
    t = (180.0 - x[-1]) / span if span > 0 else 0.0
    y180 = float(y[-1] + t * (y[0] - y[-1]))
    xs = np.concatenate([[-180.0], x, [180.0, 180.0, -180.0]])
    ys = np.concatenate([[y180], y, [y180, pole, pole]])
    poly = Polygon(np.column_stack([xs, ys]))
    return poly if poly.is_valid else poly.buffer(0)


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    out: list[Polygon] = []
    for g in getattr(geom, "geoms", []):
        out.extend(_polygons(g))
    return out
