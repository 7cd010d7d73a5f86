"""The one typed migration event: what crossing and p_allowed mean, and reading any event back."""

from __future__ import annotations

from typing import Any

import pytest
from fuzz.hostile import FUZZ, VALUES, mutate_json
from hypothesis import given
from hypothesis import strategies as st

from geoprobe import events
from geoprobe.defend import verdict_of
from geoprobe.migration import Migration, crossing_of
from geoprobe.policy import parse_policy


def migration(**kw: Any) -> Migration:
    base: dict[str, Any] = {
        "crossing": True,
        "frm": "DE",
        "to": "ES",
        "jurisdiction": {"verdict": "outside", "rule": "certified", "p_allowed": 0.0},
        "landmarks": 40,
        "source": "watch",
        "signals": ("rtt_fingerprint", "clock_offset"),
        "distance_km": 1450.3,
        "reasons": ("sound region certified in ES",),
        "extra": {"rounds": 2},
    }
    base.update(kw)
    return Migration(**base)


@pytest.mark.parametrize(
    ("verdict", "before", "crossing"),
    [
        ("outside", False, True),
        ("inside", False, False),
        ("straddles", False, None),
        ("outside", True, False),
        ("inside", True, False),
        ("straddles", True, False),
    ],
)
def test_crossing_has_one_meaning(verdict: str, before: bool, crossing: bool | None) -> None:
    assert crossing_of(verdict, outside_before=before) is crossing


def test_p_allowed_is_the_probability_of_being_allowed_and_proof_is_named() -> None:
    m = migration(jurisdiction={"verdict": "outside", "rule": "probability", "p_allowed": 0.07})
    d = m.to_data()
    assert d["p_allowed"] == d["jurisdiction"]["p_allowed"] == 0.07 and d["proof"] is False
    assert m.crossing_confidence() == pytest.approx(0.93)
    assert m.policy_verdict(0.9, 3) == "confirmed_crossing"
    assert m.policy_verdict(0.95, 3) == "unknown"
    proof = migration(jurisdiction={"verdict": "outside", "rule": "sound", "p_allowed": 0.4})
    assert (
        proof.to_data()["proof"] is True and proof.policy_verdict(0.99, 3) == "confirmed_crossing"
    )
    assert migration(landmarks=2).policy_verdict(0.9, 3) == "unknown"
    assert migration(crossing=None).policy_verdict(0.9, 3) == "unknown"
    assert migration(crossing=False).policy_verdict(0.9, 3) is None


def test_an_event_reads_back_as_it_was_written() -> None:
    m = migration()
    ev = m.to_event()
    assert ev["type"] == events.CONFIRMED
    back = Migration.from_data(ev["data"])
    assert back == m and back.to_data() == ev["data"]


@FUZZ
@given(mutate_json(migration().to_data()))
def test_any_confirmed_event_data_reads_without_a_traceback(data: Any) -> None:
    m = Migration.from_data(data if isinstance(data, dict) else {})
    assert m.crossing in (True, False, None)
    assert m.policy_verdict(0.9, 3) in (None, "unknown", "confirmed_crossing")
    ev = events.make_event(events.CONFIRMED, data if isinstance(data, dict) else {})
    pol = parse_policy({"confidence": {"min_probability": 0.9}})
    assert verdict_of(ev, pol) in (None, "unknown", "confirmed_crossing")


@FUZZ
@given(st.dictionaries(st.text(max_size=12), VALUES, max_size=8))
def test_arbitrary_data_reads_without_a_traceback(data: dict[str, Any]) -> None:
    m = Migration.from_data(data)
    m.to_data()
    assert m.policy_verdict(0.9, 3) in (None, "unknown", "confirmed_crossing")


@pytest.mark.parametrize(
    ("rule", "crossing"), [("certified", True), ("sound", True), ("probability", None)]
)
def test_a_crossing_found_by_the_verdict_alone_needs_a_proof(
    rule: str, crossing: bool | None
) -> None:
    from geoprobe.migration import crossing_found_outside

    assert crossing_found_outside(rule) is crossing
