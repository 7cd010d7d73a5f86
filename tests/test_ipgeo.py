"""IP geolocation through geoip2: files written by mmdb_writer, by hand, hostile and mutated."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import maxminddb
import mmdb_files
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geoprobe import ipgeo
from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Catalogue, Landmark

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


def test_lookup_finds_records_and_misses(db: Path) -> None:
    assert ipgeo.lookup(db, "81.2.69.1") == (50.11, 8.68, "DE")
    assert ipgeo.lookup(db, "81.2.69.255") == (50.11, 8.68, "DE")
    assert ipgeo.lookup(db, "81.2.70.1") is None
    assert ipgeo.lookup(db, "126.127.255.255") == (35.68, 139.69, "JP")
    assert ipgeo.lookup(db, "126.128.0.0") is None
    assert ipgeo.lookup(db, "89.160.20.127") is None
    # a v6 range with a country but no coordinates; an IPv4 database holds no IPv6 claim
    assert ipgeo.lookup(db, "2a02:ffaa::1") is None
    with pytest.raises(InputError, match="not an IP address"):
        ipgeo.lookup(db, "not-an-ip")


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_every_record_size(tmp_path: Path, record_size: int) -> None:
    """One search node: the lower half of IPv4 is empty, the upper half holds one record."""
    path = tmp_path / "hand.mmdb"
    path.write_bytes(
        mmdb_files.database(mmdb_files.city("SE", 59.33, 18.07), record_size=record_size)
    )
    assert ipgeo.lookup(path, "200.1.2.3") == (59.33, 18.07, "SE")
    assert ipgeo.lookup(path, "100.1.2.3") is None


HOSTILE = {
    "pointer loop": mmdb_files.pointer_loop,
    "nesting 2000 deep": mmdb_files.nested,
    "string past the end": mmdb_files.oversized_string,
    "pointer amplification 16^7": mmdb_files.amplification,
}


@pytest.mark.parametrize("reader", ["extension", "pure Python"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_database_is_one_line_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, reader: str
) -> None:
    """Files of a few hundred bytes that a naive decoder follows forever or into gigabytes, read
    by maxminddb's C extension and by its pure-Python reader (where the extension is missing)."""
    if reader == "pure Python":
        monkeypatch.setattr(ipgeo, "READER_MODE", maxminddb.MODE_FILE)
    valid = tmp_path / "valid.mmdb"
    valid.write_bytes(mmdb_files.database(mmdb_files.city("SE", 59.33, 18.07)))
    assert ipgeo.lookup(valid, "200.1.2.3") == (59.33, 18.07, "SE")  # the reader works
    path = tmp_path / "hostile.mmdb"
    path.write_bytes(HOSTILE[name]())
    assert path.stat().st_size < 5000
    with pytest.raises(ipgeo.IPGeoError) as err:
        ipgeo.lookup(path, "200.1.2.3")
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a valid MaxMind DB") and "\n" not in msg


def test_not_a_database_or_not_a_city_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(ipgeo.IPGeoError, match=r"junk\.mmdb: not a valid MaxMind DB"):
        ipgeo.lookup(junk, "200.1.2.3")
    with pytest.raises(ipgeo.IPGeoError, match="missing.mmdb: cannot read"):
        ipgeo.lookup(tmp_path / "missing.mmdb", "200.1.2.3")
    asn = tmp_path / "asn.mmdb"
    asn.write_bytes(
        mmdb_files.database(
            mmdb_files.encode({"autonomous_system_number": 64500}),
            meta={"database_type": "GeoLite2-ASN"},
        )
    )
    with pytest.raises(ipgeo.IPGeoError, match="field 'database_type'.*City database"):
        ipgeo.lookup(asn, "200.1.2.3")


@pytest.mark.parametrize(
    "record",
    [
        {"location": {"latitude": "north", "longitude": 8.0}},
        {"location": {"latitude": 95.0, "longitude": 8.0}},
        {"location": ["not", "a", "map"]},
        {"ip_address": "clash", "location": {"latitude": 1.0, "longitude": 2.0}},
    ],
)
def test_record_without_the_city_layout_names_the_field(
    tmp_path: Path, record: dict[str, Any]
) -> None:
    path = tmp_path / "odd.mmdb"
    path.write_bytes(mmdb_files.database(mmdb_files.encode(record)))
    with pytest.raises(ipgeo.IPGeoError, match=r"odd\.mmdb: field 'location'"):
        ipgeo.lookup(path, "200.1.2.3")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_databases_never_escape_as_a_traceback(data: st.DataObject) -> None:
    """Random byte changes to a valid file: a position, a one-line IPGeoError, or nothing."""
    raw = bytearray(MUTABLE)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.mmdb"
        path.write_bytes(bytes(raw[:cut]))
        ipgeo.open_database.cache_clear()
        try:
            got = ipgeo.lookup(path, data.draw(st.sampled_from(["200.1.2.3", "81.2.69.7"])))
        except ipgeo.IPGeoError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
        else:
            assert got is None or (abs(got[0]) <= 90 and abs(got[1]) <= 180)
        finally:
            ipgeo.open_database.cache_clear()


MUTABLE = mmdb_files.database(mmdb_files.city("SE", 59.33, 18.07))


def test_lookup_gives_position_and_country(db: Path) -> None:
    assert ipgeo.lookup(db, "81.2.69.7") == (50.11, 8.68, "DE")
    assert ipgeo.lookup(db, "89.160.20.200") is None  # a record without coordinates
    assert ipgeo.lookup(db, "10.0.0.1") is None
    if ipgeo.open_database(str(db)).metadata().ip_version == 6:
        assert ipgeo.lookup(db, "2a02:ff00::1") is None  # a country, no coordinates


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
