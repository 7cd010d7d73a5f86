"""Landmark-timed echoes over real loopback sockets, and their parsers under hostile input."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe import keys, timed
from geoprobe.probe.protocol import NONCE_LEN, REQUEST_LEN, ProtocolError, parse_request
from geoprobe.probe.scheduler import measure_async
from geoprobe.probe.udp import UdpProber
from tests.fuzz.hostile import FUZZ

from .conftest import Landmarks


def _measure(lms: list[Landmark], vm_key: object, samples: int = 3) -> list[Measurement]:
    timed.use_identity(vm_key)  # type: ignore[arg-type]
    try:
        return asyncio.run(measure_async(lms, "udp", samples=samples, timeout=2.0))
    finally:
        timed.use_identity(None)


def _statements(m: Measurement) -> list[timed.Statement]:
    return [
        timed.parse_statement(base64.b64decode(e["timed"]["statement"]))
        for e in m.evidence
        if "timed" in e
    ]


def test_landmark_times_the_round_trip_and_signs_it(landmarks: Landmarks) -> None:
    lm, resp = landmarks.add("fra", 50.11, 8.68, delay_s=0.008)
    vm = keys.generate()
    (m,) = _measure([lm], vm)
    assert m.ok and len(m.landmark_timed_rtts_ms) == 3
    # The landmark's own timer covers the emulated 8 ms path, and the VM cannot shorten it.
    assert min(m.landmark_timed_rtts_ms) >= 8.0
    assert min(m.rtts_ms) >= 8.0
    for st_ in _statements(m):
        assert st_.verify(keys.public_from_raw(lm.pubkey or b""))
        assert st_.vm_key_id == keys.key_id(keys.public_raw(vm))
        assert st_.landmark_id == "fra" and abs(time.time() - st_.t_ns / 1e9) < 5
    assert resp.timed is not None and resp.timed.stated == 3
    out = m.to_json()
    assert out["landmark_timed_rtts"] == m.landmark_timed_rtts_ms
    assert all(e["timed"]["timed_by"] == "landmark" for e in out["evidence"])
    assert all(e["timed_by"] == "vm" for e in out["evidence"])
    # The records survive a round trip through the measurement file format.
    again = Measurement.from_json(out)
    assert again.landmark_timed_rtts_ms == m.landmark_timed_rtts_ms


def test_a_landmark_that_does_not_speak_it_answers_the_plain_echo(landmarks: Landmarks) -> None:
    lm, resp = landmarks.add("old", 48.0, 11.0, delay_s=0.004)
    resp.timed = None  # a landmark from before landmark-timed echoes
    t = time.monotonic()
    (m,) = _measure([lm], keys.generate())
    assert m.ok and len(m.rtts_ms) == 3
    assert m.landmark_timed_rtts_ms == [] and "landmark_timed_rtts" not in m.to_json()
    assert time.monotonic() - t < 1.0  # no waiting for a statement that cannot come


def test_without_identity_nothing_is_offered(landmarks: Landmarks) -> None:
    lm, resp = landmarks.add("new", 48.0, 11.0)
    (m,) = _measure([lm], None)
    assert m.ok and m.landmark_timed_rtts_ms == []
    assert resp.timed is not None and resp.timed.challenged == 0


def test_old_landmark_code_accepts_the_offer_as_a_plain_request() -> None:
    req = timed.make_offer_request(b"n" * NONCE_LEN, keys.public_raw(keys.generate()))
    assert len(req) == REQUEST_LEN
    assert parse_request(req) == b"n" * NONCE_LEN


def _raw_sock(lm: Landmark) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.connect((lm.address, lm.udp_port))
    return s


def _challenge(s: socket.socket, vm_pub: bytes) -> tuple[bytes, bytes]:
    nonce = b"\x01" * NONCE_LEN
    s.send(timed.make_offer_request(nonce, vm_pub))
    got = [s.recv(2048), s.recv(2048)]
    chal = next(g for g in got if timed.message_type(g) == timed.TYPE_CHALLENGE)
    assert got.index(chal) == 0, "the challenge leaves before the echo reply"
    return timed.parse_challenge(chal)


def test_only_the_key_holder_gets_a_statement(landmarks: Landmarks) -> None:
    lm, resp = landmarks.add("lm", 50.0, 8.0)
    vm, thief = keys.generate(), keys.generate()
    with _raw_sock(lm) as s:
        echo, chal = _challenge(s, keys.public_raw(vm))
        s.send(timed.make_answer(thief, echo, chal))  # signed by the wrong key
        with pytest.raises(TimeoutError):
            s.recv(2048)
        s.send(timed.make_answer(vm, echo, chal))  # the genuine answer still counts
        st_ = timed.parse_statement(s.recv(2048))
        assert st_.challenge == chal and st_.vm_key_id == keys.key_id(keys.public_raw(vm))
        s.send(timed.make_answer(vm, echo, chal))  # one statement per challenge
        with pytest.raises(TimeoutError):
            s.recv(2048)
    assert resp.timed is not None and resp.timed.stated == 1


def test_an_answer_from_another_address_is_ignored(landmarks: Landmarks) -> None:
    lm, _ = landmarks.add("lm", 50.0, 8.0)
    vm = keys.generate()
    with _raw_sock(lm) as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        echo, chal = _challenge(s, keys.public_raw(vm))
        other.settimeout(0.5)
        other.sendto(timed.make_answer(vm, echo, chal), (lm.address, lm.udp_port))
        with pytest.raises(TimeoutError):
            other.recv(2048)


def test_no_amplification() -> None:
    """Challenge plus the longest reply a landmark offers it with fit in the request."""
    assert timed.CHALLENGE_LEN + 74 + 94 + 16 + 64 <= REQUEST_LEN
    assert timed.ANSWER_LEN >= timed.MAX_STATEMENT_LEN


def test_prober_ignores_unsolicited_challenges(landmarks: Landmarks) -> None:
    lm, _ = landmarks.add("lm", 50.0, 8.0)

    async def run() -> list[tuple[str, str]]:
        prober = UdpProber(vm_key=keys.generate())
        sock = prober._sock(socket.AF_INET)
        prober._reply(timed.make_challenge(b"x" * 32, b"y" * 32), ("127.0.0.1", 9), 0, sock)
        fut = prober.send(lm, lm.address)
        await asyncio.wait_for(fut, 2.0)
        rejected = list(prober._timed.rejected) if prober._timed else []
        prober.close()
        return rejected

    assert ("?", "unexpected challenge") in asyncio.run(run())


# -- parsers under hostile input -----------------------------------------------------------


def _statement_bytes() -> bytes:
    key = keys.generate()
    body = timed.statement_body(b"e" * 32, b"c" * 32, 1234, 5678, 1.5, 2.5, "0" * 16, "lm", "k1")
    return body + key.sign(timed.STATEMENT_CONTEXT + body)


def test_parsers_round_trip() -> None:
    raw = _statement_bytes()
    st_ = timed.parse_statement(raw)
    assert (st_.rtt_ns, st_.t_ns, st_.landmark_id, st_.key_id) == (1234, 5678, "lm", "k1")
    vm = keys.generate()
    ans = timed.make_answer(vm, b"e" * 32, b"c" * 32)
    assert timed.parse_answer(ans)[:2] == (b"e" * 32, b"c" * 32)
    assert timed.parse_challenge(timed.make_challenge(b"e" * 32, b"c" * 32)) == (
        b"e" * 32,
        b"c" * 32,
    )
    with pytest.raises(ProtocolError):
        timed.parse_statement(raw[:-1])
    with pytest.raises(ProtocolError):
        timed.parse_answer(ans[:-1])


@FUZZ
@given(st.binary(max_size=600))
def test_parsers_refuse_or_decode_any_bytes(data: bytes) -> None:
    for parse in (timed.parse_challenge, timed.parse_answer, timed.parse_statement):
        try:
            parse(data)
        except ProtocolError:
            pass
    timed.message_type(data)
    timed.parse_offer(data)


@FUZZ
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_statement_parser_survives_corruption(at: int, junk: bytes) -> None:
    raw = bytearray(_statement_bytes())
    at %= len(raw)
    raw[at : at + len(junk)] = junk
    try:
        timed.parse_statement(bytes(raw))
    except ProtocolError:
        pass


def test_a_statement_that_never_comes_leaves_the_echo_vm_timed(landmarks: Landmarks) -> None:
    lm, resp = landmarks.add("mute", 48.0, 11.0, delay_s=0.002)
    assert resp.timed is not None
    resp.timed.answer = lambda *a: True  # type: ignore[method-assign]  # challenges, never states
    t = time.monotonic()
    (m,) = _measure([lm], keys.generate(), samples=2)
    assert m.ok and len(m.rtts_ms) == 2 and m.landmark_timed_rtts_ms == []
    assert m.rejected == {"timed: no statement in time": 2}
    assert time.monotonic() - t < 1.5  # the grace, not the sample timeout
