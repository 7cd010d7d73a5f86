"""Country polygons: which country a point is in, and which single country a region is certainly in.

The packaged polygons are Natural Earth admin-0 at 1:50m (via the ``world-atlas@2.0.2`` TopoJSON,
whose shared arcs make neighbours' borders coincide exactly), plus the few small territories that
1:50m drops (taken from the same package's 1:10m file, see ``data/countries/NOTICE``). Set
``GEOPROBE_COUNTRIES=/path/ne_admin0.geojson`` to use any Natural Earth admin-0 GeoJSON instead,
for instance the finer 1:10m one.

Point lookups go through a raster of ~0.1° cells that are either wholly inside one country (or
the sea) or touch a border; only points in border cells are tested against the polygons. The
raster and the decoded polygons are cached on disk, keyed by the hash of the data.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import threading
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
import shapely.affinity
from shapely.geometry.base import BaseGeometry

from geoprobe.errors import InputError
from geoprobe.geo import topojson
from geoprobe.geo.topojson import decode, polygonal, wrap_lon

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "countries"
TOPOJSON = DATA_DIR / "countries-50m.json"
SUPPLEMENT = DATA_DIR / "supplement.geojson"
ISO_TABLE = DATA_DIR / "iso3166.csv"
UNASSIGNED_TABLE = DATA_DIR / "unassigned.csv"
SPLITS_TABLE = DATA_DIR / "splits.csv"
ENV = "GEOPROBE_COUNTRIES"

MARGIN_KM = 15.0  # 1:50m borders are generalised by a few km; certify keeps this far from others
CELL_DEG = 0.1
KM_PER_DEG = 111.32
_CACHE_VERSION = "3"
_SEA = 0
_BORDER = np.iinfo(np.uint16).max

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CodeTables:
    """ISO 3166-1 numeric -> alpha-2, names, and the codes we give areas ISO leaves out."""

    alpha2_by_numeric: Mapping[str, str]
    names: Mapping[str, str]  # alpha-2 (or assigned X-code) -> display name
    by_source_name: Mapping[str, str]  # feature name in NE / world-atlas -> code


def load_code_tables() -> CodeTables:
    alpha2: dict[str, str] = {}
    names: dict[str, str] = {}
    with ISO_TABLE.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            alpha2[row["numeric"]] = row["alpha2"]
            names[row["alpha2"]] = row["name"]
    by_name: dict[str, str] = {}
    with UNASSIGNED_TABLE.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            by_name[row["source_name"]] = row["code"]
            names.setdefault(row["code"], row["name"])
    return CodeTables(alpha2, names, by_name)


# ---------------------------------------------------------------------------------------------
# Loading: source files -> {code: geometry}


def _add(acc: dict[str, list[BaseGeometry]], code: str, geom: BaseGeometry) -> None:
    if not geom.is_empty:
        acc.setdefault(code, []).append(geom)


def _load_packaged(tables: CodeTables) -> tuple[dict[str, list[BaseGeometry]], set[str]]:
    topo = json.loads(TOPOJSON.read_text(encoding="utf-8"))
    acc: dict[str, list[BaseGeometry]] = {}
    names: set[str] = set()
    for n, f in enumerate(decode(topo, "countries", source=str(TOPOJSON))):
        name = str(f.properties.get("name", ""))
        names.add(name)
        code: str | None = tables.by_source_name.get(name)
        if code is None and f.id is not None:
            code = tables.alpha2_by_numeric.get(f.id)
        if code is None:
            raise InputError(
                f"no ISO code for {name!r} (id {f.id})", file=TOPOJSON, entry=n, field="id"
            )
        _add(acc, code, f.geometry)
    return acc, names


def _ne_code(props: Mapping[str, Any], name: str, tables: CodeTables) -> str | None:
    """Our table by NAME, else ISO_A2_EH, else ISO_A2 (NE writes -99 where it has none), else
    ADM0_A3.

    The table comes first so that both sources code the same areas the same way.
    """
    if name in tables.by_source_name:
        return tables.by_source_name[name]
    for key in ("ISO_A2_EH", "ISO_A2"):
        value = props.get(key)
        if isinstance(value, str) and len(value) == 2 and value.isalpha():
            return value.upper()
    adm = props.get("ADM0_A3")
    if isinstance(adm, str) and len(adm) == 3 and adm.isalpha():
        return adm.upper()  # distinct from every ISO alpha-2, so never certified as another country
    return None


def _load_geojson(path: Path, tables: CodeTables) -> tuple[dict[str, list[BaseGeometry]], set[str]]:
    """Any Natural Earth admin-0 GeoJSON: ISO_A2_EH, else ISO_A2, else our table, else ADM0_A3."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        features = data["features"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read country polygons: {exc}", file=path) from None
    acc: dict[str, list[BaseGeometry]] = {}
    names: set[str] = set()
    for n, feat in enumerate(features):
        props = {k.upper(): v for k, v in (feat.get("properties") or {}).items()}
        name = str(props.get("NAME") or props.get("ADMIN") or "")
        names.add(name)
        if feat.get("geometry") is None:
            continue
        try:
            geom = shapely.from_geojson(json.dumps(feat["geometry"]))
        except (shapely.errors.GEOSException, ValueError) as exc:
            raise InputError(
                f"bad geometry: {exc}", file=path, entry=name or n, field="geometry"
            ) from None
        if not geom.is_valid:
            geom = polygonal(shapely.make_valid(geom))
        code = _ne_code(props, name, tables)
        if code is None:
            raise InputError(
                "feature has no usable ISO_A2_EH, ISO_A2 or ADM0_A3",
                file=path,
                entry=name or n,
                field="ISO_A2_EH",
            )
        _add(acc, code, geom)
    if not acc:
        raise InputError("no country polygons found", file=path, field="features")
    return acc, names


def _apply_supplement(
    acc: dict[str, list[BaseGeometry]], have_names: set[str], tables: CodeTables
) -> None:
    """Add the small territories the source lacks, cutting them out of whatever covered them."""
    data = json.loads(SUPPLEMENT.read_text(encoding="utf-8"))
    merged = {code: _merge(parts) for code, parts in acc.items()}
    for feat in data["features"]:
        name = feat["properties"]["name"]
        if name in have_names:
            continue
        code = tables.by_source_name.get(name) or tables.alpha2_by_numeric.get(str(feat.get("id")))
        if code is None:
            continue
        geom = shapely.from_geojson(json.dumps(feat["geometry"]))
        for other, g in merged.items():
            if other != code and g.intersects(geom):
                merged[other] = polygonal(g.difference(geom))
        merged[code] = _merge([merged[code], geom]) if code in merged else geom
    acc.clear()
    for code, g in merged.items():
        _add(acc, code, g)


def _apply_splits(geoms: dict[str, BaseGeometry]) -> None:
    """Give ISO's own codes to the parts NE draws inside another country (Réunion in France, ...).

    Jurisdiction groups need them apart: French Guiana is in the EU but not in Schengen, Svalbard
    is Norwegian but outside the EEA. A part moves when its representative point is in the box.
    """
    with SPLITS_TABLE.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        src = geoms.get(row["from"])
        if src is None:
            continue
        box = shapely.box(*(float(row[k]) for k in ("min_lon", "min_lat", "max_lon", "max_lat")))
        parts = list(shapely.get_parts(src))
        moving = [p for p in parts if box.contains(p.representative_point())]
        if not moving:
            continue
        staying = [p for p in parts if not box.contains(p.representative_point())]
        if staying:
            geoms[row["from"]] = shapely.MultiPolygon(staying)
        else:
            del geoms[row["from"]]
        target = [geoms[row["to"]]] if row["to"] in geoms else []
        geoms[row["to"]] = _merge(target + [shapely.MultiPolygon(moving)])


def _merge(parts: list[BaseGeometry]) -> BaseGeometry:
    if len(parts) == 1:
        return parts[0]
    return polygonal(shapely.union_all(parts))


@dataclass(frozen=True, slots=True)
class LandPart:
    """One country's land inside a region: its area, a point of it, and its coastline or border
    inside the region (lines)."""

    code: str
    area_km2: float
    lat: float
    lon: float
    outline: BaseGeometry


def equal_area_km2(geom: Any) -> Any:
    """Area in km2 of lon/lat geometries (sinusoidal projection, which is equal-area)."""

    def sinusoidal(xy: FloatArray) -> FloatArray:
        return np.column_stack([xy[:, 0] * np.cos(np.radians(xy[:, 1])), xy[:, 1]]) * KM_PER_DEG

    # Long lon/lat edges (a meridian up to a pole) are curves in the projection: densify first.
    area = shapely.area(shapely.transform(shapely.segmentize(geom, 0.5), sinusoidal))
    return float(area) if np.ndim(area) == 0 else np.asarray(area, dtype=float)


# ---------------------------------------------------------------------------------------------
# The raster


@dataclass(frozen=True, slots=True)
class Raster:
    """Cells of ``cell_deg``: a polygon index + 1, 0 for sea, or _BORDER with a candidate list.

    The candidates of ``border_cells[i]`` (sorted flat cell ids) are ``cand[ptr[i]:ptr[i + 1]]``:
    every polygon that can hold a point of that cell, usually one or two.
    """

    grid: npt.NDArray[np.uint16]
    cell_deg: float
    border_cells: npt.NDArray[np.int64]
    ptr: npt.NDArray[np.int64]
    cand: npt.NDArray[np.uint16]


def _dilate_ids(
    cells: npt.NDArray[np.int64], shape: tuple[int, int], r: int
) -> npt.NDArray[np.int64]:
    ny, nx = shape
    cy, cx = np.divmod(cells, nx)
    out = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            y, x = cy + dy, cx + dx
            ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
            out.append(y[ok] * nx + x[ok])
    return np.unique(np.concatenate(out))


def _build_raster(geoms: list[BaseGeometry], cell: float) -> Raster:
    """Classify every cell with one point test per connected border-free area.

    A cell is free of borders iff no boundary segment passes through it. Boundaries are densified
    to half a cell, so any cell a segment crosses is within one cell of a sample: marking sample
    cells and dilating by one finds every border cell. Connected border-free cells lie in one
    face, so one point test per connected component classifies them all. A polygon can hold a
    point of a border cell only if its own boundary passes within the cell's 3x3 block (else the
    block is wholly in or out of it), hence within two cells of one of its samples.
    """
    from scipy import ndimage  # only needed to build, and slow to import: keep it off start-up

    ny, nx = round(180 / cell), round(360 / cell)
    border = np.zeros(ny * nx, dtype=bool)
    pair_cells, pair_geoms = [], []
    for k, g in enumerate(geoms):
        xy = shapely.get_coordinates(shapely.segmentize(g.boundary, cell / 2))
        ix = np.clip(np.floor((xy[:, 0] + 180.0) / cell).astype(np.int64), 0, nx - 1)
        iy = np.clip(np.floor((xy[:, 1] + 90.0) / cell).astype(np.int64), 0, ny - 1)
        cells = np.unique(iy * nx + ix)
        border[cells] = True
        near = _dilate_ids(cells, (ny, nx), 2)
        pair_cells.append(near)
        pair_geoms.append(np.full(len(near), k, dtype=np.uint16))
    border2d = ndimage.binary_dilation(
        border.reshape(ny, nx), structure=np.ones((3, 3), dtype=bool)
    )
    labels, count = ndimage.label(~border2d)
    # One cell of each component is enough for its point test, so any member will do: no sort.
    member = np.zeros(count + 1, dtype=np.int64)
    member[labels.ravel()] = np.arange(labels.size)
    comp = np.arange(1, count + 1)
    cy, cx = np.divmod(member[1:], nx)
    pts = shapely.points((cx + 0.5) * cell - 180.0, (cy + 0.5) * cell - 90.0)
    pi, gi = shapely.STRtree(geoms).query(pts, predicate="within")
    lut = np.zeros(count + 1, dtype=np.uint16)
    lut[comp[pi]] = (gi + 1).astype(np.uint16)
    grid: npt.NDArray[np.uint16] = lut[labels]
    grid[border2d] = _BORDER

    pc, pg = np.concatenate(pair_cells), np.concatenate(pair_geoms)
    on_border = border2d.ravel()[pc]
    pc, pg = pc[on_border], pg[on_border]
    order = np.lexsort((pg, pc))
    pc, pg = pc[order], pg[order]
    border_cells = np.flatnonzero(border2d.ravel()).astype(np.int64)
    ptr = np.searchsorted(pc, border_cells, side="left")
    ptr = np.append(ptr, len(pc)).astype(np.int64)
    return Raster(grid, cell, border_cells, ptr, pg)


# ---------------------------------------------------------------------------------------------


class CountryIndex:
    """Country lookups over a fixed set of polygons, one (multi)polygon per code."""

    def __init__(
        self,
        geometries: Mapping[str, BaseGeometry],
        names: Mapping[str, str] | None = None,
        *,
        cell_deg: float = CELL_DEG,
        raster: Raster | None = None,
        source: str = "",
    ) -> None:
        self._codes = sorted(geometries)
        if len(self._codes) >= _BORDER - 1:
            raise ValueError("too many countries for the raster")
        self._geoms = [geometries[c] for c in self._codes]
        self._pos = {c: i for i, c in enumerate(self._codes)}
        self._names = dict(names or {})
        self.source = source
        self._raster = raster if raster is not None else _build_raster(self._geoms, cell_deg)
        self.cell_deg = self._raster.cell_deg
        self._geom_array = np.array(self._geoms, dtype=object)
        self._table = np.array([""] + self._codes, dtype=f"<U{max(2, *map(len, self._codes))}")
        self._tree = shapely.STRtree(self._geoms)
        self._prepared = False
        self._lock = threading.Lock()
        self._whole_cache: tuple[FloatArray, FloatArray] | None = None

    # -- lookups -------------------------------------------------------------------------------

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._codes)

    def name(self, code: str) -> str:
        return self._names.get(code.upper(), code.upper())

    def polygon(self, code: str) -> BaseGeometry:
        """The code's (multi)polygon; empty for a code the data has no land for."""
        i = self._pos.get(code.upper())
        if i is None:
            if code.upper() in self._names:
                return shapely.Polygon()
            raise InputError(f"unknown country code {code!r}")
        return self._geoms[i]

    def _prepare(self) -> None:
        with self._lock:
            if not self._prepared:
                shapely.prepare(self._geom_array)
                self._prepared = True

    def _indices_at(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.uint16]:
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        la, lo = np.broadcast_arrays(la, lo)
        ok = np.isfinite(la) & np.isfinite(lo) & (np.abs(la) <= 90.0)
        lo = (np.where(ok, lo, 0.0) + 180.0) % 360.0 - 180.0
        la = np.where(ok, la, 0.0)
        grid = self._raster.grid
        ny, nx = grid.shape
        iy = np.minimum(((la + 90.0) / self.cell_deg).astype(np.intp), ny - 1)
        ix = np.minimum(((lo + 180.0) / self.cell_deg).astype(np.intp), nx - 1)
        out = np.where(ok, grid[iy, ix], np.uint16(_SEA))
        edge = out == _BORDER
        if edge.any():
            out[edge] = self._exact(la[edge], lo[edge], iy[edge] * nx + ix[edge])
        return out

    def _exact(
        self, lat: FloatArray, lon: FloatArray, cells: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.uint16]:
        """Point-in-polygon for points in border cells, against that cell's candidates only."""
        self._prepare()
        r = self._raster
        pos = np.searchsorted(r.border_cells, cells)
        start = r.ptr[pos]
        count = r.ptr[pos + 1] - start
        point = np.repeat(np.arange(len(cells)), count)
        within = np.arange(len(point)) - np.repeat(np.cumsum(count) - count, count)
        cand = r.cand[np.repeat(start, count) + within]
        hit = shapely.intersects_xy(self._geom_array[cand], lon[point], lat[point])
        res = np.zeros(lat.shape, dtype=np.uint16)
        res[point[hit]] = cand[hit] + 1
        return res

    def codes_at(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.str_]:
        """ISO alpha-2 per point, "" at sea (and for invalid coordinates)."""
        return self._table[self._indices_at(lat, lon)]

    def code_at(self, lat: float, lon: float) -> str | None:
        code = str(self.codes_at(np.array([lat]), np.array([lon]))[0])
        return code or None

    def land_mask(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = self._indices_at(lat, lon) != _SEA
        return mask

    def codes_near(
        self, lat: npt.ArrayLike, lon: npt.ArrayLike, max_km: float = 10.0
    ) -> npt.NDArray[np.str_]:
        """Like :meth:`codes_at`, but a point at sea takes the nearest country within ``max_km``.

        1:50m coastlines are generalised by a few km, so harbour cities (Copenhagen, Lisbon, Hong
        Kong, Miami, ...) can fall just offshore. Use this for "which country is this landmark or
        data centre in", never for certification.
        """
        la, lo = np.broadcast_arrays(
            np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        )
        idx = self._indices_at(la, lo)
        sea = np.flatnonzero(
            (idx == _SEA) & np.isfinite(la) & np.isfinite(lo) & (np.abs(la) <= 90.0)
        )
        if len(sea) and max_km > 0:
            slat, slon = la.ravel()[sea], (lo.ravel()[sea] + 180.0) % 360.0 - 180.0
            # Planar search radius in degrees, wide enough at the most poleward point; the
            # great-circle distance to the nearest point found is checked below.
            coslat = math.cos(math.radians(min(float(np.abs(slat).max()), 89.0)))
            reach = max_km / (KM_PER_DEG * max(coslat, 0.01))
            pts = shapely.points(slon, slat)
            pi, gi = self._tree.query_nearest(pts, max_distance=reach, all_matches=False)
            if len(pi):
                ends = shapely.get_coordinates(
                    shapely.shortest_line(pts[pi], self._geom_array[gi])
                )[1::2]
                from geoprobe.geo.sphere import haversine_km

                km = np.asarray(
                    haversine_km(slat[pi], slon[pi], ends[:, 1], ends[:, 0]), dtype=float
                )
                ok = km <= max_km
                flat = idx.reshape(-1)
                flat[sea[pi[ok]]] = (gi[ok] + 1).astype(np.uint16)
                idx = flat.reshape(idx.shape)
        return self._table[idx]

    # -- land inside a region ------------------------------------------------------------------

    def land_parts(self, region: BaseGeometry) -> list[LandPart]:
        """Each country's land inside ``region`` (lon/lat), measured on the polygons themselves.

        A point sample of a large region misses small islands (Mauritius is 0.01 % of a 5,000 km
        cap); an intersection cannot. Countries wholly inside the region are not intersected.
        """
        if region.is_empty:
            return []
        region = wrap_lon(region)
        if region.is_empty:
            return []
        hits = np.sort(self._tree.query(region, predicate="intersects"))
        if not len(hits):
            return []
        whole_area, whole_rep = self._whole()
        shapely.prepare(region)
        inside = shapely.contains(region, self._geom_array[hits])
        area = whole_area[hits].copy()
        rep = whole_rep[hits].copy()
        geom = shapely.boundary(self._geom_array[hits])
        cut = hits[~inside]
        if len(cut):
            clipped = shapely.clip_by_rect(self._geom_array[cut], *region.bounds)
            parts = shapely.intersection(clipped, region)
            area[~inside] = equal_area_km2(parts)
            rep[~inside] = shapely.get_coordinates(shapely.point_on_surface(parts))
            geom[~inside] = shapely.intersection(shapely.boundary(clipped), region)
        return [
            LandPart(self._codes[i], float(a), float(r[1]), float(r[0]), g)
            for i, a, r, g in zip(hits.tolist(), area, rep, geom)
            if a > 0.0
        ]

    def _whole(self) -> tuple[FloatArray, FloatArray]:
        """Every country's whole land area (km2) and a point on it; computed once."""
        with self._lock:
            if self._whole_cache is None:
                area = equal_area_km2(self._geom_array)
                rep = shapely.get_coordinates(shapely.point_on_surface(self._geom_array))
                self._whole_cache = (area, rep)
            return self._whole_cache

    # -- certification -------------------------------------------------------------------------

    def certify(self, region: BaseGeometry, margin_km: float = MARGIN_KM) -> str | None:
        """The one country whose polygon holds all land of ``region`` with ``margin_km`` to spare.

        Conservative by construction: the region is grown by at least ``margin_km`` in every
        direction (the east-west growth uses the cosine of the most poleward latitude), and any
        other country the grown region touches vetoes the verdict. None when the region touches
        no land, or more than one country.
        """
        if region.is_empty:
            return None
        region = wrap_lon(region)
        if region.is_empty:
            return None
        _, miny, _, maxy = region.bounds
        dlat = margin_km / KM_PER_DEG
        lat_max = min(89.0, max(abs(miny), abs(maxy)) + dlat)
        dlon = margin_km / (KM_PER_DEG * math.cos(math.radians(lat_max)))
        # Grow by an ellipse (dlon east-west, dlat north-south): buffer in a space stretched
        # north-south.
        k = dlon / dlat
        stretched = shapely.affinity.scale(region, xfact=1.0, yfact=k, origin=(0.0, 0.0))
        grown = shapely.affinity.scale(
            stretched.buffer(dlon, quad_segs=8), xfact=1.0, yfact=1.0 / k, origin=(0.0, 0.0)
        )
        grown = wrap_lon(grown.intersection(shapely.box(-540.0, -90.0, 540.0, 90.0)))
        near = {int(i) for i in self._tree.query(grown, predicate="intersects")}
        if len(near) != 1:
            return None
        (only,) = near
        if not region.intersects(self._geoms[only]):
            return None
        return self._codes[only]


# ---------------------------------------------------------------------------------------------
# Loading with an on-disk cache


def _data_key(paths: Iterable[Path], cell: float) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION}|{cell}".encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _savez_fast(fh: Any, **arrays: npt.NDArray[Any]) -> None:
    """``np.savez_compressed`` at deflate level 1: it runs on the first locate of a machine, where
    level 6 spent 0.3 s (mostly on the polygons' WKB) to save a few hundred KB of cache."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(arr), allow_pickle=False)


def _save_cache(path: Path, index: CountryIndex) -> None:
    wkb = shapely.to_wkb(np.array(index._geoms, dtype=object))
    blob = b"".join(wkb)
    offsets = np.cumsum([0] + [len(b) for b in wkb])
    names = json.dumps(index._names)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            r = index._raster
            _savez_fast(
                fh,
                grid=r.grid,
                border_cells=r.border_cells,
                ptr=r.ptr,
                cand=r.cand,
                codes=np.array(index._codes),
                offsets=offsets,
                wkb=np.frombuffer(blob, dtype=np.uint8),
                names=np.array([names]),
                meta=np.array([index.source, repr(r.cell_deg)]),
            )
        os.replace(tmp, path)
    except OSError:  # an unwritable cache only costs start-up time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _load_cache(path: Path) -> CountryIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            blob = z["wkb"].tobytes()
            offsets = z["offsets"]
            codes = [str(c) for c in z["codes"]]
            geoms = shapely.from_wkb([blob[offsets[i] : offsets[i + 1]] for i in range(len(codes))])
            names = json.loads(str(z["names"][0]))
            source, cell = (str(x) for x in z["meta"])
            raster = Raster(z["grid"], float(cell), z["border_cells"], z["ptr"], z["cand"])
            return CountryIndex(dict(zip(codes, geoms)), names, raster=raster, source=source)
    except (OSError, ValueError, KeyError, shapely.errors.GEOSException):
        return None


def load_index(
    path: Path | None = None, *, cache_dir: Path | None = None, cell_deg: float = CELL_DEG
) -> CountryIndex:
    """Build (or load from cache) the index for the packaged data, or for an NE GeoJSON ``path``."""
    from geoprobe.paths import cache_dir as default_cache_dir

    tables = load_code_tables()
    sources = [path] if path is not None else [TOPOJSON]
    # The code that builds the index is part of the key, so a fix never meets a stale cache.
    sources += [
        SUPPLEMENT,
        ISO_TABLE,
        UNASSIGNED_TABLE,
        SPLITS_TABLE,
        Path(__file__),
        Path(topojson.__file__),
    ]
    try:
        key = _data_key(sources, cell_deg)
    except OSError as exc:
        raise InputError(
            f"cannot read country polygons: {exc.strerror}", file=exc.filename
        ) from None
    tag = (
        "packaged" if path is None else hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    )
    cache = (cache_dir or default_cache_dir()) / f"countries-{tag}-{key}.npz"
    cached = _load_cache(cache) if cache.exists() else None
    if cached is not None:
        return cached
    for stale in cache.parent.glob(f"countries-{tag}-*.npz"):
        with contextlib.suppress(OSError):
            stale.unlink(missing_ok=True)
    if path is None:
        acc, have = _load_packaged(tables)
        source = "world-atlas@2.0.2 countries-50m (Natural Earth 1:50m)"
    else:
        acc, have = _load_geojson(path, tables)
        source = str(path)
    _apply_supplement(acc, have, tables)
    geoms = {code: _merge(parts) for code, parts in acc.items()}
    _apply_splits(geoms)
    index = CountryIndex(geoms, tables.names, cell_deg=cell_deg, source=source)
    _save_cache(cache, index)
    return index


_default: CountryIndex | None = None
_default_lock = threading.Lock()


def default_index(cache_dir: Path | None = None) -> CountryIndex:
    """The process-wide index (``$GEOPROBE_COUNTRIES`` or the packaged polygons), its raster
    cached in ``cache_dir`` (default: the user's cache dir) when it is first built."""
    global _default
    with _default_lock:
        if _default is None:
            env = os.environ.get(ENV)
            _default = load_index(Path(env) if env else None, cache_dir=cache_dir)
        return _default
