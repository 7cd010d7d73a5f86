from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoprobe.errors import InputError
from geoprobe.measurement import Measurement, load_measurements, min_rtts, save_measurements


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
