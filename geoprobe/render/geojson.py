"""A Fix as a GeoJSON FeatureCollection (RFC 7946).

RFC 7946 asks for ``[lon, lat]`` positions (§3.1.1), polygons cut at the antimeridian rather than
crossing it (§3.1.9), and rings wound by the right-hand rule: exterior rings counter-clockwise,
holes clockwise (§3.1.6). Every polygon goes through :func:`rfc7946_polygons`, which does all three.

Every feature says what it is in ``properties.kind`` so a consumer can style or filter it, and
carries simplestyle properties (``fill``, ``stroke``, ``marker-color``) so that viewers such as
geojson.io show something sensible without configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix, Region
from geoprobe.geo.sphere import cap_polygon
from geoprobe.geo.topojson import wrap_lon
from geoprobe.landmarks import Landmark

REGION_COLOUR = "#e6550d"
SOUND_COLOUR = "#3182bd"
ESTIMATE_COLOUR = "#d62728"
LANDMARK_COLOUR = "#555555"


def rfc7946_polygons(geom: BaseGeometry) -> dict[str, Any]:
    """A (multi)polygon cut at the antimeridian, exteriors counter-clockwise and holes clockwise.

    shapely's own output follows GEOS, which winds exteriors clockwise; GIS tools that follow the
    RFC (d3-geo among them) read a clockwise exterior as the whole globe minus the region.
    """
    wrapped = wrap_lon(geom)
    return dict(mapping(shapely.orient_polygons(wrapped, exterior_cw=False)))


def _region_feature(
    region: Region, kind: str, colour: str, props: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": rfc7946_polygons(shape(region.to_geojson())),
        "properties": {
            "kind": kind,
            "area_km2": round(region.area_km2, 0),
            **props,
            "stroke": colour,
            "fill": colour,
            "fill-opacity": 0.25 if kind == "region" else 0.08,
        },
    }


def _point(lat: float, lon: float, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]},
        "properties": props,
    }


def error_circle(fix: Fix) -> dict[str, Any] | None:
    """The error radius around the estimate as a (multi)polygon geometry, or None without one."""
    if not fix.error_radius_km > 0:
        return None
    geom = cap_polygon(
        fix.lat, fix.lon, fix.error_radius_km, samples=128, margin=0.0, margin_km=0.0
    )
    return rfc7946_polygons(shapely.set_precision(geom, 1e-6))


def region_geojson(
    fix: Fix, landmarks: Sequence[Landmark] = (), rtts: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The region, the sound region, the estimate (with its error circle) and the landmarks."""
    rtts = rtts or {}
    verdict = {
        "bound": fix.bound,
        "certified": fix.certified,
        "countries": [
            {"code": c.code, "probability": round(c.probability, 4), "share": round(c.share, 4)}
            for c in fix.countries
        ],
    }
    features: list[dict[str, Any]] = []
    if fix.sound_region is not None and fix.sound_region is not fix.region:
        features.append(
            _region_feature(fix.sound_region, "sound_region", SOUND_COLOUR, {"bound": "sound"})
        )
    if fix.region is not None:
        features.append(_region_feature(fix.region, "region", REGION_COLOUR, verdict))
    circle = error_circle(fix)
    if circle is not None:
        features.append(
            {
                "type": "Feature",
                "geometry": circle,
                "properties": {
                    "kind": "error_circle",
                    "radius_km": round(fix.error_radius_km, 1),
                    "stroke": ESTIMATE_COLOUR,
                    "fill-opacity": 0.0,
                },
            }
        )
    features.append(
        _point(
            fix.lat,
            fix.lon,
            {
                "kind": "estimate",
                "error_radius_km": round(fix.error_radius_km, 1),
                "method": fix.method,
                "country": fix.country,
                "probability": round(fix.probability, 4),
                **verdict,
                "marker-color": ESTIMATE_COLOUR,
                "marker-symbol": "star",
            },
        )
    )
    used = set(fix.landmarks_used)
    for lm in landmarks:
        rtt = rtts.get(lm.id)
        props: dict[str, Any] = {
            "kind": "landmark",
            "id": lm.id,
            "country": lm.country,
            "rtt_ms": None if rtt is None else round(rtt, 3),
            "used": lm.id in used,
            "marker-color": LANDMARK_COLOUR,
            "marker-size": "small",
        }
        if lm.id in fix.excluded:
            props["excluded"] = fix.excluded[lm.id]
        features.append(_point(lm.lat, lm.lon, props))
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    fix: Fix,
    path: str | Path,
    landmarks: Sequence[Landmark] = (),
    rtts: Mapping[str, float] | None = None,
) -> Path:
    """Write :func:`region_geojson` to ``path`` (what ``geoprobe locate --geojson FILE`` does)."""
    out = Path(path)
    text = json.dumps(region_geojson(fix, landmarks, rtts), separators=(",", ":")) + "\n"
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write GeoJSON: {exc.strerror}", file=out) from None
    return out
