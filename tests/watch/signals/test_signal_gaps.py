"""Execution gaps: the periodicity test on known patterns, and real stops of a real sampler process.

The sampler runs in a child process; the test stops it with SIGSTOP/SIGCONT, which is what a
hypervisor's throttle does to a vCPU. Assertions are on clear effects only (a 100 ms stall is
seen; a 10 ms on / 10 ms off pattern is called throttling), never on tight timings.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoprobe.watch.signals.gaps import Gap, GapSignal, find_throttle


def _pattern(run_ms: float, gap_ms: float, n: int, jitter: float = 0.0, seed: int = 0) -> list[Gap]:
    rng = random.Random(seed)
    t, out = 100.0, []
    for _ in range(n):
        length = gap_ms + rng.uniform(-jitter, jitter)
        out.append(Gap(t, length))
        t += (length + run_ms + rng.uniform(-jitter, jitter)) / 1000
    return out


@pytest.mark.parametrize("share", [0.2, 0.5, 0.9, 0.99])
def test_regular_gaps_after_10ms_of_run_time_are_throttling(share: float) -> None:
    gap = 10 * share / (1 - share)
    th = find_throttle(_pattern(10.0, gap, 12, jitter=0.8))
    assert th is not None
    assert abs(th.share - share) < 0.08
    assert 8 < th.run_ms < 12


def test_irregular_gaps_are_not_throttling() -> None:
    rng = random.Random(7)
    t, gaps = 0.0, []
    for _ in range(200):
        t += rng.expovariate(1 / 0.05)  # scheduler noise: random times, random lengths
        gaps.append(Gap(t, rng.uniform(1.5, 30)))
    assert find_throttle(gaps) is None
    assert find_throttle(_pattern(10.0, 5.0, 3)) is None  # too few to call a pattern
    assert (
        find_throttle(_pattern(1.0, 4.0, 50)) is None
    )  # GIL-like: runs of 1 ms, not a 10 ms slice
    assert find_throttle(_pattern(200.0, 5.0, 50)) is None


ROOT = os.geteuid() == 0

THROTTLER = """
import os, signal, sys, time
pid, stop_s, run_s, dur = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + dur
while time.monotonic() < end:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(stop_s)
    os.kill(pid, signal.SIGCONT)
    time.sleep(run_s)
"""


def _throttle(pid: int, stop_s: float, run_s: float, duration: float) -> None:
    """Stop and continue ``pid`` like a vCPU throttle, from another process (real-time when root,
    so that the emulation stays regular on a loaded box)."""
    stopper = subprocess.Popen(
        [sys.executable, "-c", THROTTLER, str(pid), str(stop_s), str(run_s), str(duration)]
    )
    if ROOT:
        try:
            os.sched_setscheduler(stopper.pid, os.SCHED_FIFO, os.sched_param(2))
        except OSError:
            pass
    assert stopper.wait(duration + 30) == 0
    os.kill(pid, signal.SIGCONT)


@pytest.fixture
def sampler() -> Iterator[GapSignal]:
    g = GapSignal(window_s=5.0, realtime=ROOT)
    g.start()
    try:
        yield g
    finally:
        g.stop()


def _wait_running(g: GapSignal) -> int:
    assert g.proc is not None
    deadline = time.monotonic() + 10
    while "loop_rate_hz" not in g.sample().detail:  # first heartbeat: the loop runs
        assert time.monotonic() < deadline, "gap sampler never reported"
        time.sleep(0.1)
    return g.proc.pid


def test_a_100ms_stop_is_seen_and_is_not_throttling(sampler: GapSignal) -> None:
    pid = _wait_running(sampler)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.1)
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.3)
    r = sampler.sample()
    assert r.available
    assert r.detail["max_gap_ms"] >= 80
    assert r.detail["gaps_over_5ms"] >= 1
    assert not r.anomalous
    assert r.detail["loop_rate_hz"] > 50  # a high-rate loop (about 1 kHz when idle)
    assert r.detail["cpu_share"] < 0.5


def test_stop_go_every_10ms_is_seen_as_throttling(sampler: GapSignal) -> None:
    pid = _wait_running(sampler)
    _throttle(pid, 0.015, 0.010, 2.5)
    r = sampler.sample()
    assert r.anomalous, r.detail
    th = r.detail["throttle"]
    assert 0.2 < th["share"] < 0.9
    assert "throttled" in r.reason


def test_unavailable_before_start_and_after_the_child_dies() -> None:
    g = GapSignal()
    assert not g.sample().available and g.sample().reason == "not started"
    g.start()
    try:
        pid = _wait_running(g)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while g.sample().available:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "exited" in g.sample().reason
    finally:
        g.stop()


def test_thread_mode_runs_and_stops() -> None:
    g = GapSignal(mode="thread", window_s=2.0)
    g.start()
    try:
        deadline = time.monotonic() + 10
        while "loop_rate_hz" not in g.sample().detail:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert g.sample().available
    finally:
        g.stop()
    with pytest.raises(ValueError):
        GapSignal(mode="fork")


def test_the_sampler_child_exits_when_the_daemon_dies() -> None:
    code = (
        "from geoprobe.watch.signals.gaps import GapSignal; import time\n"
        "g = GapSignal(); g.start(); print(g.proc.pid, flush=True); time.sleep(60)"
    )
    daemon = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    child = int(daemon.stdout.readline())
    daemon.kill()
    daemon.wait()
    deadline = time.monotonic() + 15
    while True:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except OSError:
            break  # gone
        if state == "Z":
            break  # exited, waiting to be reaped by init
        assert time.monotonic() < deadline, "gap sampler outlived its daemon"
        time.sleep(0.1)


def test_a_throttle_episode_between_two_rounds_is_held() -> None:
    g = GapSignal(window_s=1.5, hold_s=600.0, realtime=ROOT)
    g.start()
    try:
        pid = _wait_running(g)
        _throttle(pid, 0.015, 0.010, 3.0)
        time.sleep(2.5)  # the window has moved past the episode; the heartbeat scan kept it
        r = g.sample()
    finally:
        g.stop()
    assert r.anomalous, r.detail
    assert r.detail["throttle_seconds_ago"] is not None and r.detail["throttle_seconds_ago"] > 0
