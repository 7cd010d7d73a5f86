"""Signed UDP echo against real responders on 127.0.0.x, honest and malicious."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from loopback_world import World, next_host
from malicious import MaliciousResponder

from geoprobe.measurement import Measurement
from geoprobe.probe import keys, measure
from geoprobe.probe.evidence import verify_measurements
from geoprobe.probe.responder import EchoResponder


def test_honest_landmark_gives_samples_offsets_and_evidence(world: World) -> None:
    lm, responder = world.landmark("fra", 50.11, 8.68, delay=lambda: 0.03)
    [m] = measure([lm], "udp", samples=3, timeout=2.0)
    assert m.ok and m.failure is None and m.path == "udp-signed-echo"
    assert (
        m.sent == 3
        and len(m.rtts_ms) == 3
        and len(m.evidence) == 3
        and len(m.clock_offsets_ms) == 3
    )
    # Send times order the round's samples (the clock signal's change point): ours, increasing.
    assert (
        len(m.sent_at) == 3
        and m.sent_at == sorted(m.sent_at)
        and abs(m.sent_at[0] - time.time()) < 60
    )
    assert m.dst_addr == lm.address
    # The held delay is path latency: it must survive the subtraction of processing time.
    assert m.min_rtt is not None and m.min_rtt >= 29.5
    assert not m.rejected
    assert isinstance(responder, EchoResponder) and responder.answered == 3
    checked, bad = verify_measurements([m], {lm.id: lm})
    assert checked == 3 and bad == []


def test_processing_time_is_subtracted(world: World) -> None:
    key = keys.generate()
    lm, _ = world.landmark(
        "slow",
        1.0,
        2.0,
        key=key,
        factory=lambda k: MaliciousResponder("slow-processing", k, "slow", 1.0, 2.0),
    )
    [m] = measure([lm], "udp", samples=2, timeout=2.0)
    # 40 ms were spent between t_recv and t_send, and reported: none of it is path.
    assert m.ok and m.min_rtt is not None and m.min_rtt < 20.0


def test_emulated_clock_offset_is_estimated(world: World) -> None:
    offset_ns = 250_000_000
    lm, _ = world.landmark(
        "ahead", 0.0, 0.0, delay=lambda: 0.01, clock=lambda: time.time_ns() + offset_ns
    )
    [m] = measure([lm], "udp", samples=3)
    assert m.clock_offsets_ms
    assert all(abs(o - 250.0) < 25.0 for o in m.clock_offsets_ms)


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("forge", "bad signature"),
        ("alter-time", "bad signature"),
        ("alter-location", "bad signature"),
        ("sign-wrong-location", "location mismatch"),
        ("wrong-id", "wrong landmark id"),
    ],
)
def test_bad_replies_are_rejected_counted_and_never_used(
    world: World, mode: str, reason: str
) -> None:
    key = keys.generate()
    lm, bad = world.landmark(
        "evil",
        48.0,
        11.0,
        key=key,
        factory=lambda k: MaliciousResponder(mode, k, "evil", 48.0, 11.0),
    )
    honest, _ = world.landmark("good", 52.0, 13.0)
    m, h = measure([lm, honest], "udp", samples=3, timeout=0.5)
    assert isinstance(bad, MaliciousResponder) and bad.sent == 3
    assert m.rtts_ms == [] and m.evidence == [] and m.clock_offsets_ms == []
    assert m.rejected == {reason: 3}
    assert m.failure is not None and m.failure.startswith("timeout") and reason in m.failure
    assert h.ok and not h.rejected


def test_replayed_replies_are_rejected_and_not_double_counted(world: World) -> None:
    key = keys.generate()
    lm, _ = world.landmark(
        "echo",
        40.0,
        -3.0,
        key=key,
        factory=lambda k: MaliciousResponder("replay", k, "echo", 40.0, -3.0),
    )
    [m] = measure([lm], "udp", samples=3, timeout=0.5)
    assert len(m.rtts_ms) == 3 and len(m.evidence) == 3
    # Samples 2 and 3 each brought the previous sample's reply back twice.
    assert m.rejected == {"replayed": 4}
    _, problems = verify_measurements([m], {lm.id: lm})
    assert problems == []


def test_replay_from_an_earlier_run_is_rejected(world: World) -> None:
    """Replies recorded in one run are worthless in the next: their nonces were never sent there."""
    lm, _ = world.landmark("rec", 10.0, 10.0)
    [first] = measure([lm], "udp", samples=1)
    old_reply = __import__("base64").b64decode(first.evidence[0]["reply"])

    class Replayer(MaliciousResponder):
        def datagram_received(self, data: bytes, addr: object) -> None:
            self._send(old_reply, addr)

    replay_lm, _ = world.landmark(
        "rec",
        10.0,
        10.0,
        key=keys.generate(),
        factory=lambda k: Replayer("forge", k, "rec", 10.0, 10.0),
    )
    replay_lm = dataclasses.replace(replay_lm, pubkey=lm.pubkey, key_id=lm.key_id)
    [m] = measure([replay_lm], "udp", samples=2, timeout=0.4)
    assert not m.ok and m.rejected == {"unknown nonce": 2}


def test_silent_and_closed_landmarks_fail_with_reasons(world: World) -> None:
    honest, _ = world.landmark("up")
    # Silent: a bound socket that never answers.
    silent_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_host = next_host()
    silent_sock.bind((silent_host, 0))
    silent = dataclasses.replace(
        honest, id="silent", address=silent_host, udp_port=silent_sock.getsockname()[1]
    )
    # Closed: nobody listens, so the kernel answers with ICMP port unreachable.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed_host = next_host()
    probe.bind((closed_host, 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    closed = dataclasses.replace(honest, id="closed", address=closed_host, udp_port=closed_port)
    no_port = dataclasses.replace(honest, id="noport", udp_port=None, pubkey=None)
    no_key = dataclasses.replace(honest, id="nokey", pubkey=None)
    try:
        t = time.monotonic()
        ms = {
            m.landmark_id: m
            for m in measure(
                [honest, silent, closed, no_port, no_key], "udp", samples=2, timeout=0.5
            )
        }
        elapsed = time.monotonic() - t
    finally:
        silent_sock.close()
    assert ms["up"].ok
    assert ms["silent"].failure == "timeout" and ms["silent"].sent == 2
    assert ms["closed"].failure == "refused"
    assert ms["noport"].failure == "no udp port in catalogue" and ms["noport"].sent == 0
    assert ms["nokey"].failure == "no public key in catalogue"
    assert elapsed >= 0.5  # the silent landmark was waited for


def test_thirty_percent_silent(world: World) -> None:
    landmarks = [world.landmark(f"lm{i}", 40.0 + i, 5.0)[0] for i in range(7)]
    silent_socks = []
    for i in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host = next_host()
        s.bind((host, 0))
        silent_socks.append(s)
        landmarks.append(
            dataclasses.replace(
                landmarks[0], id=f"quiet{i}", address=host, udp_port=s.getsockname()[1]
            )
        )
    try:
        ms = measure(landmarks, "udp", samples=2, timeout=0.4)
    finally:
        for s in silent_socks:
            s.close()
    assert [m.landmark_id for m in ms] == [lm.id for lm in landmarks]  # order kept
    assert sum(m.ok for m in ms) == 7
    assert {m.landmark_id: m.failure for m in ms if not m.ok} == {
        f"quiet{i}": "timeout" for i in range(3)
    }


def test_samples_are_pipelined(world: World) -> None:
    """All samples leave before the first reply is back (the reply takes 300 ms)."""
    arrivals: list[float] = []

    class Recording(EchoResponder):
        def datagram_received(self, data: bytes, addr: object) -> None:
            arrivals.append(time.monotonic())
            super().datagram_received(data, addr)  # type: ignore[arg-type]

    lm, _ = world.landmark(
        "far", 0.0, 0.0, factory=lambda k: Recording(k, "far", 0.0, 0.0, delay=lambda: 0.3)
    )
    [m] = measure([lm], "udp", samples=3, timeout=2.0)
    assert m.ok and len(m.rtts_ms) == 3
    assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] < 0.3


def test_progress_reports_every_landmark(world: World) -> None:
    lms = [world.landmark(f"p{i}")[0] for i in range(4)]
    seen: list[tuple[int, int]] = []
    measure(lms, "udp", samples=1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_measurements_survive_a_json_round_trip(world: World) -> None:
    lm, _ = world.landmark("rt")
    [m] = measure([lm], "udp", samples=2)
    again = Measurement.from_json(m.to_json())
    assert again.rtts_ms == m.rtts_ms and again.evidence == m.evidence and again.path == m.path
    assert again.clock_offsets_ms == m.clock_offsets_ms and again.sent_at == m.sent_at and m.sent_at
    assert verify_measurements([again], {lm.id: lm})[1] == []
