from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest

from geoprobe.errors import InputError
from geoprobe.landmarks import Catalogue, Landmark, load_catalogue, parse_catalogue, rtt_matrix

KEY = base64.b64encode(bytes(range(32))).decode()


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "fra",
        "lat": 50.11,
        "lon": 8.68,
        "country": "DE",
        "address": "127.0.0.2",
        "methods": {"udp": 7207, "tcp": 443},
        "pubkey": KEY,
    }
    base.update(over)
    return base


def write(tmp_path: Path, doc: Any) -> Path:
    p = tmp_path / "cat.json"
    p.write_text(json.dumps(doc))
    return p


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    cat = parse_catalogue(
        {
            "landmarks": [
                entry(),
                entry(
                    id="ams",
                    lat=52.37,
                    lon=4.9,
                    country="NL",
                    address="127.0.0.3",
                    pubkey=None,
                    methods={"icmp": True},
                ),
            ],
            "calibration": {"rtts": [["fra", "ams", 7.5]]},
        }
    )
    out = tmp_path / "out.json"
    cat.save(out)
    again = load_catalogue(out)
    assert again.landmarks == cat.landmarks
    assert again.rtts == [("fra", "ams", 7.5)]
    fra = again.by_id()["fra"]
    assert fra.pubkey == bytes(range(32)) and fra.supports("udp") and fra.supports("tcp")
    assert not fra.supports("icmp") and again.by_id()["ams"].supports("icmp")
    assert again.calibrated


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"lat": 91}, "lat"),
        ({"lon": "east"}, "lon"),
        ({"lat": float("nan")}, "lat"),
        ({"country": "Germany"}, "country"),
        ({"address": "300.1.1.1"}, "address"),
        ({"methods": {"udp": 70000}}, "methods.udp"),
        ({"methods": {"carrier-pigeon": 1}}, "methods.carrier-pigeon"),
        ({"pubkey": "not base64!"}, "pubkey"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_entry_names_file_entry_and_field(
    tmp_path: Path, over: dict[str, Any], field: str
) -> None:
    p = write(tmp_path, {"landmarks": [entry(**over)]})
    with pytest.raises(InputError) as exc:
        load_catalogue(p)
    msg = str(exc.value)
    assert str(p) in msg and "entry fra" in msg and repr(field) in msg
    assert "\n" not in msg


def test_missing_address_and_host_is_rejected(tmp_path: Path) -> None:
    e = entry()
    del e["address"]
    with pytest.raises(InputError, match="needs an address or a host"):
        load_catalogue(write(tmp_path, {"landmarks": [e]}))


def test_duplicate_ids_and_unknown_calibration_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="duplicate id"):
        load_catalogue(write(tmp_path, {"landmarks": [entry(), entry()]}))
    with pytest.raises(InputError, match="unknown landmark"):
        load_catalogue(
            write(tmp_path, {"landmarks": [entry()], "calibration": {"rtts": [["fra", "nyc", 80]]}})
        )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_catalogue(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"landmarks": [')
    with pytest.raises(InputError, match="not valid JSON"):
        load_catalogue(bad)


def test_rtt_matrix_takes_minimum_and_symmetrises() -> None:
    lms = [Landmark(id=i, lat=0, lon=0, address="127.0.0.1") for i in "abc"]
    cat = Catalogue(
        landmarks=lms, rtts=[("a", "b", 10.0), ("a", "b", 8.0), ("b", "c", 5.0), ("c", "b", 6.0)]
    )
    order, m = rtt_matrix(cat)
    i = {k: n for n, k in enumerate(order)}
    assert m[i["a"], i["b"]] == 8.0 and m[i["b"], i["a"]] == 8.0  # one direction given: symmetric
    assert m[i["b"], i["c"]] == 5.0 and m[i["c"], i["b"]] == 6.0  # both given: kept apart
    assert math.isnan(m[i["a"], i["c"]])


def test_landmark_count_is_capped_before_anything_is_fitted(tmp_path: Path) -> None:
    from geoprobe.landmarks import MAX_LANDMARKS

    entries = [
        {"id": f"l{i}", "lat": 0, "lon": 0, "address": "127.0.0.1"}
        for i in range(MAX_LANDMARKS + 1)
    ]
    p = tmp_path / "cat.json"
    p.write_text(json.dumps({"landmarks": entries}))
    with pytest.raises(InputError) as exc:
        load_catalogue(p)
    assert str(exc.value).startswith(str(p)) and "'landmarks'" in str(exc.value)
    p.write_text(json.dumps({"landmarks": entries[:MAX_LANDMARKS]}))
    assert len(load_catalogue(p)) == MAX_LANDMARKS


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"landmarks": [], "name": "caf\xe9"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        (b'{"landmarks": [{"id": "a", "lat": ' + b"9" * 5000 + b"}]}", "not acceptable JSON"),
        (b'{"landmarks": [{"id": "a", "lat": ' + b"9" * 400 + b', "lon": 0}]}', "'lat'"),
        (b'{"landmarks": [{"id": ["a"], "lat": 0, "lon": 0}]}', "'id'"),
        (b'{"landmarks": [{"id": {"a": 1}, "lat": 0, "lon": 0}]}', "'id'"),
        (b'{"landmarks": [{"id": "a", "lat": [1], "lon": 0}]}', "'lat'"),
        (b'{"landmarks": [{"id": "a", "lat": 0, "lon": {"e": 1}}]}', "'lon'"),
        (b'{"landmarks": [{"id": "a", "lat": 0, "lon": 0, "address": ["::1"]}]}', "'address'"),
        (
            (
                b'{"landmarks": [{"id": "a", "lat": 0, "lon": 0, "host": "h", '
                b'"methods": {"udp": [1]}}]}'
            ),
            "'methods.udp'",
        ),
        (b'{"landmarks": {"a": 1}}', "'landmarks'"),
        (b'{"landmarks": [], "calibration": {"rtts": [[1, 2]]}}', "calibration.rtts[0]"),
    ],
)
def test_hostile_catalogues_are_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "cat.json"
    p.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_catalogue(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and reason in msg and "\n" not in msg and len(msg) < 300
