"""Fixes for people and for GIS tools: a GeoJSON FeatureCollection and a PNG map.

``draw_map`` is imported lazily: matplotlib costs half a second to import, and most runs of
``geoprobe locate`` never draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoprobe.render.geojson import region_geojson

if TYPE_CHECKING:
    from geoprobe.geo.fix import Fix

__all__ = ["draw_map", "region_geojson"]


def draw_map(fix: Fix, path: str | Path, **kwargs: Any) -> Path:
    """See :func:`geoprobe.render.mapplot.draw_map`."""
    from geoprobe.render.mapplot import draw_map as _draw

    return _draw(fix, path, **kwargs)
