from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoprobe.errors import InputError
from geoprobe.measurement import (
    Measurement,
    load_measurements,
    min_rtts,
    rejected_totals,
    save_measurements,
)


def test_save_and_replay_round_trip(tmp_path: Path) -> None:
    ms = [
        Measurement("a", "udp", "127.0.0.2", [5.2, 4.9, 5.0], sent=3, evidence=[{"sig": "x"}]),
        Measurement("b", "udp", "127.0.0.3", [], sent=3, failure="timeout"),
    ]
    p = tmp_path / "m.json"
    save_measurements(p, ms, catalogue="cat.json")
    back, meta = load_measurements(p)
    assert meta["catalogue"] == "cat.json"
    assert [m.landmark_id for m in back] == ["a", "b"]
    assert back[0].rtts_ms == [5.2, 4.9, 5.0] and back[0].evidence == [{"sig": "x"}]
    assert back[1].failure == "timeout" and back[1].sent == 3 and not back[1].ok
    assert min_rtts(back) == {"a": 4.9}


def test_ripe_shape() -> None:
    rec = Measurement("a", "icmp", "127.0.0.2", [1.0, 3.0], sent=3).to_json()
    assert rec["type"] == "ping" and rec["proto"] == "ICMP"
    assert rec["min"] == 1.0 and rec["max"] == 3.0 and rec["avg"] == 2.0
    assert rec["rcvd"] == 2 and rec["result"] == [{"rtt": 1.0}, {"rtt": 3.0}, {"x": "*"}]


@pytest.mark.parametrize("bad", [-1, "fast", float("nan"), True])
def test_bad_rtt_names_entry_and_field(tmp_path: Path, bad: object) -> None:
    p = tmp_path / "m.json"
    p.write_text(
        json.dumps({"results": [{"landmark_id": "a", "result": [{"rtt": bad}]}]}).replace(
            "NaN", "NaN"
        )
    )
    with pytest.raises(InputError) as exc:
        load_measurements(p)
    assert str(p) in str(exc.value) and "result[0].rtt" in str(exc.value)


@pytest.mark.parametrize(
    "field,bad", [("sent_at", ["soon"]), ("clock_offsets_ms", [float("inf")]), ("sent_at", 5)]
)
def test_bad_per_sample_lists_name_the_field(tmp_path: Path, field: str, bad: object) -> None:
    p = tmp_path / "m.json"
    p.write_text(
        json.dumps({"results": [{"landmark_id": "a", "result": [{"rtt": 1.0}], field: bad}]})
    )
    with pytest.raises(InputError) as exc:
        load_measurements(p)
    assert str(p) in str(exc.value) and field in str(exc.value)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("method", ["udp"]),
        ("method", {"udp": 1}),
        ("proto", 7),
        ("dst_addr", 127),
        ("failure", ["timeout"]),
        ("path", {"a": 1}),
        ("evidence", "abc"),
        ("evidence", [1, 2]),
        ("evidence", 5),
        ("rejected", [1]),
        ("rejected", {"forged": "many"}),
        ("rejected", {"forged": -1}),
        ("timestamp", 10**400),
        ("timestamp", "today"),
        ("sent", 10**400),
        ("sent", 2.5),
        ("result", {"rtt": 1}),
        ("sent_at", [10**400]),
    ],
)
def test_wrong_types_name_the_field(tmp_path: Path, field: str, bad: object) -> None:
    p = tmp_path / "m.json"
    rec: dict[str, object] = {"landmark_id": "a", "result": [{"rtt": 1.0}]}
    rec[field] = bad
    if field == "proto":
        rec.pop("method", None)
    p.write_text(json.dumps({"results": [rec]}))
    with pytest.raises(InputError) as exc:
        load_measurements(p)
    assert str(p) in str(exc.value) and f"field '{field}" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1 and len(str(exc.value)) < 300


def test_sent_is_bounded_by_the_file(tmp_path: Path) -> None:
    """A 50 KB file cannot claim a hundred million packets: replaying it would allocate for each."""
    rec = {"landmark_id": "a", "result": [{"rtt": 1.0}] * 3000, "sent": 100_000_000}
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"results": [rec]}))
    assert p.stat().st_size > 30_000
    with pytest.raises(InputError) as exc:
        load_measurements(p)
    assert "'sent'" in str(exc.value) and "3000" in str(exc.value)
    rec["sent"] = 3000
    p.write_text(json.dumps({"results": [rec]}))
    [m], _ = load_measurements(p)
    assert m.sent == 3000 and len(m.to_json()["result"]) == 3000


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xfe[]", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'[{"landmark_id": "a", "sent": ' + b"9" * 5000 + b"}]", "not acceptable JSON"),
        (b'{"results": [], "format": "other"}', "unsupported format"),
    ],
)
def test_hostile_files_are_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "m.json"
    p.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_measurements(p)
    assert str(exc.value).startswith(str(p)) and reason in str(exc.value)


def test_rejected_totals_sum_every_landmark() -> None:
    ms = [
        Measurement("a", "udp", rejected={"bad signature": 2, "replayed": 1}),
        Measurement("b", "udp", rejected={"bad signature": 3}),
        Measurement("c", "udp"),
    ]
    assert rejected_totals(ms) == {"bad signature": 5, "replayed": 1}
    assert rejected_totals([]) == {}
