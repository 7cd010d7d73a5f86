"""First-write latency: scoring on the series measured under QEMU, and a real buffer disturbed for
real.

The real disturbance is ``madvise(MADV_DONTNEED)``: the kernel drops the buffer's pages, so the
next pass takes a fault on every page, as a hypervisor's write protection makes it do during
pre-copy.
"""

from __future__ import annotations

import mmap
import random
import time

from geoprobe.watch.signals.writes import SpikeDetector, WriteLatencySignal


def test_dirty_sync_passes_are_spikes_and_ordinary_noise_is_not() -> None:
    """QEMU TCG: 2.0 ms passes, 6-9 ms at each dirty sync during pre-copy."""
    rng = random.Random(11)
    det = SpikeDetector()
    before = [
        det.add(2.0 + rng.gauss(0, 0.15) + (rng.random() < 0.05) * 1.0)[1] for _ in range(300)
    ]
    assert not any(before)
    during = []
    for _ in range(6):
        during.append(det.add(rng.uniform(6, 9))[1])  # the pass right after a dirty sync
        during += [det.add(2.0 + rng.gauss(0, 0.15))[1] for _ in range(5)]
    assert sum(during) == 6
    base = det.baseline()
    assert base is not None and 1.8 < base[0] < 2.2  # spikes stayed out of the baseline


def test_a_spike_needs_history() -> None:
    det = SpikeDetector(min_history=10)
    assert [det.add(v)[1] for v in [1.0] * 9 + [50.0]] == [False] * 10
    assert det.add(50.0)[1]


def test_real_buffer_sees_dropped_pages_as_slow_first_writes() -> None:
    sig = WriteLatencySignal(pages=4096, interval_s=0.02, window_s=30.0, min_spikes=2)
    assert not sig.sample().available
    sig.start()
    try:
        deadline = time.monotonic() + 20
        while sig.detector.baseline() is None:
            assert time.monotonic() < deadline, "no baseline"
            time.sleep(0.05)
        r0 = sig.sample()
        assert r0.available and r0.baseline is not None and r0.baseline > 0
        spikes0 = r0.detail["spikes"]
        assert sig.buffer is not None
        for _ in range(3):
            n = sig.total_passes
            sig.buffer.madvise(mmap.MADV_DONTNEED)
            while sig.total_passes < n + 2:
                assert time.monotonic() < deadline + 20
                time.sleep(0.02)
        r = sig.sample()
    finally:
        sig.stop()
    assert r.anomalous, r
    assert r.detail["spikes"] >= spikes0 + 2
    assert r.detail["max_pass_ms"] > 2 * r.baseline  # type: ignore[operator]
    assert "pre-copy" in r.reason
    assert sig.buffer is None and not sig.sample().available
