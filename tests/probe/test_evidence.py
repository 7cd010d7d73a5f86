"""Offline re-verification of signed replies."""

from __future__ import annotations

import base64
import copy
import dataclasses
from typing import Any

import pytest
from loopback_world import World

from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe import keys, measure
from geoprobe.probe.evidence import verify_measurements, verify_record


@pytest.fixture
def measured(world: World) -> tuple[Landmark, Measurement]:
    lm, _ = world.landmark("aud", 47.37, 8.54)
    [m] = measure([lm], "udp", samples=3)
    assert len(m.evidence) == 3
    return lm, m


def _flip(b64: str, pos: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[pos] ^= 0x40
    return base64.b64encode(bytes(raw)).decode()


def test_good_evidence_verifies(measured: tuple[Landmark, Measurement]) -> None:
    lm, m = measured
    assert verify_measurements([m], {lm.id: lm}) == (3, [])


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda r: r.update(reply=_flip(r["reply"], 44)), "bad signature"),  # t_recv altered
        (lambda r: r.update(reply=_flip(r["reply"], 60)), "bad signature"),  # latitude altered
        (lambda r: r.update(nonce=base64.b64encode(b"\0" * 32).decode()), "another nonce"),
        (lambda r: r.update(rtt_ms=r["rtt_ms"] - 1.0), "does not follow"),
        (lambda r: r.update(t1_ns=r["t1_ns"] - 5_000_000), "does not follow"),
        (lambda r: r.update(reply="!!!"), "not base64"),
        (lambda r: r.pop("nonce"), "missing"),
        (lambda r: r.update(reply=base64.b64encode(b"short").decode()), "does not decode"),
    ],
)
def test_tampered_evidence_is_caught(
    measured: tuple[Landmark, Measurement], tamper: Any, reason: str
) -> None:
    lm, m = measured
    bad = copy.deepcopy(m)
    tamper(bad.evidence[1])
    checked, problems = verify_measurements([bad], {lm.id: lm})
    assert checked == 3
    reasons = [p.reason for p in problems if p.index == 1]
    assert len(reasons) == 1 and reason in reasons[0]
    assert all(p.index in (1, -1) for p in problems)


def test_duplicated_evidence_is_a_replay(measured: tuple[Landmark, Measurement]) -> None:
    lm, m = measured
    bad = copy.deepcopy(m)
    bad.evidence.append(copy.deepcopy(bad.evidence[0]))
    _, problems = verify_measurements([bad], {lm.id: lm})
    assert [(p.index, p.reason) for p in problems] == [(3, "nonce used twice (replayed reply)")]


def test_rtt_without_evidence_is_reported(measured: tuple[Landmark, Measurement]) -> None:
    lm, m = measured
    bad = copy.deepcopy(m)
    bad.rtts_ms[0] = 0.001  # a smaller RTT than any signed reply supports
    _, problems = verify_measurements([bad], {lm.id: lm})
    assert len(problems) == 1 and problems[0].index == -1 and "not backed" in problems[0].reason
    assert str(problems[0]).startswith("aud: measurement: RTT 0.001 ms")


def test_catalogue_disagreement(measured: tuple[Landmark, Measurement]) -> None:
    lm, m = measured
    moved = dataclasses.replace(lm, lat=lm.lat + 0.5)
    other_key = keys.public_raw(keys.generate())
    rekeyed = dataclasses.replace(lm, pubkey=other_key, key_id=keys.key_id(other_key))
    assert verify_record(m.evidence[0], moved) == "location mismatch"
    assert verify_record(m.evidence[0], rekeyed) == "bad signature"
    assert verify_record(m.evidence[0], dataclasses.replace(lm, pubkey=None)) is not None
    assert "not in the catalogue" in str(verify_record(m.evidence[0], None))
    _, problems = verify_measurements([m], {})
    assert len(problems) == 3 + 3  # each record, and each RTT left unbacked


@pytest.fixture
def two_places(world: World) -> tuple[dict[str, Landmark], Measurement, Measurement]:
    fra, _ = world.landmark("fra", 50.11, 8.68)
    mad, _ = world.landmark("mad", 40.42, -3.70, delay=lambda: 0.004)
    m_fra, m_mad = measure([fra, mad], "udp", samples=3)
    assert m_fra.ok and m_mad.ok
    return {"fra": fra, "mad": mad}, m_fra, m_mad


@pytest.mark.parametrize("method", ["tcp", "icmp", "replay", "UDP", ""])
def test_borrowed_replies_fail_whatever_the_method_says(
    two_places: tuple[dict[str, Landmark], Measurement, Measurement], method: str
) -> None:
    """Frankfurt's signed replies under Madrid's RTTs: relabelling the method must not hide it."""
    cat, m_fra, m_mad = two_places
    forged = copy.deepcopy(m_fra)
    forged.rtts_ms = list(m_mad.rtts_ms)
    forged.sent_at = []
    forged.method = method
    checked, problems = verify_measurements([forged], cat)
    assert checked == 3
    assert len(problems) == 3 and all(p.index == -1 for p in problems)
    assert all("not backed by a signed reply" in p.reason for p in problems)


def test_unsigned_rtts_beside_signed_ones_fail(
    two_places: tuple[dict[str, Landmark], Measurement, Measurement],
) -> None:
    cat, m_fra, _ = two_places
    tcp = Measurement(landmark_id="mad", method="tcp", rtts_ms=[7.5], sent=1)
    _, problems = verify_measurements([m_fra, tcp], cat)
    assert [str(p) for p in problems] == [
        (
            "mad: measurement: RTT 7.500 ms is not backed by a signed reply "
            "(method 'tcp' is not signed)"
        )
    ]


def _respell(b64: str) -> str:
    """The same bytes in another base64 spelling: the unused low bits of the last digit set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = b64.rstrip("=")
    last = alphabet.index(body[-1])
    other = body[:-1] + alphabet[last ^ 0b11] + "=" * (len(b64) - len(body))
    assert other != b64 and base64.b64decode(other) == base64.b64decode(b64)
    return other


def test_replay_spelt_differently_is_still_a_replay(
    measured: tuple[Landmark, Measurement],
) -> None:
    lm, m = measured
    bad = copy.deepcopy(m)
    again = copy.deepcopy(bad.evidence[0])
    again["nonce"] = _respell(again["nonce"])
    bad.evidence.append(again)
    bad.rtts_ms.append(again["rtt_ms"])
    bad.sent_at = []
    _, problems = verify_measurements([bad], {lm.id: lm})
    assert (3, "nonce used twice (replayed reply)") in [(p.index, p.reason) for p in problems]
    assert any("not backed" in p.reason for p in problems)  # the fourth RTT has no reply of its own


@pytest.mark.parametrize("shift_s", [365 * 86400, -365 * 86400, 3600, 11])
def test_a_re_dated_file_fails(measured: tuple[Landmark, Measurement], shift_s: int) -> None:
    """Every time the prober wrote moves together; the landmark's signed times stay put."""
    lm, m = measured
    bad = copy.deepcopy(m)
    for rec in bad.evidence:
        rec["t0_ns"] += shift_s * 10**9
        rec["t1_ns"] += shift_s * 10**9
    bad.timestamp += shift_s
    bad.sent_at = [t + shift_s for t in bad.sent_at]
    _, problems = verify_measurements([bad], {lm.id: lm})
    assert len([p for p in problems if "re-dated" in p.reason and p.index >= 0]) == 3
    # An auditor who knows the VM had no clock discipline may widen the tolerance.
    _, lenient = verify_measurements([bad], {lm.id: lm}, max_clock_offset_s=abs(shift_s) + 1)
    assert lenient == []


def test_timestamp_and_sent_at_must_match_the_replies(
    measured: tuple[Landmark, Measurement],
) -> None:
    lm, m = measured
    late = copy.deepcopy(m)
    late.timestamp += 365 * 86400
    _, problems = verify_measurements([late], {lm.id: lm})
    assert [p.index for p in problems] == [-1] and "timestamp" in problems[0].reason
    moved = copy.deepcopy(m)
    moved.sent_at[0] += 5.0
    _, problems = verify_measurements([moved], {lm.id: lm})
    assert len(problems) == 1 and "sent_at" in problems[0].reason
    short = copy.deepcopy(m)
    short.sent_at = short.sent_at[:1]
    _, problems = verify_measurements([short], {lm.id: lm})
    assert [p.reason for p in problems] == ["sent_at does not list one time per RTT"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("t0_ns", -1),
        ("t0_ns", 2**70),
        ("t1_ns", "now"),
        ("rtt_ms", 10**400),
        ("nonce", "A" * 10**5),
    ],
)
def test_hostile_record_values_are_reasons(
    measured: tuple[Landmark, Measurement], field: str, value: Any
) -> None:
    lm, m = measured
    rec = dict(m.evidence[0], **{field: value})
    assert isinstance(verify_record(rec, lm), str)


def test_a_hostile_landmark_id_prints_on_one_line(measured: tuple[Landmark, Measurement]) -> None:
    lm, m = measured
    bad = copy.deepcopy(m)
    bad.landmark_id = "x\nOK: 90 signed replies verified"
    _, problems = verify_measurements([bad], {lm.id: lm})
    assert problems and all("\n" not in str(p) for p in problems)
    assert str(problems[0]).startswith("x\\nOK: 90")
