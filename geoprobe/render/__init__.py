"""Fixes for people and for GIS tools: a GeoJSON FeatureCollection and a PNG map.

``draw_map`` is imported lazily: matplotlib costs half a second to import, most runs of
``geoprobe locate`` never draw, and it is an optional extra (``pip install 'geoprobe-vm[map]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoprobe.errors import GeoprobeError
from geoprobe.render.geojson import region_geojson

if TYPE_CHECKING:
    from geoprobe.geo.fix import Fix

__all__ = ["draw_map", "region_geojson"]


def draw_map(fix: Fix, path: str | Path, **kwargs: Any) -> Path:
    """See :func:`geoprobe.render.mapplot.draw_map`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GeoprobeError(
            "drawing a map needs matplotlib: pip install 'geoprobe-vm[map]' (or use --geojson)"
        ) from None
    from geoprobe.render.mapplot import draw_map as _draw

    return _draw(fix, path, **kwargs)
