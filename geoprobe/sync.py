"""``landmarks sync``: turn the RIPE Atlas anchor list into a landmark catalogue, and cache it.

Anchors are dedicated servers in data centres with host-entered locations. The API pages them
(``/api/v2/anchors/``: ``count``, ``next``, ``results``); each has ``geometry.coordinates`` as
GeoJSON ``[lon, lat]``, ``ip_v4``, ``fqdn``, ``country``, ``probe`` (its probe id), ``is_disabled``
and ``date_decommissioned``. Disabled and decommissioned anchors are dropped: their addresses may
belong to someone else by now.

Calibration (``mesh=True``): every anchor is the target of "anchoring mesh" ping measurements run
from the other anchors (``/api/v2/anchor-measurements/``, ``is_mesh``, ``type`` "ping"). For each
kept anchor we read the *latest* result of its mesh ping measurements
(``/api/v2/measurements/<id>/latest/``) and keep each source anchor's IPv4 ``min`` RTT. That is one
round of results, not a long-run minimum, so the calibration is a little pessimistic (RTTs a bit
high), which only makes the fitted bounds looser, never unsound.

Anchors answer ICMP echo and serve HTTP(S), so the catalogue offers ``icmp`` and ``tcp`` (port 80
by default): TCP connect time needs no privileges.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geoprobe import __version__ as _version
from geoprobe.errors import GeoprobeError, InputError
from geoprobe.landmarks import Catalogue, Landmark, parse_catalogue

DEFAULT_API = "https://atlas.ripe.net/api/v2"
CACHE_NAME = "anchors.json"
MAX_PAGE_BYTES = 32 * 1024 * 1024
PAGE_SIZE = 500
MAX_PAGES = 1000
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ID_FROM_URL = re.compile(r"/(\d+)/?(?:\?.*)?$")

Progress = Callable[[str], None]


class SyncError(GeoprobeError):
    """The API could not be read (network, HTTP status, malformed page)."""


@dataclass(frozen=True, slots=True)
class Anchor:
    id: int
    probe: int | None
    hostname: str | None
    fqdn: str | None
    ip_v4: str | None
    country: str | None
    city: str | None
    asn: int | None
    lat: float
    lon: float
    is_disabled: bool
    decommissioned: str | None

    @property
    def landmark_id(self) -> str:
        """The anchor's host name (``de-fra-as1234``) reads best in reports; else its probe id."""
        if self.hostname:
            return self.hostname
        if self.fqdn:
            return self.fqdn.split(".")[0]
        return f"anchor-{self.probe if self.probe is not None else self.id}"


@dataclass(slots=True)
class SyncResult:
    catalogue: Catalogue
    anchors: list[Anchor]
    dropped: Counter[str] = field(default_factory=Counter)
    path: Path | None = None
    synced: str = ""
    mesh_measurements: int = 0


def fetch_json(url: str, timeout: float = 30.0) -> Any:
    """GET ``url`` as JSON; any failure is one line naming the URL."""
    req = urllib.request.Request(
        url,
        headers={
            "Accept": "application/json",
            "User-Agent": f"geoprobe/{_version} (landmarks sync)",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(MAX_PAGE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise SyncError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SyncError(f"{url}: cannot fetch ({reason})") from None
    if len(body) > MAX_PAGE_BYTES:
        raise SyncError(f"{url}: page larger than {MAX_PAGE_BYTES // (1024 * 1024)} MiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # bad bytes, NaN-free ints past the limit, nesting
        raise SyncError(f"{url}: not JSON") from None


def iter_pages(
    url: str, *, fetch: Callable[[str], Any] = fetch_json
) -> Iterator[Mapping[str, Any]]:
    """Every result of a paged list, following ``next`` (absolute or relative) until it is null."""
    seen: set[str] = set()
    next_url: str | None = url
    while next_url:
        if next_url in seen or len(seen) >= MAX_PAGES:
            raise SyncError(f"{next_url}: pagination loops or never ends")
        seen.add(next_url)
        page = fetch(next_url)
        if not isinstance(page, Mapping) or not isinstance(page.get("results"), list):
            raise SyncError(f"{next_url}: not a result page (no 'results' list)")
        for item in page["results"]:
            if isinstance(item, Mapping):
                yield item
        nxt = page.get("next")
        next_url = urllib.parse.urljoin(next_url, nxt) if isinstance(nxt, str) and nxt else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


def parse_anchor(raw: Mapping[str, Any]) -> Anchor | str:
    """An Anchor, or the reason the record cannot be one."""
    aid = _int(raw.get("id"))
    if aid is None:
        return "no id"
    geom = raw.get("geometry")
    coords = geom.get("coordinates") if isinstance(geom, Mapping) else None
    if not isinstance(coords, list) or len(coords) < 2:
        return "no location"
    try:
        lon, lat = float(coords[0]), float(coords[1])  # GeoJSON order: [lon, lat]
    except (TypeError, ValueError):
        return "no location"
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return "impossible location"
    country = _str(raw.get("country"))
    country = country.upper() if country and _COUNTRY.match(country.upper()) else None
    return Anchor(
        id=aid,
        probe=_int(raw.get("probe")),
        hostname=_str(raw.get("hostname")),
        fqdn=_str(raw.get("fqdn")),
        ip_v4=_str(raw.get("ip_v4")),
        country=country,
        city=_str(raw.get("city")),
        asn=_int(raw.get("as_v4")),
        lat=lat,
        lon=lon,
        is_disabled=raw.get("is_disabled") is True,
        decommissioned=_str(raw.get("date_decommissioned")),
    )


def drop_reason(a: Anchor) -> str | None:
    if a.is_disabled:
        return "disabled"
    if a.decommissioned:
        return "decommissioned"
    if not a.ip_v4 and not a.fqdn:
        return "no address"
    return None


def to_landmark(a: Anchor, *, tcp_port: int | None = 80, icmp: bool = True) -> Landmark:
    return Landmark(
        id=a.landmark_id,
        lat=a.lat,
        lon=a.lon,
        country=a.country,
        address=a.ip_v4,
        host=a.fqdn,
        tcp_port=tcp_port,
        icmp=icmp,
    )


def fetch_anchors(
    api: str, *, fetch: Callable[[str], Any] = fetch_json
) -> tuple[list[Anchor], Counter[str]]:
    """Usable anchors (unique landmark ids) and why the others were dropped."""
    kept: list[Anchor] = []
    dropped: Counter[str] = Counter()
    ids: set[str] = set()
    for raw in iter_pages(f"{api.rstrip('/')}/anchors/?page_size={PAGE_SIZE}", fetch=fetch):
        a = parse_anchor(raw)
        if isinstance(a, str):
            dropped[a] += 1
            continue
        why = drop_reason(a)
        if why is None and a.landmark_id in ids:
            why = "duplicate name"
        if why is not None:
            dropped[why] += 1
            continue
        ids.add(a.landmark_id)
        kept.append(a)
    return kept, dropped


def _ref_id(v: Any) -> int | None:
    """The API refers to objects by URL (``.../anchors/344/``) or, with some options, by id."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = _ID_FROM_URL.search(v)
        if m:
            return int(m.group(1))
    if isinstance(v, Mapping):
        return _ref_id(v.get("id"))
    return None


def fetch_mesh_rtts(
    api: str,
    anchors: Sequence[Anchor],
    *,
    fetch: Callable[[str], Any] = fetch_json,
    progress: Progress | None = None,
) -> tuple[list[tuple[str, str, float]], int]:
    """Anchor->anchor min RTTs from the latest round of the anchoring-mesh pings (IPv4 only)."""
    by_anchor = {a.id: a for a in anchors}
    by_probe = {a.probe: a for a in anchors if a.probe is not None}
    root = api.rstrip("/")
    targets: dict[int, list[int]] = {}
    for raw in iter_pages(f"{root}/anchor-measurements/?page_size={PAGE_SIZE}", fetch=fetch):
        if raw.get("is_mesh") is not True or raw.get("type") != "ping":
            continue
        tgt, msm = _ref_id(raw.get("target")), _ref_id(raw.get("measurement"))
        if tgt in by_anchor and msm is not None:
            targets.setdefault(tgt, []).append(msm)
    best: dict[tuple[str, str], float] = {}
    done = 0
    for tgt, msms in targets.items():
        dst = by_anchor[tgt].landmark_id
        for msm in msms:
            results = fetch(f"{root}/measurements/{msm}/latest/")
            done += 1
            if progress is not None:
                progress(f"mesh measurement {done}")
            if not isinstance(results, list):
                continue
            for r in results:
                if not isinstance(r, Mapping) or r.get("af", 4) != 4:
                    continue
                prb = _int(r.get("prb_id"))
                src = by_probe.get(prb) if prb is not None else None
                rmin = r.get("min")
                if (
                    src is None
                    or src.id == tgt
                    or not isinstance(rmin, (int, float))
                    or isinstance(rmin, bool)
                ):
                    continue
                if not math.isfinite(rmin) or rmin <= 0:  # -1: no reply
                    continue
                key = (src.landmark_id, dst)
                if key not in best or rmin < best[key]:
                    best[key] = float(rmin)
    return [(a, b, round(r, 3)) for (a, b), r in sorted(best.items())], done


def catalogue_json(result: SyncResult, api: str) -> dict[str, Any]:
    """The catalogue plus the anchors' extras (probe id, city, ASN) and the sync date."""
    data = result.catalogue.to_json()
    extras = {a.landmark_id: a for a in result.anchors}
    for entry in data["landmarks"]:
        a = extras[entry["id"]]
        if a.probe is not None:
            entry["probe_id"] = a.probe
        if a.city:
            entry["city"] = a.city
        if a.asn is not None:
            entry["asn"] = a.asn
    data["synced"] = result.synced
    data["api"] = api
    return data


def sync(
    api: str = DEFAULT_API,
    *,
    out: Path | None = None,
    cache_dir: Path | None = None,
    mesh: bool = False,
    tcp_port: int | None = 80,
    fetch: Callable[[str], Any] = fetch_json,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> SyncResult:
    """Fetch the anchors (and mesh RTTs), write the catalogue to ``out`` and to the cache."""
    anchors, dropped = fetch_anchors(api, fetch=fetch)
    if not anchors:
        raise SyncError(f"{api}: no usable anchor ({sum(dropped.values())} listed, all dropped)")
    rtts: list[tuple[str, str, float]] = []
    n_mesh = 0
    if mesh:
        rtts, n_mesh = fetch_mesh_rtts(api, anchors, fetch=fetch, progress=progress)
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cat = Catalogue(
        landmarks=[to_landmark(a, tcp_port=tcp_port) for a in anchors],
        rtts=rtts,
        name="RIPE Atlas anchors",
        source=f"RIPE Atlas API {api} (RIPE NCC), synced {when}",
    )
    result = SyncResult(
        catalogue=cat, anchors=anchors, dropped=dropped, synced=when, mesh_measurements=n_mesh
    )
    data = catalogue_json(result, api)
    parse_catalogue(
        data, file="<synced catalogue>"
    )  # never cache what `locate` would refuse to load
    targets = [
        p
        for p in (out, (cache_dir / CACHE_NAME) if cache_dir is not None else None)
        if p is not None
    ]
    for path in targets:
        _write_atomic(path, data)
    result.path = targets[0] if targets else None
    return result


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:  # read-only, full, or a directory where the file belongs
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SyncError(f"{path}: cannot write the cache: {exc.strerror or exc}") from None


def cached_date(path: Path) -> str | None:
    """When the cached catalogue was synced (None if absent or unreadable)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    v = raw.get("synced") if isinstance(raw, dict) else None
    return v if isinstance(v, str) else None


def check_api(api: str) -> str:
    parts = urllib.parse.urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"must be an http(s) URL, got {api!r}", field="api")
    return api
