"""A minimal TopoJSON decoder: quantized, delta-encoded arcs -> shapely polygons.

Only what the packaged world-atlas files need (Polygon and MultiPolygon objects of one
GeometryCollection). Shared arcs make neighbouring countries' borders coincide exactly, which is
why the packaged data is TopoJSON rather than GeoJSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry.base import BaseGeometry

from geoprobe.errors import InputError


@dataclass(frozen=True, slots=True)
class TopoFeature:
    id: str | None
    properties: dict[str, Any]
    geometry: BaseGeometry  # valid (Multi)Polygon in lon/lat


def _decode_arcs(topology: dict[str, Any]) -> list[np.ndarray]:
    transform = topology.get("transform")
    arcs: list[np.ndarray] = []
    for raw in topology["arcs"]:
        a = np.asarray(raw, dtype=np.float64)[:, :2]
        if transform is not None:
            a = np.cumsum(a, axis=0)
            a = a * np.asarray(transform["scale"]) + np.asarray(transform["translate"])
        arcs.append(a)
    return arcs


def _ring(arcs: list[np.ndarray], indices: Sequence[int]) -> np.ndarray:
    parts: list[np.ndarray] = []
    for i in indices:
        a = arcs[i] if i >= 0 else arcs[~i][::-1]
        parts.append(a if not parts else a[1:])
    ring = np.concatenate(parts)
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def _unwrap(ring: np.ndarray) -> np.ndarray:
    """Make longitudes continuous (no edge spans more than 180°), closing polar rings via the
    pole."""
    dx = np.diff(ring[:, 0])
    if not (np.abs(dx) > 180.0).any():
        return ring
    dx = dx - 360.0 * np.round(dx / 360.0)
    x = ring[0, 0] + np.concatenate([[0.0], np.cumsum(dx)])
    out = np.column_stack([x, ring[:, 1]])
    if abs(x[-1] - x[0]) > 180.0:  # winds around a pole (Antarctica): close along the pole
        pole = -90.0 if ring[:, 1].mean() < 0 else 90.0
        out = np.vstack([out, np.array([[x[-1], pole], [x[0], pole]]), out[:1]])
    return out


def _polygon(arcs: list[np.ndarray], rings: Sequence[Sequence[int]]) -> BaseGeometry:
    """A planar polygon from spherical rings, cut at the antimeridian into [-180, 180].

    world-atlas is "stitched": rings cross the antimeridian as short edges from +179° to -179°
    instead of being cut there, which a planar library would read as an edge across the globe.
    """
    coords = [_unwrap(_ring(arcs, r)) for r in rings]
    coords = [c for c in coords if len(c) >= 4]
    if not coords:
        return shapely.Polygon()
    shell, holes = coords[0], coords[1:]
    lo, hi = shell[:, 0].min(), shell[:, 0].max()
    aligned = []
    for h in holes:  # a hole unwrapped on its own may sit one turn away from its shell
        shift = 360.0 * np.round(((lo + hi) / 2.0 - h[:, 0].mean()) / 360.0)
        aligned.append(h + np.array([shift, 0.0]))
    poly = shapely.Polygon(shell, aligned)
    if lo >= -180.0 and hi <= 180.0:
        return poly
    if not poly.is_valid:
        poly = polygonal(shapely.make_valid(poly))
    return polygonal(wrap_lon(poly))


def wrap_lon(geom: BaseGeometry) -> BaseGeometry:
    """Bring a lon/lat geometry into [-180, 180], cutting it at the antimeridian."""
    minx, _, maxx, _ = geom.bounds
    if minx >= -180.0 and maxx <= 180.0:
        return geom
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        piece = geom.intersection(shapely.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0))
        if not piece.is_empty:
            parts.append(shapely.affinity.translate(piece, xoff=shift))
    return shapely.union_all(parts) if parts else shapely.Polygon()


def polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The areal part of a geometry: make_valid may return collections with stray lines/points."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    return shapely.MultiPolygon(polys) if polys else shapely.Polygon()


def decode(
    topology: dict[str, Any], name: str, *, source: str = "<topojson>"
) -> Iterator[TopoFeature]:
    """Yield the features of object ``name`` as valid shapely geometries."""
    if topology.get("type") != "Topology" or name not in topology.get("objects", {}):
        raise InputError(f"not a TopoJSON topology with an object {name!r}", file=source)
    arcs = _decode_arcs(topology)
    for n, geom in enumerate(topology["objects"][name].get("geometries", [])):
        kind = geom.get("type")
        if kind == "Polygon":
            shape = _polygon(arcs, geom["arcs"])
        elif kind == "MultiPolygon":
            polys = [_polygon(arcs, p) for p in geom["arcs"]]
            shape = shapely.MultiPolygon(
                [q for p in polys for q in shapely.get_parts(p) if not q.is_empty]
            )
        elif kind is None:
            continue  # null geometry
        else:
            raise InputError(
                f"unsupported geometry type {kind!r}", file=source, entry=n, field="type"
            )
        if not shape.is_valid:
            shape = polygonal(shapely.make_valid(shape))
        raw_id = geom.get("id")
        yield TopoFeature(
            None if raw_id is None else str(raw_id), dict(geom.get("properties") or {}), shape
        )
