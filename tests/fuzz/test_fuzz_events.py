"""The event-file reader on hostile input: an event envelope or one InputError line."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ, mutate_json, raw_text
from fuzz.samples import dumps, event_doc
from geoprobe.defend import verdict_of
from geoprobe.errors import InputError
from geoprobe.events import parse_event, read_event
from geoprobe.policy import load_policy

GOOD = event_doc()


def _check(ev: dict[str, Any]) -> None:
    assert isinstance(ev["id"], str) and ev["id"] and isinstance(ev["type"], str)
    assert ev.get("data") is None or isinstance(ev["data"], dict)
    verdict_of(ev)  # what the policy does first with an event


@FUZZ
@given(mutate_json(GOOD))
def test_mutated_events(doc: Any) -> None:
    try:
        ev = parse_event(dumps(doc), file="ev.json")
    except InputError as exc:
        assert str(exc).startswith("ev.json") and "\n" not in str(exc)
        return
    _check(ev)


@FUZZ
@given(
    raw_text(dumps(GOOD))
    | st.lists(raw_text(dumps(GOOD)), min_size=2, max_size=4).map(b"\n".join)
    | st.binary(max_size=500)
)
def test_event_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "events.jsonl"
        p.write_bytes(data)
        try:
            ev = read_event(p)
        except InputError as exc:
            assert str(exc).startswith(str(p)) and "\n" not in str(exc)
            return
        _check(ev)


def test_policy_verdict_of_a_loaded_event(tmp_path: Path) -> None:
    from fuzz.samples import POLICY

    p = tmp_path / "policy.toml"
    p.write_text(POLICY)
    e = tmp_path / "ev.json"
    e.write_text(dumps(GOOD))
    assert verdict_of(read_event(e), load_policy(p)) == "confirmed_crossing"
