"""IP geolocation (GeoLite2 / DB-IP City) as a registration claim, set beside what physics measures.

Three uses:

- a coarse prior: probe the landmarks nearest the IP-geolocated position first (``order_by_prior``);
- a check of each landmark's claimed location against where its address geolocates
  (``check_landmarks``): a big disagreement flags a catalogue entry to look at (or a stale
  database);
- a report when the VM's own public address geolocates outside the measured region
  (``compare_with_fix``): the provider's registration says one thing, the RTTs another.

IP geolocation is never evidence of location here: it is a claim the measurement can contradict.

The database is read through ``geoip2`` over ``maxminddb``. From maxminddb 3.2 (and the
libmaxminddb 1.14 its wheels carry) both of its readers apply the format's resource limits: 65,536
values, 512 levels of nesting and 2 MiB of strings per lookup, and pointer loops and sizes past the
end are refused, so a corrupt or hostile file costs milliseconds, not gigabytes
(benchmarks/ipgeo_hostile.py). This module turns what those libraries raise into
:class:`IPGeoError`, one line naming the file:

- the file cannot be opened (missing, unreadable): ``cannot read``;
- it is not a MaxMind DB, or its data section is corrupt (``maxminddb.InvalidDatabaseError``, at
  open or at lookup): ``not a valid MaxMind DB``;
- it is not a City database (``geoip2`` refuses a Country or ASN file for ``city()``):
  field ``database_type``;
- a record whose fields do not have the City layout (``geoip2`` cannot build its model, or the
  coordinates are not numbers on the globe): field ``location``.

An address the database does not hold, or an IPv6 address in an IPv4-only database, is no claim:
``lookup`` returns None.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, Landmark

#: Where distributions and geoipupdate put the databases; ``$GEOPROBE_MMDB`` comes first.
STANDARD_DIRS = (
    Path("/usr/share/GeoIP"),
    Path("/var/lib/GeoIP"),
    Path("/usr/local/share/GeoIP"),
    Path("/usr/share/dbip"),
)
STANDARD_NAMES = (
    "GeoLite2-City.mmdb",
    "GeoIP2-City.mmdb",
    "dbip-city-lite*.mmdb",
    "dbip-city*.mmdb",
)
#: A landmark whose address geolocates farther than this from its claimed place is flagged (km).
LANDMARK_TOLERANCE_KM = 500.0

Position = tuple[float, float, str | None]


#: How maxminddb opens a file: its C extension over mmap where installed, else pure Python.
READER_MODE = maxminddb.MODE_AUTO


class IPGeoError(InputError):
    """The IP geolocation database cannot be used; the message names the file."""


def default_mmdb() -> Path | None:
    """The first City database found: ``$GEOPROBE_MMDB``, then the standard paths."""
    env = os.environ.get("GEOPROBE_MMDB")
    if env:
        return Path(env)
    for d in STANDARD_DIRS:
        for pattern in STANDARD_NAMES:
            found = sorted(d.glob(pattern)) if d.is_dir() else []
            if found:
                return found[-1]
    return None


def _invalid(path: str, exc: BaseException) -> IPGeoError:
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return IPGeoError(f"not a valid MaxMind DB ({why})", file=path)


@lru_cache(maxsize=4)
def open_database(path: str) -> geoip2.database.Reader:
    """A City reader for ``path`` (kept open: lookups for one catalogue reuse it)."""
    try:
        reader = geoip2.database.Reader(path, mode=READER_MODE)
    except OSError as exc:
        raise IPGeoError(f"cannot read: {exc.strerror or exc}", file=path) from None
    except (maxminddb.InvalidDatabaseError, ValueError, TypeError, KeyError) as exc:
        raise _invalid(path, exc) from None
    kind = reader.metadata().database_type
    if "City" not in str(kind):
        reader.close()
        raise IPGeoError(
            f"is a {kind!r} database; IP geolocation needs a City database "
            "(GeoLite2-City, GeoIP2-City or DB-IP City)",
            file=path,
            field="database_type",
        )
    return reader


def _coordinate(value: Any, limit: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    v = float(value)
    if not math.isfinite(v) or abs(v) > limit:
        raise ValueError(f"{v} is outside +-{limit:g}")
    return v


def lookup(path: str | Path, ip: str) -> Position | None:
    """Where the database puts ``ip``: (lat, lon, country), or None when it holds no place."""
    name = str(path)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise InputError(f"not an IP address: {ip!r}", file=name, field="address") from None
    reader = open_database(name)
    try:
        city = reader.city(address)
    except geoip2.errors.AddressNotFoundError:
        return None
    except maxminddb.InvalidDatabaseError as exc:
        raise _invalid(name, exc) from None
    except ValueError as exc:
        if address.version == 6 and reader.metadata().ip_version == 4:
            return None  # an IPv4-only database holds no claim about IPv6 addresses
        raise _invalid(name, exc) from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise IPGeoError(
            f"the record for {ip} does not have the City layout ({exc})",
            file=name,
            field="location",
        ) from None
    try:
        lat = _coordinate(city.location.latitude, 90.0)
        lon = _coordinate(city.location.longitude, 180.0)
    except (TypeError, ValueError) as exc:
        raise IPGeoError(f"the record for {ip}: {exc}", file=name, field="location") from None
    if lat is None or lon is None:
        return None
    iso = city.country.iso_code or city.registered_country.iso_code
    return lat, lon, iso if isinstance(iso, str) else None


def order_by_prior(landmarks: Sequence[Landmark], prior: Position | None) -> list[Landmark]:
    """Nearest landmarks to the prior first: a partial or rate-capped run starts where it counts."""
    if prior is None:
        return list(landmarks)
    lat, lon, _ = prior
    return sorted(landmarks, key=lambda lm: float(haversine_km(lat, lon, lm.lat, lm.lon)))


@dataclass(frozen=True, slots=True)
class LandmarkCheck:
    landmark_id: str
    address: str | None
    claimed: tuple[float, float]
    geolocated: Position | None
    distance_km: float | None
    verdict: str  # "agrees", "disagrees", "unknown"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _public(address: str | None) -> bool:
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def check_landmarks(
    path: str | Path, landmarks: Iterable[Landmark], *, tolerance_km: float = LANDMARK_TOLERANCE_KM
) -> list[LandmarkCheck]:
    """Each landmark's claimed place against where its address geolocates (public addresses
    only)."""
    out: list[LandmarkCheck] = []
    for lm in landmarks:
        geo = lookup(path, lm.address) if _public(lm.address) and lm.address else None
        if geo is None:
            out.append(LandmarkCheck(lm.id, lm.address, (lm.lat, lm.lon), None, None, "unknown"))
            continue
        km = float(haversine_km(lm.lat, lm.lon, geo[0], geo[1]))
        country_clash = bool(lm.country and geo[2] and lm.country != geo[2])
        verdict = (
            "disagrees"
            if km > tolerance_km or (country_clash and km > tolerance_km / 5)
            else "agrees"
        )
        out.append(LandmarkCheck(lm.id, lm.address, (lm.lat, lm.lon), geo, round(km, 1), verdict))
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    ip: str
    geolocated: Position
    distance_km: float
    inside_region: bool
    inside_sound_region: bool
    country_probability: float | None
    disagrees: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_with_fix(ip: str, geo: Position, fix: Fix) -> Comparison:
    """Set the IP-geolocated position beside the measured fix.

    It disagrees when it lies outside the *sound* region (no added delay can explain that away)
    or when its country gets (almost) no probability from the measurement.
    """
    lat, lon, country = geo
    km = float(haversine_km(lat, lon, fix.lat, fix.lon))
    in_region = bool(fix.region is not None and fix.region.contains(lat, lon))
    in_sound = (
        bool(fix.sound_region.contains(lat, lon)) if fix.sound_region is not None else in_region
    )
    p = fix.probability_in({country}) if country else None
    disagrees = not in_sound or (p is not None and p < 0.01)
    where = f"{country or '??'} ({lat:.2f}, {lon:.2f})"
    if disagrees:
        why = (
            "outside the region the RTTs allow"
            if not in_sound
            else f"in a country the RTTs give {p:.0%}"
        )
        note = (
            f"the VM's address {ip} geolocates to {where}, {km:.0f} km from the measured "
            "position and "
            f"{why}: the registration claims one place, physics says another"
        )
    else:
        note = (
            f"the VM's address {ip} geolocates to {where}, consistent with the measurement "
            f"({km:.0f} km off)"
        )
    return Comparison(ip, geo, round(km, 1), in_region, in_sound, p, disagrees, note)


def local_address_towards(target: str) -> str | None:
    """The source address the kernel would use towards ``target`` (a UDP connect sends nothing)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return str(s.getsockname()[0])
    except (OSError, ValueError):
        return None


def cross_check(
    fix: Fix, cat: Catalogue, mmdb: str | Path | None = None, *, public_ip: str | None = None
) -> dict[str, Any]:
    """What ``geoprobe locate --mmdb`` reports: landmark checks and the VM's own address, with
    notes."""
    path = Path(mmdb) if mmdb is not None else default_mmdb()
    notes: list[str] = []
    if path is None:
        return {
            "database": None,
            "notes": ["no GeoLite2/DB-IP City database found; pass --mmdb FILE"],
        }
    reader = open_database(str(path))
    checks = check_landmarks(path, cat.landmarks)
    bad = [c for c in checks if c.verdict == "disagrees"]
    for c in bad:
        g = c.geolocated
        assert g is not None
        notes.append(
            f"landmark {c.landmark_id} ({c.address}) claims "
            f"({c.claimed[0]:.2f}, {c.claimed[1]:.2f}) but geolocates to {g[2] or '??'} "
            f"({g[0]:.2f}, {g[1]:.2f}), {c.distance_km:.0f} km away"
        )
    ip = public_ip
    if ip is None:
        target = next((lm.address for lm in cat.landmarks if lm.address), None)
        ip = local_address_towards(target) if target else None
    vm: dict[str, Any] | None = None
    if ip is None or not _public(ip):
        notes.append(
            f"this VM's public address is unknown ({ip or 'no route'} is not public); "
            "no registration claim to compare"
        )
    else:
        geo = lookup(path, ip)
        if geo is None:
            notes.append(f"the database has no location for this VM's address {ip}")
        else:
            cmp = compare_with_fix(ip, geo, fix)
            vm = cmp.to_json()
            notes.append(cmp.note)
    return {
        "database": str(path),
        "database_type": reader.metadata().database_type,
        "landmarks_checked": sum(c.verdict != "unknown" for c in checks),
        "landmarks_disagreeing": [c.to_json() for c in bad],
        "vm": vm,
        "notes": notes,
    }


def nearest_first_hint(path: str | Path, ip: str, landmarks: Sequence[Landmark]) -> list[Landmark]:
    """Convenience for probing: the landmarks ordered by distance from where ``ip`` geolocates."""
    return order_by_prior(landmarks, lookup(path, ip))
