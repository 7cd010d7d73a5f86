"""RTT datasets for evaluation: WonderProxy's all-pairs pings, and a generic pair of CSV files.

Both adapters produce the same ``Dataset``: servers with claimed positions and n x n matrices of
minimum RTTs. Bad rows are skipped and counted in ``Dataset.warnings``; a file that cannot be used
at all raises ``InputError`` naming the file and the field.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from geoprobe.errors import InputError
from geoprobe.landmarks import Catalogue, Landmark

FloatMatrix = npt.NDArray[np.float64]
MAX_SERVERS = 4096  # three n x n float matrices: 400 MB at this size

#: WonderProxy writes countries as English names; map them to ISO 3166-1 alpha-2.
COUNTRY_CODES: dict[str, str] = {
    "Albania": "AL",
    "Algeria": "DZ",
    "Argentina": "AR",
    "Australia": "AU",
    "Austria": "AT",
    "Bangladesh": "BD",
    "Belgium": "BE",
    "Brazil": "BR",
    "Bulgaria": "BG",
    "Cambodia": "KH",
    "Canada": "CA",
    "Chile": "CL",
    "China": "CN",
    "Colombia": "CO",
    "Costa Rica": "CR",
    "Croatia": "HR",
    "Cyprus": "CY",
    "Czech Republic": "CZ",
    "Czechia": "CZ",
    "Denmark": "DK",
    "Ecuador": "EC",
    "Egypt": "EG",
    "Estonia": "EE",
    "Finland": "FI",
    "France": "FR",
    "Georgia": "GE",
    "Germany": "DE",
    "Ghana": "GH",
    "Greece": "GR",
    "Guatemala": "GT",
    "Honduras": "HN",
    "Hong Kong": "HK",
    "Hungary": "HU",
    "Iceland": "IS",
    "India": "IN",
    "Indonesia": "ID",
    "Ireland": "IE",
    "Isle of Man": "IM",
    "Israel": "IL",
    "Italy": "IT",
    "Japan": "JP",
    "Kazakhstan": "KZ",
    "Kenya": "KE",
    "Kosovo": "XK",
    "Latvia": "LV",
    "Lebanon": "LB",
    "Lithuania": "LT",
    "Luxembourg": "LU",
    "Malaysia": "MY",
    "Malta": "MT",
    "Mexico": "MX",
    "Moldova": "MD",
    "Morocco": "MA",
    "Netherlands": "NL",
    "New Zealand": "NZ",
    "Nigeria": "NG",
    "Norway": "NO",
    "Pakistan": "PK",
    "Panama": "PA",
    "Peru": "PE",
    "Philippines": "PH",
    "Poland": "PL",
    "Portugal": "PT",
    "Puerto Rico": "PR",
    "Romania": "RO",
    "Russia": "RU",
    "Saudi Arabia": "SA",
    "Serbia": "RS",
    "Singapore": "SG",
    "Slovakia": "SK",
    "Slovenia": "SI",
    "South Africa": "ZA",
    "South Korea": "KR",
    "Spain": "ES",
    "Suriname": "SR",
    "Sweden": "SE",
    "Switzerland": "CH",
    "Taiwan": "TW",
    "Tanzania": "TZ",
    "Thailand": "TH",
    "Tunisia": "TN",
    "Turkey": "TR",
    "Uganda": "UG",
    "Ukraine": "UA",
    "United Arab Emirates": "AE",
    "United Kingdom": "GB",
    "United States": "US",
    "Uruguay": "UY",
    "Venezuela": "VE",
    "Vietnam": "VN",
}


@dataclass(frozen=True, slots=True)
class Server:
    id: str
    name: str
    lat: float
    lon: float
    country: str | None = None  # ISO 3166-1 alpha-2


@dataclass(slots=True)
class Dataset:
    """Servers and their RTT matrices (ms; NaN where unknown; row = source, column =
    destination)."""

    name: str
    servers: list[Server]
    rtt_min: FloatMatrix
    rtt_avg: FloatMatrix
    rtt_mdev: FloatMatrix
    warnings: list[str] = field(default_factory=list)
    source: str | None = None

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.servers]

    @property
    def index(self) -> dict[str, int]:
        return {s.id: i for i, s in enumerate(self.servers)}

    @property
    def lats(self) -> npt.NDArray[np.float64]:
        return np.array([s.lat for s in self.servers], dtype=float)

    @property
    def lons(self) -> npt.NDArray[np.float64]:
        return np.array([s.lon for s in self.servers], dtype=float)

    def __len__(self) -> int:
        return len(self.servers)

    def find(self, name_or_id: str) -> Server:
        """Look a server up by id, then by name (case-insensitive)."""
        for s in self.servers:
            if s.id == name_or_id:
                return s
        low = name_or_id.lower()
        for s in self.servers:
            if s.name.lower() == low:
                return s
        raise InputError(f"no server with id or name {name_or_id!r}", file=self.source, field="id")

    def rtts_to(self, target: int, landmarks: Iterable[int] | None = None) -> dict[str, float]:
        """The measurement vector of ``target``: min RTT per landmark id (the lower of both
        directions)."""
        cols = range(len(self.servers)) if landmarks is None else landmarks
        out: dict[str, float] = {}
        for j in cols:
            if j == target:
                continue
            r = np.fmin(self.rtt_min[j, target], self.rtt_min[target, j])
            if np.isfinite(r):
                out[self.servers[j].id] = float(r)
        return out

    def to_catalogue(self, ids: Iterable[str] | None = None) -> Catalogue:
        """A landmark catalogue (addresses are placeholders on loopback) with calibration RTTs."""
        keep = set(ids) if ids is not None else set(self.ids)
        lms = [
            Landmark(
                id=s.id, lat=s.lat, lon=s.lon, country=s.country, address="127.0.0.1", icmp=True
            )
            for s in self.servers
            if s.id in keep
        ]
        rtts: list[tuple[str, str, float]] = []
        n = len(self.servers)
        for i in range(n):
            if self.servers[i].id not in keep:
                continue
            for j in range(n):
                if i != j and self.servers[j].id in keep and math.isfinite(self.rtt_min[i, j]):
                    rtts.append((self.servers[i].id, self.servers[j].id, float(self.rtt_min[i, j])))
        return Catalogue(landmarks=lms, rtts=rtts, name=self.name, source=self.source)


def load_dataset(path: str | Path) -> Dataset:
    """Auto-detect a WonderProxy directory or a generic landmarks.csv + rtts.csv directory."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", file=p)
    if p.is_dir():
        if (p / "landmarks.csv").exists() and (p / "rtts.csv").exists():
            return load_generic(p / "landmarks.csv", p / "rtts.csv")
        servers = sorted(p.glob("servers*.csv"))
        pings = sorted(p.glob("pings*.csv"))
        if servers and pings:
            return load_wonderproxy(servers[0], pings[0])
        raise InputError(
            "not a dataset: expected landmarks.csv + rtts.csv, or WonderProxy servers*.csv + "
            "pings*.csv",
            file=p,
        )
    raise InputError(
        "a dataset is a directory (landmarks.csv + rtts.csv, or WonderProxy CSVs)", file=p
    )


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        fh = path.open(newline="", encoding="utf-8-sig")  # a spreadsheet's BOM is no column name
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=path) from None
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"unreadable CSV header: {exc}", file=path) from None
        for col in required:
            if col not in header:
                raise InputError(
                    f"missing column (header: {_clip(','.join(header)) or 'empty'})",
                    file=path,
                    field=col,
                )
        reader.fieldnames = header
        try:
            yield from enumerate(reader, start=2)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"unreadable CSV: {exc}", file=path) from None


def _clip(text: object, n: int = 80) -> str:
    """A cell as it may appear in a one-line message: a hostile file's cells can be huge."""
    s = str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


def _coord(row: dict[str, str], lat_key: str, lon_key: str) -> tuple[float, float] | str:
    try:
        lat, lon = float(row[lat_key]), float(row[lon_key])
    except (TypeError, ValueError, KeyError):
        return f"{lat_key}/{lon_key} not numbers"
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return f"impossible coordinates ({_clip(row.get(lat_key))}, {_clip(row.get(lon_key))})"
    return lat, lon


class _Builder:
    """Collects directed RTT rows, keeping the minimum per pair."""

    def __init__(self, servers: list[Server], source: Path) -> None:
        if len(servers) > MAX_SERVERS:  # each matrix is n x n: a short file must not ask for GBs
            raise InputError(
                f"{len(servers)} servers: at most {MAX_SERVERS} are supported",
                file=source,
                field="id",
            )
        self.servers = servers
        self.index = {s.id: i for i, s in enumerate(servers)}
        n = len(servers)
        self.mn = np.full((n, n), np.nan)
        self.avg = np.full((n, n), np.nan)
        self.mdev = np.full((n, n), np.nan)
        self.skipped: dict[str, int] = {}

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def add(
        self, src: str, dst: str, rmin: float, ravg: float = math.nan, rmdev: float = math.nan
    ) -> None:
        i, j = self.index.get(src), self.index.get(dst)
        if i is None or j is None:
            self.skip("unknown or unlocated server id")
            return
        if i == j:
            self.skip("self pair")
            return
        if not math.isfinite(rmin) or rmin < 0:
            self.skip("negative or non-finite RTT")
            return
        if math.isnan(self.mn[i, j]) or rmin < self.mn[i, j]:
            self.mn[i, j], self.avg[i, j], self.mdev[i, j] = rmin, ravg, rmdev

    def build(self, name: str, source: str, warnings: list[str]) -> Dataset:
        # A pair is symmetric unless both directions are given.
        fill = np.isnan(self.mn) & ~np.isnan(self.mn.T)
        for m in (self.mn, self.avg, self.mdev):
            m[fill] = m.T[fill]
        for why, n in sorted(self.skipped.items()):
            warnings.append(f"skipped {n} RTT row(s): {why}")
        silent = [
            s.id
            for i, s in enumerate(self.servers)
            if not (np.isfinite(self.mn[i]).any() or np.isfinite(self.mn[:, i]).any())
        ]
        if silent:
            shown = ", ".join(silent[:10]) + (", ..." if len(silent) > 10 else "")
            warnings.append(
                f"{len(silent)} server(s) have no RTT at all and cannot be located or used: {shown}"
            )
        return Dataset(
            name=name,
            servers=self.servers,
            rtt_min=self.mn,
            rtt_avg=self.avg,
            rtt_mdev=self.mdev,
            warnings=warnings,
            source=source,
        )


def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load_wonderproxy(servers_csv: str | Path, pings_csv: str | Path) -> Dataset:
    """WonderProxy servers CSV + grouped pings CSV (the ``min`` column is the RTT that counts)."""
    sp, pp = Path(servers_csv), Path(pings_csv)
    warnings: list[str] = []
    servers: list[Server] = []
    seen: set[str] = set()
    bad: dict[str, int] = {}
    for _line, row in _rows(sp, ("id", "latitude", "longitude", "country")):
        sid = (row.get("id") or "").strip()
        c = _coord(row, "latitude", "longitude")
        if not sid or sid in seen or isinstance(c, str):
            why = "missing or duplicate id" if not sid or sid in seen else str(c)
            bad[why] = bad.get(why, 0) + 1
            continue
        country_name = (row.get("country") or "").strip()
        code = COUNTRY_CODES.get(country_name)
        if country_name and code is None:
            key = f"unknown country name {_clip(repr(country_name))} (kept without country)"
            bad[key] = bad.get(key, 0) + 1
        seen.add(sid)
        servers.append(
            Server(id=sid, name=(row.get("name") or sid).strip(), lat=c[0], lon=c[1], country=code)
        )
    for why, n in bad.items():
        warnings.append(f"{sp.name}: skipped {n} server row(s): {why}")
    if not servers:
        raise InputError("no usable server rows", file=sp, field="id")
    b = _Builder(servers, sp)
    for _line, row in _rows(pp, ("source", "destination", "min")):
        rmin = _float(row.get("min"))
        if math.isnan(rmin) and (row.get("min") or "").strip().lower() not in ("nan",):
            b.skip("malformed min")
            continue
        b.add(
            (row.get("source") or "").strip(),
            (row.get("destination") or "").strip(),
            rmin,
            _float(row.get("avg")),
            _float(row.get("mdev")),
        )
    ds = b.build("wonderproxy", str(pp.parent), warnings)
    if not np.isfinite(ds.rtt_min).any():
        raise InputError("no usable RTT rows", file=pp, field="min")
    return ds


def load_generic(landmarks_csv: str | Path, rtts_csv: str | Path) -> Dataset:
    """``landmarks.csv`` (id,lat,lon[,country]) + ``rtts.csv`` (src,dst,rtt_ms); repeats ->
    minimum."""
    lp, rp = Path(landmarks_csv), Path(rtts_csv)
    warnings: list[str] = []
    servers: list[Server] = []
    seen: set[str] = set()
    bad: dict[str, int] = {}
    nocountry: dict[str, int] = {}
    for _line, row in _rows(lp, ("id", "lat", "lon")):
        sid = (row.get("id") or "").strip()
        c = _coord(row, "lat", "lon")
        country = (row.get("country") or "").strip().upper() or None
        if not sid or sid in seen:
            why = "missing or duplicate id"
        elif isinstance(c, str):
            why = c
        else:
            if country is not None and not (len(country) == 2 and country.isalpha()):
                # As the WonderProxy adapter does: the position and RTTs still count.
                key = f"country not an ISO alpha-2 code ({_clip(repr(country))})"
                nocountry[key] = nocountry.get(key, 0) + 1
                country = None
            seen.add(sid)
            servers.append(Server(id=sid, name=sid, lat=c[0], lon=c[1], country=country))
            continue
        bad[why] = bad.get(why, 0) + 1
    for why, n in bad.items():
        warnings.append(f"{lp.name}: skipped {n} landmark row(s): {why}")
    for why, n in nocountry.items():
        warnings.append(f"{lp.name}: kept {n} landmark row(s) without country: {why}")
    if not servers:
        raise InputError("no usable landmark rows", file=lp, field="id")
    b = _Builder(servers, lp)
    for _line, row in _rows(rp, ("src", "dst", "rtt_ms")):
        raw = (row.get("rtt_ms") or "").strip()
        try:
            r = float(raw)
        except ValueError:
            b.skip("malformed rtt_ms")
            continue
        b.add((row.get("src") or "").strip(), (row.get("dst") or "").strip(), r)
    ds = b.build(lp.parent.name or "dataset", str(lp.parent), warnings)
    if not np.isfinite(ds.rtt_min).any():
        raise InputError("no usable RTT rows", file=rp, field="rtt_ms")
    return ds
