"""First-write latency: dirty-page tracking during pre-copy makes the first write to a page slow.

During pre-copy the hypervisor write-protects the guest's memory at every dirty-bitmap sync, so
the next write to each page traps to the hypervisor. A pass that writes one byte to every page of
a resident buffer then takes several times longer than usual. (Measured on QEMU TCG: a pass over
16,384 pages rose from 2.0 ms to 6-9 ms at every dirty sync while a migration was active, and never
before.) This is the one signal that warns of a migration *before* its switchover.

Each pass is timed in thread CPU time, not wall time: being preempted inside the guest adds wall
time but no CPU time, while a trap to the hypervisor is charged to the running thread. A pass is
a *spike* when it is ``spike_ratio`` times the rolling median and ``z_min`` robust standard
deviations above it; the signal fires on ``min_spikes`` spikes within ``window_s``, since one
spike can be a cache or TLB accident. Cost: ``pages`` x 4 KiB resident (64 MiB by default) and
one pass (~0.1 ms on a host, ~2 ms under TCG) every ``interval_s`` (0.1 s): about 1-2 % of a core.
"""

from __future__ import annotations

import math
import mmap
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from geoprobe.watch.signals.base import MAD_TO_SIGMA, Reading


@dataclass(frozen=True, slots=True)
class Pass:
    time: float  # monotonic seconds at the end of the pass
    cpu_ms: float
    wall_ms: float
    z: float = 0.0
    spike: bool = False


class SpikeDetector:
    """Rolling median baseline of pass times; flags passes far above it (pure: feed it numbers)."""

    def __init__(
        self,
        history: int = 300,
        spike_ratio: float = 2.0,
        z_min: float = 6.0,
        min_history: int = 10,
        floor_ms: float = 0.02,
        floor_share: float = 0.05,
    ) -> None:
        self.spike_ratio = spike_ratio
        self.z_min = z_min
        self.min_history = min_history
        self.floor_ms = floor_ms
        self.floor_share = floor_share
        self._history: deque[float] = deque(maxlen=history)
        self._baseline: tuple[float, float] | None = None
        self._stale = 0

    def baseline(self) -> tuple[float, float] | None:
        """(median, scale) of the history, recomputed every few passes to keep passes cheap."""
        if len(self._history) < self.min_history:
            return None
        if self._baseline is None or self._stale >= 10:
            vals = list(self._history)
            med = statistics.median(vals)
            mad = statistics.median(abs(v - med) for v in vals)
            self._baseline = (med, max(MAD_TO_SIGMA * mad, self.floor_ms, self.floor_share * med))
            self._stale = 0
        return self._baseline

    def add(self, value: float) -> tuple[float, bool]:
        """Score one pass against the history before it, then add it. Returns (z, spike)."""
        base = self.baseline()
        z, spike = 0.0, False
        if base is not None:
            med, scale = base
            z = (value - med) / scale
            spike = value >= self.spike_ratio * med and z >= self.z_min
        if not spike:  # spikes stay out of the baseline, so a long pre-copy cannot become normal
            self._history.append(value)
            self._stale += 1
        return z, spike


class WriteLatencySignal:
    """First-write latency over a resident buffer (background; ``start()``/``stop()``).

    ``buffer`` is public so that tests and the lab can disturb it for real (``madvise``).
    """

    decisive = True

    def __init__(
        self,
        name: str = "first_write",
        *,
        pages: int = 16_384,
        interval_s: float = 0.1,
        window_s: float = 60.0,
        min_spikes: int = 2,
        detector: SpikeDetector | None = None,
    ) -> None:
        self.name = name
        self.pages = pages
        self.interval_s = interval_s
        self.window_s = window_s
        self.min_spikes = min_spikes
        self.detector = detector or SpikeDetector()
        self.page_size = mmap.PAGESIZE
        self.buffer: mmap.mmap | None = None
        self._passes: deque[Pass] = deque(
            maxlen=max(100, int(window_s / max(interval_s, 1e-3)) + 10)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error = ""
        self._cpu_ns = 0
        self._started = 0.0
        self.total_passes = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self.buffer = mmap.mmap(
                -1, self.pages * self.page_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )
        except (OSError, ValueError) as exc:
            self._error = f"cannot map {self.pages} pages: {exc}"
            return
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="first-write", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None

    def _run(self) -> None:
        assert self.buffer is not None
        view = np.frombuffer(self.buffer, dtype=np.uint8)[:: self.page_size]
        value = 0
        view[:] = 1  # fault every page in once; this first pass measures nothing
        try:
            while not self._stop.wait(self.interval_s):
                value = value % 250 + 2  # a new value every pass: every write really changes memory
                c0 = time.thread_time_ns()
                w0 = time.perf_counter_ns()
                view[:] = value
                w1 = time.perf_counter_ns()
                c1 = time.thread_time_ns()
                cpu_ms, wall_ms = (c1 - c0) / 1e6, (w1 - w0) / 1e6
                z, spike = self.detector.add(cpu_ms)
                with self._lock:
                    self._passes.append(Pass(time.monotonic(), cpu_ms, wall_ms, z, spike))
                    self._cpu_ns += c1 - c0
                    self.total_passes += 1
        except (ValueError, OSError) as exc:  # the buffer went away under us
            if not self._stop.is_set():
                self._error = f"first-write sampler stopped: {exc}"
        finally:
            del view

    def reset(self) -> None:
        """Forget the passes seen so far (after a confirmed move: its dirty syncs are history)."""
        with self._lock:
            self._passes.clear()

    def passes(self) -> list[Pass]:
        with self._lock:
            return list(self._passes)

    def sample(self) -> Reading:
        if self._error:
            return Reading.unavailable(self.name, self._error, unit="ms")
        if self._thread is None:
            return Reading.unavailable(self.name, "not started", unit="ms")
        now = time.monotonic()
        recent = [p for p in self.passes() if p.time >= now - self.window_s]
        if not recent:
            return Reading(self.name, unit="ms", reason="no passes yet")
        base = self.detector.baseline()
        spikes = [p for p in recent if p.spike]
        latest = recent[-1]
        worst = max(recent, key=lambda p: p.z)
        anomalous = len(spikes) >= self.min_spikes
        elapsed = max(now - self._started, 1e-9)
        detail: dict[str, object] = {
            "pages": self.pages,
            "passes": len(recent),
            "spikes": len(spikes),
            "max_pass_ms": round(max(p.cpu_ms for p in recent), 4),
            "median_wall_ms": round(statistics.median(p.wall_ms for p in recent), 4),
            "spike_times_ago_s": [round(now - p.time, 2) for p in spikes[-10:]],
            "cpu_share": round(self._cpu_ns / 1e9 / elapsed, 5),
        }
        reason = (
            f"{len(spikes)} slow first-write passes in {self.window_s:g} s "
            f"(up to {worst.cpu_ms:.2f} ms vs {base[0]:.2f} ms): dirty-page tracking (pre-copy?)"
            if anomalous and base
            else ""
        )
        return Reading(
            self.name,
            value=latest.cpu_ms,
            baseline=base[0] if base else None,
            score=max(worst.z, 0.0) if math.isfinite(worst.z) else 0.0,
            anomalous=anomalous,
            unit="ms",
            reason=reason,
            detail=detail,
        )
