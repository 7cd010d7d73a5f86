"""The dirty-sync probe: two writes per page, chunks timed apart, and the child that runs it."""

from __future__ import annotations

import mmap
import os
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.watch.signals.precopy import (
    PARTIAL,
    QUIET,
    SYNC,
    Cycle,
    DirtySyncSignal,
    Sampler,
    classify,
    parse_line,
)

P = 128  # pages per chunk


def cyc(first: list[int], second: list[int]) -> Cycle:
    return Cycle(1.0, tuple(first), tuple(second), P)


def test_every_chunk_slow_on_its_first_write_is_a_sync() -> None:
    # TCG's notdirty path: ~250 ns more per page on the first write, in every chunk
    assert classify(cyc([40_000] * 8, [8_000] * 8)) == SYNC


def test_one_chunk_may_stay_fast_when_the_sync_lands_mid_cycle() -> None:
    assert classify(cyc([40_000] * 7 + [8_000], [8_000] * 8)) == SYNC
    assert classify(cyc([40_000] * 6 + [8_000] * 2, [8_000] * 8)) == PARTIAL


def test_a_preemption_slows_one_chunk_only() -> None:
    assert classify(cyc([8_000] * 3 + [5_000_000] + [8_000] * 4, [8_000] * 8)) == PARTIAL
    # ... or it lands in a second write, which makes the first look fast
    assert classify(cyc([8_000] * 8, [8_000] * 5 + [3_000_000] + [8_000] * 2)) == QUIET


def test_a_uniformly_slower_cpu_slows_both_writes_alike() -> None:
    # host load, frequency scaling, a noisy SMT sibling: every write 5x slower
    assert classify(cyc([40_000] * 8, [40_000] * 8)) == QUIET
    assert classify(cyc([60_000] * 8, [40_000] * 8)) == QUIET


def test_a_tiny_excess_is_no_sync_however_large_the_ratio() -> None:
    # 1.5 us vs 0.5 us over 128 pages: 8 ns per page, numpy's own noise
    assert classify(cyc([1_500] * 8, [500] * 8)) == QUIET


def test_too_few_chunks_never_make_a_sync() -> None:
    assert classify(Cycle(0.0, (90_000, 90_000), (1_000, 1_000), P)) != SYNC


def test_cycle_line_round_trips() -> None:
    c = Cycle(12.5, (1, 2, 3), (4, 5, 6), 128)
    back = parse_line(c.to_line())
    assert back == c


@pytest.mark.parametrize(
    "line",
    [
        "",
        "b 1 2 3",
        "c 1 128 1,2 3",  # lengths differ
        "c 1 0 1 2",  # no pages
        "c 1 128 -1 2",
        "c x 128 1 2",
        "c 1 128 1,,2 3,4",
        "c 1 128 1 2 extra",
    ],
)
def test_bad_lines_are_ignored(line: str) -> None:
    assert parse_line(line) is None


@given(st.text(max_size=200))
@settings(max_examples=400, deadline=None)
def test_parse_line_never_raises(line: str) -> None:
    c = parse_line(line)
    if c is not None:
        assert len(c.first_ns) == len(c.second_ns) and c.pages > 0
        classify(c)


@given(
    st.lists(st.integers(0, 10**9), min_size=1, max_size=16),
    st.lists(st.integers(0, 10**9), min_size=1, max_size=16),
    st.integers(1, 10**6),
)
@settings(max_examples=200, deadline=None)
def test_classify_is_total(first: list[int], second: list[int], pages: int) -> None:
    n = min(len(first), len(second))
    assert classify(Cycle(0.0, tuple(first[:n]), tuple(second[:n]), pages)) in (
        SYNC,
        PARTIAL,
        QUIET,
    )


# -- the real buffer: real faults ----------------------------------------------------------------


@pytest.fixture
def sampler() -> Sampler:
    s = Sampler(lock=False)  # MADV_DONTNEED refuses locked pages
    for _ in range(5):
        s.cycle()
    return s


def test_quiet_cycles_on_an_idle_buffer(sampler: Sampler) -> None:
    verdicts = [classify(sampler.cycle()) for _ in range(20)]
    assert verdicts.count(SYNC) == 0


def test_a_real_write_protection_by_fork_is_a_sync(sampler: Sampler) -> None:
    """After fork() every page is copy-on-write: the next write to each traps, as under
    write-protecting dirty tracking; the second write does not."""
    seen = []
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads around
            pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        seen.append(classify(sampler.cycle()))
        seen.append(classify(sampler.cycle()))  # re-armed once only: the next cycle is quiet
    assert seen[0::2].count(SYNC) >= 2
    assert seen[1::2].count(SYNC) == 0


def test_dropped_pages_fault_on_the_first_write_only(sampler: Sampler) -> None:
    sampler.buffer.madvise(mmap.MADV_DONTNEED)
    assert classify(sampler.cycle()) == SYNC


def test_pages_have_distinct_contents(sampler: Sampler) -> None:
    ps = sampler.page_size
    pages = {sampler.buffer[i * ps : (i + 1) * ps] for i in range(sampler.pages)}
    assert len(pages) == sampler.pages


# -- the signal around its child -----------------------------------------------------------------


def test_signal_runs_its_child_and_stays_quiet_then_fires_on_syncs() -> None:
    sig = DirtySyncSignal(interval_s=0.05, window_s=30)
    sig.start()
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            d = sig.sample().detail
            if d.get("cycles", 0) >= 10 and "cpu_share" in d:
                break
            time.sleep(0.1)
        r = sig.sample()
        assert r.available and r.detail["cycles"] >= 10
        assert r.detail["syncs"] == 0 and not r.anomalous and not r.precopy
        assert 0 < r.detail["cpu_share"] < 0.2  # at 20 cycles/s, ten times the default rate
        assert sig.proc is not None and sig.proc.poll() is None
    finally:
        sig.stop()
    assert sig.proc is None


def test_fed_syncs_make_it_fire_with_precopy() -> None:
    sig = DirtySyncSignal(min_syncs=2)
    sig._thread = object()  # type: ignore[assignment]  # reading only: no child needed
    now = time.monotonic()
    quiet = Cycle(now, (8_000,) * 8, (8_000,) * 8, P)
    sync = Cycle(now, (40_000,) * 8, (8_000,) * 8, P)
    for _ in range(5):
        sig.feed(quiet.to_line())
    sig.feed(sync.to_line())
    assert not sig.sample().anomalous and sig.changed.is_set()
    sig.feed(sync.to_line())
    r = sig.sample()
    assert r.anomalous and r.precopy and r.decisive
    assert r.detail["syncs"] == 2 and "dirty-page tracking" in r.reason
    sig.reset()
    assert sig.sample().reason == "no cycles yet"
