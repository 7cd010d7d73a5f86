"""A Fix drawn over country borders: region, sound region, estimate, error circle, landmarks.

Matplotlib's object API with the Agg canvas, never pyplot: no global backend state, no display
needed, safe in a daemon. The view is an equirectangular map zoomed to the region, centred on the
estimate's longitude so that regions across the antimeridian stay in one piece.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path as MplPath
from matplotlib.ticker import FuncFormatter
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geoprobe.errors import InputError
from geoprobe.geo.countries import CountryIndex, default_index
from geoprobe.geo.fix import Fix, Region
from geoprobe.landmarks import Landmark
from geoprobe.render.geojson import ESTIMATE_COLOUR, REGION_COLOUR, SOUND_COLOUR, error_circle

SEA = "#dbe9f6"
LAND = "#f2efe9"
CERTIFIED_LAND = "#dcefd8"
BORDER = "#8c8c8c"
MIN_SPAN_DEG = 3.0  # never zoom in further: a tiny region still needs borders around it
CONTEXT = 3.0  # show the sound region too when it is at most this many times the region's size


def _recentre(geom: BaseGeometry, centre: float) -> BaseGeometry:
    """Shift each part by 360° so that it lies nearest the central longitude."""
    parts = []
    for p in shapely.get_parts(geom):
        if p.is_empty:
            continue
        x = p.centroid.x
        parts.append(shapely.affinity.translate(p, xoff=360.0 * round((centre - x) / 360.0)))
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _path(geom: BaseGeometry) -> MplPath | None:
    """A compound matplotlib path for the polygons of ``geom`` (holes included)."""
    paths = []
    for poly in shapely.get_parts(geom):
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        for ring in [poly.exterior, *poly.interiors]:
            xy = np.asarray(ring.coords)
            codes = np.full(len(xy), MplPath.LINETO, dtype=np.uint8)
            codes[0], codes[-1] = MplPath.MOVETO, MplPath.CLOSEPOLY
            paths.append(MplPath(xy, codes))
    return MplPath.make_compound_path(*paths) if paths else None


def _span(geom: BaseGeometry) -> float:
    minx, miny, maxx, maxy = geom.bounds
    return float(max(maxx - minx, maxy - miny))


def _region_geom(region: Region | None, centre: float) -> BaseGeometry | None:
    if region is None:
        return None
    geom = shape(region.to_geojson())
    if geom.is_empty:
        return None
    geom = _recentre(geom, centre)
    # Regions made of sample cells leave hairline gaps between cells; close them for the eye.
    eps = 0.01 * _span(geom)
    return geom.buffer(eps, quad_segs=2).buffer(-eps, quad_segs=2)


def _view(
    fix: Fix, shapes: Sequence[BaseGeometry], aspect: float
) -> tuple[float, float, float, float]:
    """Bounds around the shapes (plus padding), at least MIN_SPAN_DEG, matching the figure's
    aspect."""
    if shapes:
        minx, miny, maxx, maxy = shapely.union_all(list(shapes)).bounds
    else:
        minx, miny, maxx, maxy = fix.lon - 10, fix.lat - 7, fix.lon + 10, fix.lat + 7
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    coslat = max(math.cos(math.radians(cy)), 0.1)
    w = max((maxx - minx) * coslat, MIN_SPAN_DEG) * 1.3  # in "ground" degrees
    h = max(maxy - miny, MIN_SPAN_DEG) * 1.3
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    h = min(h, 170.0)
    half_w = min(w / coslat / 2, 180.0)
    y0 = min(max(cy - h / 2, -90.0), 90.0 - h)
    return cx - half_w, y0, cx + half_w, y0 + h


def _draw_countries(
    ax: Any, countries: CountryIndex, view: tuple[float, float, float, float], highlight: str | None
) -> None:
    x0, y0, x1, y1 = view
    pad = 0.05 * (x1 - x0)
    patches, colours, labels = [], [], []
    for code in countries.codes:
        geom = countries.polygon(code)
        for shift in (-360.0, 0.0, 360.0):
            gx0, gy0, gx1, gy1 = geom.bounds
            if gx1 + shift < x0 - pad or gx0 + shift > x1 + pad or gy1 < y0 - pad or gy0 > y1 + pad:
                continue
            part = shapely.clip_by_rect(
                shapely.affinity.translate(geom, xoff=shift), x0 - pad, y0 - pad, x1 + pad, y1 + pad
            )
            path = _path(part)
            if path is None:
                continue
            patches.append(PathPatch(path))
            colours.append(CERTIFIED_LAND if code == highlight else LAND)
            visible = shapely.clip_by_rect(part, x0, y0, x1, y1)
            if visible.area > 0.004 * (x1 - x0) * (y1 - y0):
                p = visible.representative_point()
                labels.append((p.x, p.y, code))
    ax.add_collection(
        PatchCollection(patches, facecolors=colours, edgecolors=BORDER, linewidths=0.6, zorder=1)
    )
    for x, y, code in labels:
        ax.text(x, y, code, fontsize=8, color="#6b6b6b", ha="center", va="center", zorder=2)


def _verdict(fix: Fix, countries: CountryIndex) -> str:
    if fix.certified:
        return f"certified: {fix.certified} ({countries.name(fix.certified)})"
    top = ", ".join(f"{c.code} {c.probability:.2f}" for c in fix.countries[:4]) or "no country"
    return f"not certified; {top}"


def draw_map(
    fix: Fix,
    path: str | Path,
    landmarks: Sequence[Landmark] = (),
    rtts: Mapping[str, float] | None = None,
    countries: CountryIndex | None = None,
    *,
    size_in: tuple[float, float] = (10.0, 7.5),
    dpi: int = 120,
    title: str | None = None,
) -> Path:
    """Write a PNG map of ``fix`` to ``path`` and return the path."""
    countries = countries or default_index()
    rtts = rtts or {}
    centre = fix.lon
    region = _region_geom(fix.region, centre)
    # With a sound bound the region *is* the sound region (perhaps sampled differently): draw it
    # once.
    separate = fix.sound_region is not fix.region and fix.bound != "sound"
    sound = _region_geom(fix.sound_region, centre) if separate else None
    circle_json = error_circle(fix)
    circle = _recentre(shape(circle_json), centre) if circle_json else None

    fig = Figure(figsize=size_in, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.08, 0.78, 0.80))
    cax = fig.add_axes((0.89, 0.15, 0.02, 0.66))
    mid_lat = fix.lat
    aspect_ratio = 1.0 / max(math.cos(math.radians(mid_lat)), 0.1)
    box_aspect = (0.78 * size_in[0]) / (0.80 * size_in[1])
    focus = [g for g in (region, circle) if g is not None]
    if sound is not None and (
        not focus or _span(sound) <= CONTEXT * _span(shapely.union_all(focus))
    ):
        focus.append(sound)
    view = _view(fix, focus, box_aspect)
    x0, y0, x1, y1 = view
    ax.set_facecolor(SEA)
    _draw_countries(ax, countries, view, fix.certified)

    handles: list[Any] = []
    if sound is not None:
        p = _path(sound)
        if p is not None:
            ax.add_patch(
                PathPatch(
                    p,
                    facecolor=to_rgba(SOUND_COLOUR, 0.10),
                    edgecolor=SOUND_COLOUR,
                    linestyle="--",
                    linewidth=1.2,
                    zorder=3,
                )
            )
            handles.append(
                Patch(
                    facecolor=SOUND_COLOUR,
                    alpha=0.3,
                    edgecolor=SOUND_COLOUR,
                    linestyle="--",
                    label="sound region (speed of light)",
                )
            )
    if region is not None:
        p = _path(region)
        if p is not None:
            ax.add_patch(
                PathPatch(
                    p,
                    facecolor=to_rgba(REGION_COLOUR, 0.30),
                    edgecolor=REGION_COLOUR,
                    linewidth=1.5,
                    zorder=4,
                )
            )
            handles.append(
                Patch(
                    facecolor=REGION_COLOUR,
                    alpha=0.5,
                    edgecolor=REGION_COLOUR,
                    label=f"region ({fix.bound} bound)",
                )
            )
    if circle is not None:
        p = _path(circle)
        if p is not None:
            ax.add_patch(
                PathPatch(
                    p,
                    facecolor="none",
                    edgecolor=ESTIMATE_COLOUR,
                    linestyle=":",
                    linewidth=1.5,
                    zorder=5,
                )
            )
    ax.plot(
        [fix.lon],
        [fix.lat],
        marker="*",
        markersize=16,
        color=ESTIMATE_COLOUR,
        markeredgecolor="white",
        zorder=7,
    )
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            markersize=12,
            color=ESTIMATE_COLOUR,
            linestyle=":",
            label=f"estimate ± {fix.error_radius_km:.0f} km",
        )
    )

    outside = _draw_landmarks(ax, cax, landmarks, rtts, centre, view)
    if landmarks:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                color="#444444",
                linestyle="none",
                markersize=7,
                label=f"landmarks ({outside} of {len(landmarks)} outside the view)",
            )
        )

    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect(aspect_ratio)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{(v + 180.0) % 360.0 - 180.0:g}"))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(color="white", linewidth=0.5, alpha=0.6, zorder=0)
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9).set_zorder(10)
    head = title or (
        f"geoprobe: {fix.lat:.3f}, {fix.lon:.3f} ± {fix.error_radius_km:.0f} km ({fix.bound} bound)"
    )
    fig.suptitle(head, fontsize=13, y=0.975)
    ax.set_title(_verdict(fix, countries), fontsize=10)
    fig.text(
        0.99,
        0.01,
        f"borders: {countries.source or 'Natural Earth'}",
        fontsize=7,
        color="#777777",
        ha="right",
        va="bottom",
    )
    out = Path(path)
    try:
        fig.savefig(out, format="png")
    except OSError as exc:
        raise InputError(f"cannot write map: {exc.strerror}", file=out) from None
    return out


def _draw_landmarks(
    ax: Any,
    cax: Any,
    landmarks: Sequence[Landmark],
    rtts: Mapping[str, float],
    centre: float,
    view: tuple[float, float, float, float],
) -> int:
    """Landmarks coloured by RTT (grey without one); returns how many fall outside the view."""
    x0, y0, x1, y1 = view
    if not landmarks:
        cax.set_visible(False)
        return 0
    lon = np.array([lm.lon + 360.0 * round((centre - lm.lon) / 360.0) for lm in landmarks])
    lat = np.array([lm.lat for lm in landmarks])
    rtt = np.array([rtts.get(lm.id, np.nan) for lm in landmarks], dtype=float)
    inside = (lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)
    has = np.isfinite(rtt)
    if has.any():
        lo = max(float(np.nanmin(rtt)), 0.1)  # log scale: 1 ms and 100 ms both stay readable
        norm = LogNorm(vmin=lo, vmax=max(float(np.nanmax(rtt)), lo * 2.0))
        sc = ax.scatter(
            lon[has],
            lat[has],
            c=rtt[has],
            cmap=colormaps["viridis"],
            norm=norm,
            s=46,
            edgecolors="black",
            linewidths=0.6,
            zorder=6,
        )
        bar = ax.figure.colorbar(sc, cax=cax, label="RTT (ms)")
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else "")
        )
    else:
        cax.set_visible(False)
    if (~has).any():
        ax.scatter(lon[~has], lat[~has], c="#bbbbbb", s=30, marker="x", zorder=6)
    if inside.sum() <= 25:
        for lm, x, y, r, show in zip(landmarks, lon, lat, rtt, inside):
            if show:
                label = lm.id if not np.isfinite(r) else f"{lm.id} {r:.1f} ms"
                ax.annotate(
                    label,
                    (x, y),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color="#333333",
                    zorder=8,
                    clip_on=True,
                )
    return int((~inside).sum())
