"""Our MMDB reader against files written by mmdb_writer (and by hand), and the IP-geolocation checks."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geoprobe import ipgeo
from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.mmdb import METADATA_MARKER, MMDBError, Reader

# Public-looking ranges, only ever looked up in the file, never contacted.
FRANKFURT = {
    "country": {"iso_code": "DE", "names": {"en": "Germany"}},
    "location": {"latitude": 50.11, "longitude": 8.68, "accuracy_radius": 20},
    "city": {"names": {"en": "Frankfurt am Main"}},
}
TOKYO = {"country": {"iso_code": "JP"}, "location": {"latitude": 35.68, "longitude": 139.69}}
ODD = {"n": -5, "big": 2**70, "flag": True, "arr": ["x", 2.5, 7], "u": 70000}


def write_db(path: Path, ip_version: int) -> Path:
    w = MMDBWriter(
        ip_version=ip_version, database_type="GeoLite2-City", ipv4_compatible=ip_version == 6
    )
    w.insert_network(IPSet(["81.2.69.0/24"]), FRANKFURT)
    w.insert_network(IPSet(["126.0.0.0/9"]), TOKYO)
    w.insert_network(IPSet(["89.160.20.128/25"]), ODD)
    if ip_version == 6:
        w.insert_network(IPSet(["2a02:ff00::/24"]), {"country": {"iso_code": "FR"}})
    w.to_db_file(str(path))
    return path


@pytest.fixture(params=[4, 6])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_db(tmp_path / f"city{request.param}.mmdb", request.param)


def test_reader_finds_records_and_misses(db: Path) -> None:
    with Reader(db) as r:
        assert r.database_type == "GeoLite2-City"
        assert r.get("81.2.69.1") == FRANKFURT
        assert r.get("81.2.69.255") == FRANKFURT
        assert r.get("81.2.70.1") is None
        assert r.get("126.127.255.255") == TOKYO and r.get("126.128.0.0") is None
        assert r.get("89.160.20.129") == ODD and r.get("89.160.20.127") is None
        if r.ip_version == 6:
            assert r.get("2a02:ffaa::1") == {"country": {"iso_code": "FR"}}
        else:
            assert r.get("2a02:ffaa::1") is None
    with pytest.raises(InputError):
        Reader(db).get("not-an-ip")


def _enc(v: Any) -> bytes:
    """Minimal MMDB encoder (map, utf-8 string, uint16/uint32) for hand-made files."""

    def head(kind: int, size: int) -> bytes:
        assert size < 29
        return bytes([(kind << 5) | size]) if kind <= 7 else bytes([size, kind - 7])

    if isinstance(v, str):
        return head(2, len(v.encode())) + v.encode()
    if isinstance(v, int):
        raw = v.to_bytes(4, "big").lstrip(b"\0")
        return head(6, len(raw)) + raw
    if isinstance(v, dict):
        return head(7, len(v)) + b"".join(_enc(k) + _enc(x) for k, x in v.items())
    raise TypeError(v)


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_reader_handles_every_record_size(tmp_path: Path, record_size: int) -> None:
    """One node: addresses with the top bit 0 are empty, with the top bit 1 point to one record."""
    node_count = 1
    empty, data = node_count, node_count + 16  # data pointer to offset 0 of the data section
    if record_size == 24:
        node = empty.to_bytes(3, "big") + data.to_bytes(3, "big")
    elif record_size == 28:
        node = (
            empty.to_bytes(3, "big")
            + bytes([((empty >> 24) << 4) | (data >> 24)])
            + data.to_bytes(3, "big")
        )
    else:
        node = struct.pack(">II", empty, data)
    meta = {
        "node_count": node_count,
        "record_size": record_size,
        "ip_version": 4,
        "database_type": "Hand-City",
        "binary_format_major_version": 2,
    }
    path = tmp_path / "hand.mmdb"
    path.write_bytes(
        node + bytes(16) + _enc({"country": {"iso_code": "SE"}}) + METADATA_MARKER + _enc(meta)
    )
    with Reader(path) as r:
        assert r.get("200.1.2.3") == {"country": {"iso_code": "SE"}}
        assert r.get("100.1.2.3") is None


def test_not_a_database_is_a_one_line_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.mmdb"
    bad.write_bytes(b"hello" * 100)
    with pytest.raises(MMDBError, match="no metadata marker"):
        Reader(bad)
    with pytest.raises(InputError, match="cannot read"):
        Reader(tmp_path / "missing.mmdb")


def test_lookup_gives_position_and_country(db: Path) -> None:
    assert ipgeo.lookup(db, "81.2.69.7") == (50.11, 8.68, "DE")
    assert ipgeo.lookup(db, "89.160.20.200") is None  # a record without coordinates
    assert ipgeo.lookup(db, "10.0.0.1") is None


def lm(lid: str, lat: float, lon: float, country: str, address: str) -> Landmark:
    return Landmark(id=lid, lat=lat, lon=lon, country=country, address=address, icmp=True)


def test_landmark_claims_are_checked_against_their_address(db: Path) -> None:
    checks = {
        c.landmark_id: c
        for c in ipgeo.check_landmarks(
            db,
            [
                lm("honest", 50.0, 8.5, "DE", "81.2.69.10"),
                lm("liar", 50.0, 8.5, "DE", "126.1.2.3"),
                lm("loopback", 50.0, 8.5, "DE", "127.0.0.5"),
            ],
        )
    }
    assert checks["honest"].verdict == "agrees" and checks["honest"].distance_km is not None
    assert checks["honest"].distance_km < 30
    assert checks["liar"].verdict == "disagrees" and checks["liar"].geolocated == (
        35.68,
        139.69,
        "JP",
    )
    assert checks["loopback"].verdict == "unknown"


def test_prior_orders_nearest_landmarks_first() -> None:
    lms = [
        lm("tokyo", 35.7, 139.7, "JP", "126.0.0.1"),
        lm("paris", 48.9, 2.3, "FR", "81.2.69.1"),
        lm("frankfurt", 50.1, 8.7, "DE", "81.2.69.2"),
    ]
    assert [x.id for x in ipgeo.order_by_prior(lms, (50.0, 8.0, "DE"))] == [
        "frankfurt",
        "paris",
        "tokyo",
    ]
    assert ipgeo.order_by_prior(lms, None) == lms


@pytest.fixture(scope="module")
def frankfurt_fix() -> Fix:
    """A real sound-bound fix from three landmarks around Frankfurt."""
    from geoprobe.geo.countries import default_index
    from geoprobe.geo.solver import solve_model

    return solve_model(
        None,
        ["fra", "par", "ber"],
        np.array([50.11, 48.86, 52.52]),
        np.array([8.68, 2.35, 13.40]),
        {"fra": 1.5, "par": 6.0, "ber": 5.5},
        default_index(),
    )


def test_vm_address_in_the_measured_region_agrees(db: Path, frankfurt_fix: Fix) -> None:
    c = ipgeo.compare_with_fix("81.2.69.7", (50.11, 8.68, "DE"), frankfurt_fix)
    assert not c.disagrees and c.inside_sound_region and c.distance_km < 100


def test_vm_address_outside_the_region_is_reported(db: Path, frankfurt_fix: Fix) -> None:
    c = ipgeo.compare_with_fix("126.1.1.1", (35.68, 139.69, "JP"), frankfurt_fix)
    assert c.disagrees and not c.inside_sound_region
    assert "126.1.1.1" in c.note and "JP" in c.note and c.distance_km > 9000


def test_cross_check_for_locate(db: Path, frankfurt_fix: Fix) -> None:
    cat = Catalogue(
        landmarks=[lm("liar", 50.0, 8.5, "DE", "126.1.2.3"), lm("ok", 50.1, 8.6, "DE", "81.2.69.3")]
    )
    out = ipgeo.cross_check(frankfurt_fix, cat, db, public_ip="126.9.9.9")
    assert out["landmarks_checked"] == 2
    assert [c["landmark_id"] for c in out["landmarks_disagreeing"]] == ["liar"]
    assert out["vm"]["disagrees"] is True and len(out["notes"]) == 2
    quiet = ipgeo.cross_check(frankfurt_fix, Catalogue(landmarks=[]), db, public_ip="81.2.69.9")
    assert quiet["vm"]["disagrees"] is False and quiet["landmarks_disagreeing"] == []


def test_default_database_from_environment(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.setenv("GEOPROBE_MMDB", str(db))
    assert ipgeo.default_mmdb() == db
