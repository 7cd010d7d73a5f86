"""The landmark catalogue: servers at known places, how to probe them, and calibration data.

The format is JSON (written by machines: the testbed, ``landmarks sync``; read by people).
See ``landmarks/README.md`` for the field reference. Every field is validated on load and a bad
entry is reported in one line naming the file, the entry and the field.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError
from geoprobe.jsonfile import read_json

FORMAT = "geoprobe-catalogue/1"
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HOST = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$"
)
METHODS = ("udp", "tcp", "icmp")
# Calibration builds n x n matrices over the landmarks: a short file of tiny entries must not ask
# for gigabytes. RIPE Atlas has about a thousand anchors.
MAX_LANDMARKS = 4096


@dataclass(frozen=True, slots=True)
class Landmark:
    """One landmark. ``calibration`` holds fitted per-landmark model parameters, if any."""

    id: str
    lat: float
    lon: float
    country: str | None = None
    address: str | None = None
    host: str | None = None
    udp_port: int | None = None
    tcp_port: int | None = None
    icmp: bool = False
    pubkey: bytes | None = None
    key_id: str | None = None
    anycast: bool = False
    calibration: Mapping[str, Any] | None = None

    @property
    def target(self) -> str:
        """What to send packets to: the address if known, else the host name."""
        return self.address or self.host or ""

    def supports(self, method: str) -> bool:
        if method == "udp":
            return self.udp_port is not None
        if method == "tcp":
            return self.tcp_port is not None
        if method == "icmp":
            return self.icmp
        return False

    def to_json(self) -> dict[str, Any]:
        methods: dict[str, Any] = {}
        if self.udp_port is not None:
            methods["udp"] = self.udp_port
        if self.tcp_port is not None:
            methods["tcp"] = self.tcp_port
        if self.icmp:
            methods["icmp"] = True
        out: dict[str, Any] = {
            "id": self.id,
            "lat": self.lat,
            "lon": self.lon,
            "country": self.country,
        }
        if self.address:
            out["address"] = self.address
        if self.host:
            out["host"] = self.host
        out["methods"] = methods
        if self.pubkey is not None:
            out["pubkey"] = base64.b64encode(self.pubkey).decode("ascii")
        if self.key_id:
            out["key_id"] = self.key_id
        if self.anycast:
            out["anycast"] = True
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        return out


@dataclass(slots=True)
class Catalogue:
    """Landmarks plus the landmark-to-landmark RTTs (minimum, ms) that calibrate them."""

    landmarks: list[Landmark]
    rtts: list[tuple[str, str, float]] = field(default_factory=list)
    name: str = ""
    source: str | None = None
    path: Path | None = None

    def __iter__(self) -> Iterator[Landmark]:
        return iter(self.landmarks)

    def __len__(self) -> int:
        return len(self.landmarks)

    def by_id(self) -> dict[str, Landmark]:
        return {lm.id: lm for lm in self.landmarks}

    @property
    def calibrated(self) -> bool:
        return bool(self.rtts) or any(lm.calibration for lm in self.landmarks)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "name": self.name}
        if self.source:
            out["source"] = self.source
        out["landmarks"] = [lm.to_json() for lm in self.landmarks]
        if self.rtts:
            out["calibration"] = {"rtts": [[a, b, r] for a, b, r in self.rtts]}
        return out

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename), so a reader never sees half a catalogue."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


def _num(value: Any, *, file: str, entry: str, fld: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number, got {_show(value)}", file=file, entry=entry, field=fld)
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or not lo <= f <= hi:
        raise InputError(
            f"must be between {lo:g} and {hi:g}, got {_show(value)}",
            file=file,
            entry=entry,
            field=fld,
        )
    return f


def _port(value: Any, *, file: str, entry: str, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(
            f"must be a port number 1-65535, got {_show(value)}", file=file, entry=entry, field=fld
        )
    return value


def parse_landmark(raw: Any, *, file: str = "<catalogue>", index: int = 0) -> Landmark:
    """Validate one catalogue entry; raise InputError naming the field on the first problem."""
    if not isinstance(raw, Mapping):
        raise InputError("must be an object", file=file, entry=index)
    lid = raw.get("id")
    if not isinstance(lid, str) or not lid.strip():
        raise InputError("must be a non-empty string", file=file, entry=index, field="id")
    entry = lid
    known = {
        "id",
        "lat",
        "lon",
        "country",
        "address",
        "host",
        "methods",
        "pubkey",
        "key_id",
        "anycast",
        "calibration",
        "name",
        "city",
        "asn",
        "probe_id",
    }
    for key in raw:
        if key not in known:
            raise InputError("unknown field", file=file, entry=entry, field=str(key))
    for key in ("lat", "lon"):
        if key not in raw:
            raise InputError("is missing", file=file, entry=entry, field=key)
    lat = _num(raw["lat"], file=file, entry=entry, fld="lat", lo=-90, hi=90)
    lon = _num(raw["lon"], file=file, entry=entry, fld="lon", lo=-180, hi=180)
    country = raw.get("country")
    if country is not None and (not isinstance(country, str) or not _COUNTRY.match(country)):
        raise InputError(
            f"must be an ISO 3166 alpha-2 code like 'DE', got {_show(country)}",
            file=file,
            entry=entry,
            field="country",
        )
    address = raw.get("address")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except (ValueError, TypeError):
            raise InputError(
                f"must be an IPv4 or IPv6 address, got {_show(address)}",
                file=file,
                entry=entry,
                field="address",
            ) from None
    host = raw.get("host")
    if host is not None and (not isinstance(host, str) or not _HOST.match(host)):
        raise InputError(
            f"must be a host name, got {_show(host)}", file=file, entry=entry, field="host"
        )
    if address is None and host is None:
        raise InputError("needs an address or a host", file=file, entry=entry, field="address")
    methods = raw.get("methods", {"icmp": True})
    if not isinstance(methods, Mapping) or not methods:
        raise InputError(
            'must be an object like {"udp": 7207, "tcp": 443, "icmp": true}',
            file=file,
            entry=entry,
            field="methods",
        )
    udp = tcp = None
    icmp = False
    for m, v in methods.items():
        if m == "udp":
            udp = _port(v, file=file, entry=entry, fld="methods.udp")
        elif m == "tcp":
            tcp = _port(v, file=file, entry=entry, fld="methods.tcp")
        elif m == "icmp":
            if not isinstance(v, bool):
                raise InputError(
                    "must be true or false", file=file, entry=entry, field="methods.icmp"
                )
            icmp = v
        else:
            raise InputError(
                f"unknown probe method (known: {', '.join(METHODS)})",
                file=file,
                entry=entry,
                field=f"methods.{m}",
            )
    pubkey = None
    if raw.get("pubkey") is not None:
        try:
            pubkey = base64.b64decode(str(raw["pubkey"]), validate=True)
        except ValueError:
            pubkey = None
        if pubkey is None or len(pubkey) != 32:
            raise InputError(
                "must be a base64 Ed25519 public key (32 bytes)",
                file=file,
                entry=entry,
                field="pubkey",
            )
        if udp is None:
            raise InputError(
                "a public key needs a signed UDP echo port",
                file=file,
                entry=entry,
                field="methods.udp",
            )
    key_id = raw.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise InputError("must be a string", file=file, entry=entry, field="key_id")
    anycast = raw.get("anycast", False)
    if not isinstance(anycast, bool):
        raise InputError("must be true or false", file=file, entry=entry, field="anycast")
    calibration = raw.get("calibration")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise InputError("must be an object", file=file, entry=entry, field="calibration")
    return Landmark(
        id=lid,
        lat=lat,
        lon=lon,
        country=country,
        address=address,
        host=host,
        udp_port=udp,
        tcp_port=tcp,
        icmp=icmp,
        pubkey=pubkey,
        key_id=key_id,
        anycast=anycast,
        calibration=calibration,
    )


def parse_catalogue(raw: Any, *, file: str = "<catalogue>") -> Catalogue:
    if not isinstance(raw, Mapping):
        raise InputError("must be a JSON object with a 'landmarks' list", file=file)
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise InputError(
            f"unsupported format {_show(fmt)} (expected {FORMAT!r})", file=file, field="format"
        )
    entries = raw.get("landmarks")
    if not isinstance(entries, list):
        raise InputError("must be a list", file=file, field="landmarks")
    if len(entries) > MAX_LANDMARKS:
        raise InputError(
            f"{len(entries)} landmarks: at most {MAX_LANDMARKS} are supported",
            file=file,
            field="landmarks",
        )
    landmarks: list[Landmark] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        lm = parse_landmark(e, file=file, index=i)
        if lm.id in seen:
            raise InputError("duplicate id", file=file, entry=lm.id, field="id")
        seen.add(lm.id)
        landmarks.append(lm)
    rtts: list[tuple[str, str, float]] = []
    cal = raw.get("calibration")
    if cal is not None:
        if not isinstance(cal, Mapping) or not isinstance(cal.get("rtts", []), list):
            raise InputError(
                "must be an object with an 'rtts' list of [src, dst, rtt_ms]",
                file=file,
                field="calibration",
            )
        for j, row in enumerate(cal.get("rtts", [])):
            fld = f"calibration.rtts[{j}]"
            if not isinstance(row, list) or len(row) != 3:
                raise InputError("must be [src, dst, rtt_ms]", file=file, field=fld)
            a, b, r = row
            if not isinstance(a, str) or not isinstance(b, str) or a not in seen or b not in seen:
                raise InputError(
                    f"names an unknown landmark ({_show(a)}, {_show(b)})", file=file, field=fld
                )
            rf = _num(r, file=file, entry=f"{a}->{b}", fld=fld, lo=0.0, hi=10_000.0)
            rtts.append((a, b, rf))
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise InputError("must be a string", file=file, field="name")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise InputError("must be a string", file=file, field="source")
    return Catalogue(landmarks=landmarks, rtts=rtts, name=name, source=source)


def load_catalogue(path: str | Path) -> Catalogue:
    """Load and validate a catalogue file. Raises InputError with a one-line reason."""
    p = Path(path)
    raw = read_json(p)
    cat = parse_catalogue(raw, file=str(p))
    cat.path = p
    return cat


def _show(value: Any) -> str:
    """A bounded repr: a hostile value cannot make the one-line message huge."""
    try:
        text = repr(value)
    except ValueError:  # an int past the int-string conversion limit
        return "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def default_catalogue_path(cache_dir: Path | None = None) -> Path:
    """The RIPE Atlas anchors as ``geoprobe landmarks sync`` cached them in ``cache_dir``.

    Nothing ships in the package: a catalogue of real addresses goes stale, and its calibration
    must come from the mesh measurements of the day.
    """
    from geoprobe.paths import cache_dir as default_cache_dir

    return (cache_dir if cache_dir is not None else default_cache_dir()) / "anchors.json"


def catalogue_or_default(path: Path | None, cache_dir: Path) -> Catalogue:
    """The catalogue given, else the synced one in ``cache_dir``; a missing one says how to get
    it."""
    if path is not None:
        return load_catalogue(path)
    default = default_catalogue_path(cache_dir)
    if not default.exists():
        raise InputError(
            "no landmark catalogue: run `geoprobe landmarks sync` or pass --landmarks FILE",
            file=default,
        )
    return load_catalogue(default)


#: The probe methods, most preferred first: the signed echo cannot be answered by a closer
#: impostor; TCP connect and ICMP echo can.
PROBE_METHODS = ("udp", "tcp", "icmp")


def preferred_method(cat: Catalogue) -> str:
    """The most preferred method that at least one landmark of ``cat`` offers."""
    for method in PROBE_METHODS:
        if any(lm.supports(method) for lm in cat.landmarks):
            return method
    raise InputError("no landmark offers udp, tcp or icmp", file=cat.path, field="methods")


def rtt_matrix(cat: Catalogue, ids: Iterable[str] | None = None) -> tuple[list[str], Any]:
    """Symmetric min-RTT matrix (ms, NaN where unknown) over ``ids`` (default: all landmarks)."""
    import numpy as np

    order = list(ids) if ids is not None else [lm.id for lm in cat.landmarks]
    index = {lid: i for i, lid in enumerate(order)}
    m = np.full((len(order), len(order)), np.nan)
    for a, b, r in cat.rtts:
        i, j = index.get(a), index.get(b)
        if i is None or j is None:
            continue
        if np.isnan(m[i, j]) or r < m[i, j]:
            m[i, j] = r
    # A pair is symmetric unless both directions are given.
    m = np.where(np.isnan(m), m.T, m)
    np.fill_diagonal(m, 0.0)
    return order, m
