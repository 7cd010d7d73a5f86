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
