"""Measurement files and their evidence on hostile input: records or one InputError line, and
``verify`` gives reasons, never an exception; no mutation of signed evidence passes as good."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ, VALUES, mutate_json, raw_text
from fuzz.samples import dumps, signed_world
from geoprobe.errors import InputError
from geoprobe.measurement import load_measurements, min_rtts, parse_measurements
from geoprobe.probe.evidence import verify_measurements

WORLD = signed_world(samples=2)
GOOD = WORLD.measurement_doc()
BY_ID = WORLD.catalogue.by_id()


def _one_line(exc: InputError, file: str) -> None:
    text = str(exc)
    assert text.startswith(file) and "\n" not in text and len(text) < 600


def test_the_sample_verifies() -> None:
    ms, _ = parse_measurements(GOOD)
    assert verify_measurements(ms, BY_ID) == (6, [])


@FUZZ
@given(mutate_json(GOOD))
def test_mutated_measurement_documents(doc: Any) -> None:
    try:
        ms, _ = parse_measurements(doc, file="m.json")
    except InputError as exc:
        _one_line(exc, "m.json")
        return
    # Whatever loads can be used: replayed, re-saved, audited, with bounded output.
    min_rtts(ms)
    for m in ms:
        out = m.to_json()
        assert len(out["result"]) <= max(1, len(dumps(doc)))
    checked, bad = verify_measurements(ms, BY_ID)
    if doc != GOOD and checked and not bad:
        # Accepted after a change: only changes outside what is signed or checked may pass.
        assert _same_signed_content(doc)


def _same_signed_content(doc: Any) -> bool:
    """True when the change left every evidence record, RTT and time as it was (``sent_at`` may
    be dropped: files from before it existed have none, and the signed t0 still dates each RTT)."""
    try:
        return all(
            a.get("evidence") == b.get("evidence")
            and [r.get("rtt") for r in a.get("result", [])] == [r.get("rtt") for r in b["result"]]
            and a.get("sent_at", []) in ([], b.get("sent_at"))  # optional: older files lack it
            for a, b in zip(doc["results"], GOOD["results"], strict=True)
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


_EVIDENCE_FIELDS = st.sampled_from(
    ["nonce", "reply", "t0_ns", "t1_ns", "rtt_ms", "landmark_id", "v"]
)


@FUZZ
@given(st.integers(0, 2), st.integers(0, 1), _EVIDENCE_FIELDS, VALUES)
def test_hostile_evidence_values_are_reasons(i: int, j: int, field: str, value: Any) -> None:
    ms, _ = parse_measurements(copy.deepcopy(GOOD))
    before = ms[i].evidence[j].get(field)
    ms[i].evidence[j][field] = value
    checked, bad = verify_measurements(ms, BY_ID)
    assert checked == 6
    if value != before:
        assert bad, f"{field}={value!r} passed"


@FUZZ
@given(st.integers(0, 2), st.integers(0, 1), st.integers(0, 200), st.integers(1, 255))
def test_any_flipped_byte_of_a_signed_reply_fails(i: int, j: int, pos: int, mask: int) -> None:
    import base64

    ms, _ = parse_measurements(copy.deepcopy(GOOD))
    raw = bytearray(base64.b64decode(ms[i].evidence[j]["reply"]))
    raw[pos % len(raw)] ^= mask
    ms[i].evidence[j]["reply"] = base64.b64encode(bytes(raw)).decode()
    _, bad = verify_measurements(ms, BY_ID)
    assert any(b.landmark_id == ms[i].landmark_id and b.index == j for b in bad)


@FUZZ
@given(raw_text(dumps(GOOD)) | st.binary(max_size=2000))
def test_measurement_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.json"
        p.write_bytes(data)
        try:
            ms, _ = load_measurements(p)
        except InputError as exc:
            _one_line(exc, str(p))
            return
        verify_measurements(ms, BY_ID)
