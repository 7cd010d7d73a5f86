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

import csv
import hashlib
import json
import math
import os
import threading
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


def _split_indian_ocean_territories(geom: BaseGeometry) -> dict[str, BaseGeometry]:
    """NE lumps Christmas Island and the Cocos (Keeling) Islands together; ISO codes them apart."""
    parts = list(shapely.get_parts(geom))
    west = [p for p in parts if p.centroid.x < 100.0]
    east = [p for p in parts if p.centroid.x >= 100.0]
    out: dict[str, BaseGeometry] = {}
    if west:
        out["CC"] = shapely.MultiPolygon(west)
    if east:
        out["CX"] = shapely.MultiPolygon(east)
    return out


_SPLIT = {"Indian Ocean Ter.": _split_indian_ocean_territories}


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
        if name in _SPLIT:
            for part_code, g in _SPLIT[name](f.geometry).items():
                _add(acc, part_code, g)
            continue
        code: str | None = tables.by_source_name.get(name)
        if code is None and f.id is not None:
            code = tables.alpha2_by_numeric.get(f.id)
        if code is None:
            raise InputError(f"no ISO code for {name!r} (id {f.id})", file=TOPOJSON, entry=n, field="id")
        _add(acc, code, f.geometry)
    return acc, names


def _ne_code(props: Mapping[str, Any], name: str, tables: CodeTables) -> str | None:
    """ISO_A2_EH, else ISO_A2 (NE writes -99 where it has none), else our table, else ADM0_A3."""
    for key in ("ISO_A2_EH", "ISO_A2"):
        value = props.get(key)
        if isinstance(value, str) and len(value) == 2 and value.isalpha():
            return value.upper()
    if name in tables.by_source_name:
        return tables.by_source_name[name]
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
            raise InputError(f"bad geometry: {exc}", file=path, entry=name or n, field="geometry") from None
        if not geom.is_valid:
            geom = polygonal(shapely.make_valid(geom))
        if name in _SPLIT:
            for part_code, g in _SPLIT[name](geom).items():
                _add(acc, part_code, g)
            continue
        code = _ne_code(props, name, tables)
        if code is None:
            raise InputError("feature has no usable ISO_A2_EH, ISO_A2 or ADM0_A3", file=path,
                             entry=name or n, field="ISO_A2_EH")
        _add(acc, code, geom)
    if not acc:
        raise InputError("no country polygons found", file=path, field="features")
    return acc, names


def _apply_supplement(acc: dict[str, list[BaseGeometry]], have_names: set[str], tables: CodeTables) -> None:
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


def _merge(parts: list[BaseGeometry]) -> BaseGeometry:
    if len(parts) == 1:
        return parts[0]
    return polygonal(shapely.union_all(parts))


# ---------------------------------------------------------------------------------------------
# The raster


def _build_raster(geoms: list[BaseGeometry], cell: float) -> npt.NDArray[np.uint16]:
    """Cells wholly inside one polygon (or none) get its index + 1 (0 = sea); the rest _BORDER.

    A cell is free of borders iff no boundary segment passes through it. Boundaries are densified
    to half a cell, so any cell a segment crosses is within one cell of a sample: marking sample
    cells and dilating by one finds every border cell. Connected border-free cells then lie in
    one face, so one point test per connected component classifies them all.
    """
    from scipy import ndimage  # only needed to build, and slow to import: keep it off start-up

    ny, nx = round(180 / cell), round(360 / cell)
    border = np.zeros((ny, nx), dtype=bool)
    for g in geoms:
        xy = shapely.get_coordinates(shapely.segmentize(g.boundary, cell / 2))
        ix = np.clip(np.floor((xy[:, 0] + 180.0) / cell).astype(np.int64), 0, nx - 1)
        iy = np.clip(np.floor((xy[:, 1] + 90.0) / cell).astype(np.int64), 0, ny - 1)
        border[iy, ix] = True
    border = ndimage.binary_dilation(border, structure=np.ones((3, 3), dtype=bool))
    labels, count = ndimage.label(~border)
    flat = labels.ravel()
    comp, first = np.unique(flat, return_index=True)
    keep = comp > 0
    comp, first = comp[keep], first[keep]
    cy, cx = np.divmod(first, nx)
    pts = shapely.points((cx + 0.5) * cell - 180.0, (cy + 0.5) * cell - 90.0)
    tree = shapely.STRtree(geoms)
    pi, gi = tree.query(pts, predicate="within")
    lut = np.zeros(count + 1, dtype=np.uint16)
    lut[comp[pi]] = (gi + 1).astype(np.uint16)
    raster: npt.NDArray[np.uint16] = lut[labels]
    raster[border] = _BORDER
    return raster


# ---------------------------------------------------------------------------------------------


class CountryIndex:
    """Country lookups over a fixed set of polygons, one (multi)polygon per code."""

    def __init__(self, geometries: Mapping[str, BaseGeometry], names: Mapping[str, str] | None = None,
                 *, cell_deg: float = CELL_DEG, raster: npt.NDArray[np.uint16] | None = None,
                 source: str = "") -> None:
        self._codes = sorted(geometries)
        if len(self._codes) >= _BORDER - 1:
            raise ValueError("too many countries for the raster")
        self._geoms = [geometries[c] for c in self._codes]
        self._pos = {c: i for i, c in enumerate(self._codes)}
        self._names = dict(names or {})
        self.source = source
        self.cell_deg = cell_deg
        self._raster = raster if raster is not None else _build_raster(self._geoms, cell_deg)
        self._table = np.array([""] + self._codes, dtype=f"<U{max(2, *map(len, self._codes))}")
        self._tree = shapely.STRtree(self._geoms)
        self._prepared = False
        self._lock = threading.Lock()

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
                shapely.prepare(np.array(self._geoms, dtype=object))
                self._prepared = True

    def _indices_at(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.uint16]:
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        la, lo = np.broadcast_arrays(la, lo)
        ok = np.isfinite(la) & np.isfinite(lo) & (np.abs(la) <= 90.0)
        lo = np.where(ok, (lo + 180.0) % 360.0 - 180.0, 0.0)
        la = np.where(ok, la, 0.0)
        ny, nx = self._raster.shape
        iy = np.minimum(((la + 90.0) / self.cell_deg).astype(np.intp), ny - 1)
        ix = np.minimum(((lo + 180.0) / self.cell_deg).astype(np.intp), nx - 1)
        out = self._raster[iy, ix]
        out = np.where(ok, out, np.uint16(_SEA))
        edge = out == _BORDER
        if edge.any():
            out[edge] = self._exact(la[edge], lo[edge])
        return out

    def _exact(self, lat: FloatArray, lon: FloatArray) -> npt.NDArray[np.uint16]:
        """Point-in-polygon for points near borders: bbox candidates, then prepared polygons."""
        self._prepare()
        res = np.zeros(lat.shape, dtype=np.uint16)
        pi, gi = self._tree.query(shapely.points(lon, lat))
        if len(pi) == 0:
            return res
        order = np.argsort(gi, kind="stable")
        pi, gi = pi[order], gi[order]
        starts = np.flatnonzero(np.r_[True, gi[1:] != gi[:-1]])
        ends = np.r_[starts[1:], len(gi)]
        for s, e in zip(starts, ends):
            g = int(gi[s])
            sel = pi[s:e]
            hit = shapely.intersects_xy(self._geoms[g], lon[sel], lat[sel])
            res[sel[hit]] = g + 1
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
        # Grow by an ellipse (dlon east-west, dlat north-south): buffer in a space stretched north-south.
        k = dlon / dlat
        stretched = shapely.affinity.scale(region, xfact=1.0, yfact=k, origin=(0.0, 0.0))
        grown = shapely.affinity.scale(stretched.buffer(dlon, quad_segs=8), xfact=1.0, yfact=1.0 / k,
                                       origin=(0.0, 0.0))
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


def _save_cache(path: Path, index: CountryIndex) -> None:
    wkb = shapely.to_wkb(np.array(index._geoms, dtype=object))
    blob = b"".join(wkb)
    offsets = np.cumsum([0] + [len(b) for b in wkb])
    names = json.dumps(index._names)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, raster=index._raster, codes=np.array(index._codes), offsets=offsets,
                                wkb=np.frombuffer(blob, dtype=np.uint8), names=np.array([names]),
                                meta=np.array([index.source, repr(index.cell_deg)]))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # an unwritable cache only costs start-up time


def _load_cache(path: Path) -> CountryIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            blob = z["wkb"].tobytes()
            offsets = z["offsets"]
            codes = [str(c) for c in z["codes"]]
            geoms = shapely.from_wkb([blob[offsets[i]:offsets[i + 1]] for i in range(len(codes))])
            names = json.loads(str(z["names"][0]))
            source, cell = (str(x) for x in z["meta"])
            return CountryIndex(dict(zip(codes, geoms)), names, cell_deg=float(cell),
                                raster=z["raster"], source=source)
    except (OSError, ValueError, KeyError, shapely.errors.GEOSException):
        return None


def load_index(path: Path | None = None, *, cache_dir: Path | None = None,
               cell_deg: float = CELL_DEG) -> CountryIndex:
    """Build (or load from cache) the index for the packaged data, or for an NE GeoJSON ``path``."""
    from geoprobe.paths import cache_dir as default_cache_dir

    tables = load_code_tables()
    sources = [path] if path is not None else [TOPOJSON]
    # The code that builds the index is part of the key, so a fix never meets a stale cache.
    sources += [SUPPLEMENT, ISO_TABLE, UNASSIGNED_TABLE, Path(__file__), Path(topojson.__file__)]
    try:
        key = _data_key(sources, cell_deg)
    except OSError as exc:
        raise InputError(f"cannot read country polygons: {exc.strerror}", file=exc.filename) from None
    tag = "packaged" if path is None else hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    cache = (cache_dir or default_cache_dir()) / f"countries-{tag}-{key}.npz"
    cached = _load_cache(cache) if cache.exists() else None
    if cached is not None:
        return cached
    for stale in cache.parent.glob(f"countries-{tag}-*.npz"):
        stale.unlink(missing_ok=True)
    if path is None:
        acc, have = _load_packaged(tables)
        source = "world-atlas@2.0.2 countries-50m (Natural Earth 1:50m)"
    else:
        acc, have = _load_geojson(path, tables)
        source = str(path)
    _apply_supplement(acc, have, tables)
    geoms = {code: _merge(parts) for code, parts in acc.items()}
    index = CountryIndex(geoms, tables.names, cell_deg=cell_deg, source=source)
    _save_cache(cache, index)
    return index


_default: CountryIndex | None = None
_default_lock = threading.Lock()


def default_index() -> CountryIndex:
    """The process-wide index (``$GEOPROBE_COUNTRIES`` or the packaged polygons)."""
    global _default
    with _default_lock:
        if _default is None:
            env = os.environ.get(ENV)
            _default = load_index(Path(env) if env else None)
        return _default
