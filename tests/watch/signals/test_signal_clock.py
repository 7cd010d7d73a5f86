"""Clock offset steps: per-landmark baselines, the common shift, and real sources on loopback."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator

import pytest

from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe import keys, measure
from geoprobe.probe.responder import start_responder
from geoprobe.watch.signals import ntp
from geoprobe.watch.signals.clock import ClockSignal, NtpClockSignal, StepDetector, best_offset


def _round(
    rng: random.Random, biases: dict[str, float], step: float = 0.0, noise: float = 0.5
) -> list[Measurement]:
    """One probing round: every landmark's offset is its path bias plus the clock step plus
    noise."""
    out = []
    for lid, bias in biases.items():
        rtts = [10 + rng.expovariate(1.0) for _ in range(3)]
        offs = [
            bias + step + rng.gauss(0, noise) + (r - 10) * rng.choice((-0.5, 0.5)) for r in rtts
        ]
        out.append(Measurement(lid, "udp", rtts_ms=rtts, sent=3, clock_offsets_ms=offs))
    return out


@pytest.fixture
def biases() -> dict[str, float]:
    rng = random.Random(1)
    return {f"lm{i}": rng.uniform(-8, 8) for i in range(20)}


def test_best_offset_takes_the_lowest_rtt_sample() -> None:
    m = Measurement("a", "udp", rtts_ms=[30.0, 10.0, 60.0], clock_offsets_ms=[12.0, 1.0, -25.0])
    s = best_offset(m)
    assert s is not None and s.offset_ms == 1.0 and s.rtt_ms == 10.0
    assert best_offset(Measurement("b", "tcp", rtts_ms=[3.0])) is None


def test_a_50ms_step_across_landmarks_is_detected_and_quiet_rounds_are_not(
    biases: dict[str, float],
) -> None:
    rng = random.Random(2)
    sig = ClockSignal()
    assert not sig.sample().available
    for _ in range(10):
        sig.update(_round(rng, biases))
        r = sig.sample()
        assert not r.anomalous, r
    sig.update(_round(rng, biases, step=50.0))
    r = sig.sample()
    assert r.anomalous and r.available
    assert 45 < r.detail["step_ms"] < 55
    assert r.value is not None and r.baseline is not None and 45 < r.value - r.baseline < 55
    assert r.score > 10


def test_a_negative_step_is_detected_too(biases: dict[str, float]) -> None:
    rng = random.Random(3)
    sig = ClockSignal()
    for _ in range(8):
        sig.update(_round(rng, biases))
    sig.update(_round(rng, biases, step=-30.0))
    r = sig.sample()
    assert r.anomalous and r.detail["step_ms"] < -25


def test_steps_below_threshold_and_single_outliers_do_not_fire(biases: dict[str, float]) -> None:
    rng = random.Random(4)
    sig = ClockSignal()
    for _ in range(8):
        sig.update(_round(rng, biases))
    sig.update(_round(rng, biases, step=12.0))
    assert not sig.sample().anomalous
    sig.reset()
    for _ in range(8):
        sig.update(_round(rng, biases))
    bad = _round(rng, biases)
    bad[0].clock_offsets_ms = [o + 500 for o in bad[0].clock_offsets_ms]  # one landmark lies
    bad[1].clock_offsets_ms = [o + 500 for o in bad[1].clock_offsets_ms]
    sig.update(bad)
    r = sig.sample()
    assert not r.anomalous and abs(r.detail["step_ms"]) < 3


def test_one_source_needs_a_sustained_shift() -> None:
    det = StepDetector(min_support=3)
    sig = ClockSignal(detector=det)
    for i in range(6):
        sig.add({"ntp": 0.3 * (-1) ** i})
    fired = []
    for _ in range(4):
        sig.add({"ntp": 50.0})
        fired.append(sig.sample().anomalous)
    assert fired == [False, False, True, True]


def test_a_noisy_source_cannot_fire_a_20ms_step() -> None:
    rng = random.Random(5)
    sig = ClockSignal()
    for _ in range(20):
        sig.add({f"s{i}": rng.gauss(0, 15) for i in range(5)})
    sig.add({f"s{i}": 22 + rng.gauss(0, 1) for i in range(5)})
    r = sig.sample()
    assert not r.anomalous and r.score < 4


def test_baseline_absorbs_the_new_level() -> None:
    sig = ClockSignal(detector=StepDetector(window_rounds=10))
    for _ in range(10):
        sig.add({"a": 0.0, "b": 1.0, "c": -1.0})
    states = []
    for _ in range(14):
        sig.add({"a": 40.0, "b": 41.0, "c": 39.0})
        states.append(sig.sample().anomalous)
    assert states[0] and not states[-1]


# -- real sources on loopback ------------------------------------------------------------------


class Shift:
    """A clock that can be stepped from the test: outside time jumps ahead, as after a pause."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.ns


def test_ntp_signal_sees_a_step_of_a_real_sntp_server() -> None:
    clock = Shift()
    with ntp.SntpServer("127.0.0.1", clock=clock) as server:
        r0 = ntp.query(server.address, timeout=2)
        assert abs(r0.offset_ms) < 20 and r0.delay_ms >= 0 and r0.stratum == 2
        sig = NtpClockSignal([server.address], timeout=2)
        for _ in range(5):
            assert not sig.sample().anomalous
        clock.ns = 80_000_000
        states = [sig.sample() for _ in range(3)]
    assert [s.anomalous for s in states] == [False, False, True]
    assert 60 < states[-1].detail["step_ms"] < 100


def test_ntp_unavailable_when_nothing_answers() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound but silent: the query times out
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ntp.NtpError, match="timeout"):
            ntp.query(addr, timeout=0.2)
        r = NtpClockSignal([addr], timeout=0.2).sample()
    assert not r.available and "timeout" in r.reason
    assert not NtpClockSignal([]).sample().available


def test_ntp_rejects_a_reply_that_is_not_a_server_reply() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))

        def echo() -> None:
            data, peer = s.recvfrom(512)
            s.sendto(bytes([0x23]) + data[1:24] + data[40:48] + bytes(16), peer)  # mode 3 again

        t = threading.Thread(target=echo)
        t.start()
        with pytest.raises(ntp.NtpError, match="not a server reply"):
            ntp.query(f"127.0.0.1:{s.getsockname()[1]}", timeout=2)
        t.join()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    th = threading.Thread(target=lp.run_forever, daemon=True)
    th.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    th.join(5)
    lp.close()


def test_landmark_clock_step_seen_through_signed_echoes(loop: asyncio.AbstractEventLoop) -> None:
    """Three real signed responders whose clock jumps ahead, as the guest's clock falls behind."""
    clock = Shift()
    landmarks = []
    transports = []
    for i in range(3):
        key = keys.generate()
        fut = asyncio.run_coroutine_threadsafe(
            start_responder(key, f"lm{i}", 50.0, 8.0, host=f"127.0.0.{60 + i}", clock=clock), loop
        )
        tr, _ = fut.result(5)
        transports.append(tr)
        pub = keys.public_raw(key)
        landmarks.append(
            Landmark(
                id=f"lm{i}",
                lat=50.0,
                lon=8.0,
                address=f"127.0.0.{60 + i}",
                udp_port=tr.get_extra_info("sockname")[1],
                pubkey=pub,
                key_id=keys.key_id(pub),
            )
        )
    try:
        sig = ClockSignal()
        for _ in range(4):
            assert sig.update(measure(landmarks, "udp", samples=3)) == 3
            assert not sig.sample().anomalous
        clock.ns = 50_000_000
        sig.update(measure(landmarks, "udp", samples=3))
        r = sig.sample()
    finally:
        for tr in transports:
            loop.call_soon_threadsafe(tr.close)
    assert r.anomalous, r
    assert 40 < r.detail["step_ms"] < 60


def test_ntp_a_silent_server_is_reported_and_the_others_still_count() -> None:
    import socket

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
        ntp.SntpServer("127.0.0.1") as good,
    ):
        silent.bind(("127.0.0.1", 0))
        bad = f"127.0.0.1:{silent.getsockname()[1]}"
        r = NtpClockSignal([good.address, bad], timeout=0.5).sample()
    assert r.available and set(r.detail["errors"]) == {bad}
    assert ntp.parse_server("[::1]:1234") == ("::1", 1234) and ntp.parse_server("pool.example") == (
        "pool.example",
        123,
    )


def test_ntp_rejects_an_unsynchronised_server() -> None:
    # stratum 0: a kiss-o'-death or an unsynchronised server
    with (
        ntp.SntpServer("127.0.0.1", stratum=0) as kod,
        pytest.raises(ntp.NtpError, match="unsynchronised"),
    ):
        ntp.query(kod.address, timeout=2)


def test_a_round_spanning_the_step_splits_into_the_samples_after_it(
    biases: dict[str, float],
) -> None:
    rng = random.Random(5)
    sig = ClockSignal()
    for _ in range(8):
        sig.update(_round(rng, biases))
        sig.sample()
        assert sig.after_step(_round(rng, biases)) is None  # no step: nothing to split
    early = set(list(biases)[:8])  # probed before the pause
    mixed = [
        m
        if m.landmark_id in early
        else _round(rng, {m.landmark_id: biases[m.landmark_id]}, step=50.0)[0]
        for m in _round(rng, biases)
    ]
    for m in mixed:
        if m.landmark_id not in early:
            m.rtts_ms = [r + 100 for r in m.rtts_ms]  # the new place is farther away
    sig.update(mixed)
    assert sig.sample().anomalous
    after = sig.after_step(mixed)
    assert after is not None and set(after) == set(biases) - early
    assert all(r > 100 for r in after.values())
    # The next round lies wholly after the step: it needs no split.
    later = _round(rng, biases, step=50.0)
    sig.update(later)
    assert sig.sample().anomalous and sig.after_step(later) is None


def _timed_round(
    rng: random.Random, biases: dict[str, float], stepped: set[str], order: list[str]
) -> list[Measurement]:
    """One sample per landmark, sent in ``order`` 10 ms apart; ``stepped`` ones carry a +50 ms
    step."""
    out = []
    for k, lid in enumerate(order):
        off = biases[lid] + (50.0 if lid in stepped else 0.0) + rng.gauss(0, 0.5)
        out.append(
            Measurement(
                lid, "udp", rtts_ms=[10.0], sent=1, clock_offsets_ms=[off], sent_at=[1000 + k / 100]
            )
        )
    return out


@pytest.mark.parametrize("in_time_order", [True, False], ids=["last-samples", "scattered"])
def test_a_step_in_only_the_last_samples_of_a_round_is_a_change_point(
    biases: dict[str, float], in_time_order: bool
) -> None:
    """A quarter of the round stepped: too few for the median. Stepped samples that are the last
    ones sent are a pause inside the round; the same offsets scattered in time are not."""
    rng = random.Random(9)
    order = list(biases)
    sig = ClockSignal()
    for _ in range(8):
        sig.update(_timed_round(rng, biases, set(), order))
        assert not sig.sample().anomalous
    last = set(order[-5:]) if in_time_order else set(order[1::4][:5])
    mixed = _timed_round(rng, biases, last, order)
    sig.update(mixed)
    r = sig.sample()
    assert r.anomalous is in_time_order
    if in_time_order:
        assert 45 < r.detail["step_ms"] < 55 and "within the round" in r.reason
        after = sig.after_step(mixed)
        assert after is not None and set(after) == last
    else:
        assert sig.after_step(mixed) is None
