"""Whole-VM pause: a monotonic jump every vCPU saw at once, not paid as steal, not a suspend."""

from __future__ import annotations

import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.watch.signals.pause import Gap, PauseSignal, find_pauses, parse_gap


def g(cpu: int, end: float, ms: float, steal: float = 0.0, suspend: float = 0.0) -> Gap:
    return Gap(cpu, end, ms, suspend, steal)


def test_a_gap_on_every_cpu_at_once_is_a_pause() -> None:
    (p,) = find_pauses([g(0, 10.000, 120), g(1, 10.004, 118)], cpus=2)
    assert p.cpus == 2 and p.decisive and p.gap_ms == 118


def test_a_gap_on_one_cpu_is_a_preemption() -> None:
    assert find_pauses([g(0, 10.0, 300)], cpus=2) == []
    # two CPUs, but at different times: two preemptions
    assert find_pauses([g(0, 10.0, 120), g(1, 12.0, 120)], cpus=2) == []


def test_a_gap_paid_as_steal_is_the_host_preempting() -> None:
    assert find_pauses([g(0, 10.0, 120, steal=110), g(1, 10.0, 120, steal=100)], cpus=2) == []


def test_a_suspend_moves_boottime_and_is_no_pause() -> None:
    assert find_pauses([g(0, 10.0, 5000, suspend=4990), g(1, 10.0, 5000, suspend=4990)], 2) == []


def test_short_gaps_are_ignored_and_one_cpu_is_never_decisive() -> None:
    assert find_pauses([g(0, 10.0, 30), g(1, 10.0, 30)], cpus=2) == []
    (p,) = find_pauses([g(0, 10.0, 90)], cpus=1)
    assert not p.decisive


def test_gap_line_round_trips() -> None:
    x = Gap(1, 12.5, 140.25, 0.5, 3.0)
    assert parse_gap(x.to_line()) == x


@pytest.mark.parametrize("line", ["", "g 1 2 3", "g -1 1 1 0 0", "g a 1 1 0 0", "x 1 1 1 0 0"])
def test_bad_gap_lines_are_ignored(line: str) -> None:
    assert parse_gap(line) is None


@given(st.text(max_size=120))
@settings(max_examples=300, deadline=None)
def test_gap_parser_never_raises(line: str) -> None:
    parse_gap(line)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 100), st.floats(0, 1000), st.floats(0, 1000)),
        max_size=30,
    ),
    st.integers(1, 4),
)
@settings(max_examples=200, deadline=None)
def test_every_pause_is_backed_by_gaps_of_distinct_cpus(
    raw: list[tuple[int, float, float, float]], cpus: int
) -> None:
    gaps = [g(c, e, ms, steal) for c, e, ms, steal in raw]
    for p in find_pauses(gaps, cpus):
        assert p.cpus >= cpus and p.gap_ms >= 40


def test_stopping_the_sampler_process_is_seen_as_a_pause() -> None:
    """SIGSTOP stops every sleeper thread at once, as a paused VM stops every vCPU."""
    sig = PauseSignal()
    sig.start()
    try:
        assert sig.proc is not None
        time.sleep(1.0)
        assert not sig.sample().anomalous
        os.kill(sig.proc.pid, signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(sig.proc.pid, signal.SIGCONT)
        end = time.monotonic() + 5
        while not sig.sample().anomalous and time.monotonic() < end:
            time.sleep(0.05)
        r = sig.sample()
        assert r.anomalous and not r.precopy
        assert r.value is not None and 150 <= r.value <= 1000
        assert r.decisive == (len(sig.cpus) >= 2)
    finally:
        sig.stop()
