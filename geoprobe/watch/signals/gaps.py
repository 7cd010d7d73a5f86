"""Execution gaps: a high-rate loop on the monotonic clock notices when the guest stops running.

QEMU's auto-converge throttles a migrating guest by putting each vCPU to sleep after every 10 ms
of run time (``CPU_THROTTLE_TIMESLICE``), for ``10 ms * p / (1 - p)`` at throttle ``p`` (20-99 %).
Inside the guest this shows as *regular* gaps: a gap, ~10 ms of running, a gap of the same
length, ... Random scheduling stalls are irregular, so the signal fires on the periodicity, not
on the gaps alone. (The final switchover pause itself is hidden: the hypervisor restores the
guest's clocks, so the monotonic clock shows no gap there; the clock signal sees it instead.)

The loop sleeps ``period_s`` (default 1 ms) between two reads of ``CLOCK_MONOTONIC``; a gap is
the excess of one iteration over the sleep. Its duty cycle is small (the thread is asleep >95 %
of the time; see ``detail["cpu_share"]``). By default it runs in a child process: a Python thread
would see the GIL held by the daemon's own work as gaps of up to ``sys.getswitchinterval()``.
A busy guest adds random stalls of its own; ``realtime=True`` (root) runs the child under
SCHED_FIFO so that only stops of the whole vCPU remain.
The child writes one line per gap (``start_ns length_ns``) and a heartbeat with its CPU time.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from geoprobe.status import ExitStatus
from geoprobe.watch.signals.base import Reading, robust_z, stop_child

QEMU_THROTTLE_SLICE_MS = 10.0


@dataclass(frozen=True, slots=True)
class Gap:
    start: float  # monotonic seconds when the loop last ran before the gap
    length_ms: float

    @property
    def end(self) -> float:
        return self.start + self.length_ms / 1000


@dataclass(frozen=True, slots=True)
class Throttle:
    """A regular gap pattern: ``share`` of the time the guest was stopped."""

    share: float
    run_ms: float
    gap_ms: float
    count: int
    regularity: float  # share of run intervals within tolerance of their median

    def to_json(self) -> dict[str, float]:
        return {
            "share": round(self.share, 3),
            "run_ms": round(self.run_ms, 2),
            "gap_ms": round(self.gap_ms, 2),
            "count": self.count,
            "regularity": round(self.regularity, 3),
        }


def find_throttle(
    gaps: Sequence[Gap],
    *,
    slice_ms: float = QEMU_THROTTLE_SLICE_MS,
    min_count: int = 5,
    tolerance: float = 0.35,
    min_regularity: float = 0.6,
    length_tolerance: float = 0.5,
    min_length_regularity: float = 0.5,
) -> Throttle | None:
    """Is there a train of gaps separated by ~``slice_ms`` of run time, with similar lengths?

    A busy guest adds short, random stalls of its own between the throttle's gaps, so the test is
    repeated on the gaps above a few length thresholds (the quartiles of the observed lengths),
    shortest first. For each, the run intervals between successive gaps must have a median within
    a factor of two of ``slice_ms`` and most of them must lie within ``tolerance`` of it; the gaps
    must be of similar length. The loop's own granularity (~1 ms) is in the tolerance.
    """
    if len(gaps) < min_count:
        return None
    ordered = sorted(gaps, key=lambda g: g.start)
    lengths = sorted({round(g.length_ms, 1) for g in ordered})
    thresholds = sorted({lengths[int(q * (len(lengths) - 1))] for q in (0.0, 0.25, 0.5, 0.75)})
    for threshold in thresholds:
        big = [g for g in ordered if g.length_ms >= threshold - 1e-9]
        runs = [r for r in ((b.start - a.end) * 1000 for a, b in itertools.pairwise(big)) if r > 0]
        if len(big) < min_count or len(runs) < min_count - 1:
            continue
        run_med = statistics.median(runs)
        if not slice_ms / 2 <= run_med <= slice_ms * 2:
            continue
        tol = max(tolerance * run_med, 1.5)
        regular = sum(1 for r in runs if abs(r - run_med) <= tol) / len(runs)
        len_med = statistics.median(g.length_ms for g in big)
        len_tol = max(length_tolerance * len_med, 1.5)
        len_regular = sum(1 for g in big if abs(g.length_ms - len_med) <= len_tol) / len(big)
        if regular >= min_regularity and len_regular >= min_length_regularity:
            return Throttle(len_med / (len_med + run_med), run_med, len_med, len(big), regular)
    return None


def run_loop(
    stop: Callable[[], bool],
    on_gap: Callable[[int, int], None],
    on_beat: Callable[[int, int, int], None],
    period_s: float = 0.001,
    min_gap_ms: float = 1.5,
    beat_s: float = 1.0,
) -> None:
    """The sampling loop. ``on_gap(start_ns, excess_ns)``; ``on_beat(iterations, cpu_ns,
    wall_ns)``."""
    period_ns = int(period_s * 1e9)
    min_ns = int(min_gap_ms * 1e6)
    clock = time.monotonic_ns
    start_wall = prev = clock()
    start_cpu = time.thread_time_ns()
    next_beat = prev + int(beat_s * 1e9)
    n = 0
    while not stop():
        time.sleep(period_s)
        now = clock()
        n += 1
        excess = now - prev - period_ns
        if excess >= min_ns:
            on_gap(prev, excess)
        prev = now
        if now >= next_beat:
            on_beat(n, time.thread_time_ns() - start_cpu, now - start_wall)
            next_beat = now + int(beat_s * 1e9)


def _make_realtime(pid: int) -> bool:
    """SCHED_FIFO at the lowest priority: the sampler then sees only stops of the whole vCPU
    (the hypervisor's), not the guest's own load. It sleeps >95 % of the time, so it starves no one.
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):
        return False
    return True


class GapSignal:
    """Execution gaps and auto-converge throttling (background; ``start()``/``stop()``)."""

    decisive = True

    def __init__(
        self,
        name: str = "execution_gaps",
        *,
        period_s: float = 0.001,
        min_gap_ms: float = 1.5,
        report_gap_ms: float = 5.0,
        window_s: float = 10.0,
        mode: str = "process",
        slice_ms: float = QEMU_THROTTLE_SLICE_MS,
        realtime: bool = False,
        hold_s: float = 120.0,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', not {mode!r}")
        self.name = name
        self.period_s = period_s
        self.min_gap_ms = min_gap_ms
        self.report_gap_ms = report_gap_ms
        self.window_s = window_s
        self.mode = mode
        self.slice_ms = slice_ms
        self.realtime = realtime
        self.realtime_applied = False
        self.hold_s = hold_s
        self._episodes: deque[tuple[float, Throttle]] = deque(maxlen=1000)  # (monotonic, throttle)
        self._gaps: deque[Gap] = deque(maxlen=100_000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._started = 0.0
        self._beat: tuple[int, int, int] | None = None  # iterations, cpu ns, wall ns
        self._history: deque[float] = deque(maxlen=360)  # stall share per sample() call
        self._error = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._error = ""
        self._started = time.monotonic()
        if self.mode == "thread":
            target: Callable[[], None] = self._run_thread
        else:
            try:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "geoprobe.watch.signals.gaps",
                        "--period",
                        str(self.period_s),
                        "--min-gap-ms",
                        str(self.min_gap_ms),
                    ],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                )
            except OSError as exc:
                self._error = f"cannot start the gap sampler: {exc}"
                return
            if self.realtime:
                self.realtime_applied = _make_realtime(self.proc.pid)
            target = self._read_child
        self._thread = threading.Thread(target=target, name="gap-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stop_child(self.proc, self._thread)
        self._thread = None
        self.proc = None

    def reset(self) -> None:
        """Forget gaps and held episodes seen so far: after a confirmed move the watch compares
        with the new host, and an episode of the finished migration must not raise the next one."""
        with self._lock:
            self._episodes.clear()
            self._gaps.clear()

    def _add_gap(self, start_ns: int, excess_ns: int) -> None:
        with self._lock:
            self._gaps.append(Gap(start_ns / 1e9, excess_ns / 1e6))

    def _set_beat(self, n: int, cpu: int, wall: int) -> None:
        """Every heartbeat (1 s), look for throttling, so that an episode between two of the
        daemon's rounds is kept for ``hold_s`` rather than missed."""
        self._beat = (n, cpu, wall)
        throttle = find_throttle(self.gaps(), slice_ms=self.slice_ms)
        if throttle is not None:
            with self._lock:
                self._episodes.append((time.monotonic(), throttle))

    def _run_thread(self) -> None:
        run_loop(self._stop.is_set, self._add_gap, self._set_beat, self.period_s, self.min_gap_ms)

    def _read_child(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[str] = self.proc.stdout
        for line in out:
            parts = line.split()
            try:
                if parts[0] == "g" and len(parts) == 3:
                    self._add_gap(int(parts[1]), int(parts[2]))
                elif parts[0] == "b" and len(parts) == 4:
                    self._set_beat(int(parts[1]), int(parts[2]), int(parts[3]))
            except (ValueError, IndexError):
                continue
        if not self._stop.is_set():
            self._error = f"gap sampler exited (status {self.proc.poll()})"

    # -- reading ---------------------------------------------------------------------------------

    def gaps(self, since: float | None = None) -> list[Gap]:
        """Gaps that began after ``since`` (monotonic seconds; default the last ``window_s``)."""
        since = time.monotonic() - self.window_s if since is None else since
        with self._lock:
            return [g for g in self._gaps if g.start >= since]

    def sample(self) -> Reading:
        if self._error:
            return Reading.unavailable(self.name, self._error, unit="%")
        if self._thread is None:
            return Reading.unavailable(self.name, "not started", unit="%")
        now = time.monotonic()
        span = min(self.window_s, now - self._started)
        if span <= 0:
            return Reading.unavailable(self.name, "no samples yet", unit="%")
        gaps = self.gaps(now - span)
        lost = sum(g.length_ms for g in gaps) / 1000
        share = 100 * lost / span
        z, base, _ = robust_z(share, list(self._history), floor=0.5)
        self._history.append(share)
        throttle = find_throttle(gaps, slice_ms=self.slice_ms)
        with self._lock:
            held = [(t, th) for t, th in self._episodes if t >= now - self.hold_s]
        if throttle is None and held:
            throttle = max(held, key=lambda e: e[1].share)[1]
        big = [g for g in gaps if g.length_ms >= self.report_gap_ms]
        detail: dict[str, object] = {
            "window_s": round(span, 3),
            "gaps": len(gaps),
            f"gaps_over_{self.report_gap_ms:g}ms": len(big),
            "max_gap_ms": round(max((g.length_ms for g in gaps), default=0.0), 3),
            "throttle": throttle.to_json() if throttle else None,
            "throttle_seconds_ago": round(now - held[-1][0], 1) if held else None,
        }
        if self._beat is not None:
            n, cpu, wall = self._beat
            if wall > 0:
                detail["loop_rate_hz"] = round(n / (wall / 1e9), 1)
                detail["cpu_share"] = round(cpu / wall, 4)
        if self.realtime:
            detail["realtime"] = self.realtime_applied
        reason = ""
        if throttle:
            reason = (
                f"regular gaps of {throttle.gap_ms:.1f} ms every {throttle.run_ms:.1f} ms of run time: "
                f"throttled ~{100 * throttle.share:.0f}% (auto-converge?)"
            )
        return Reading(
            self.name,
            value=share,
            baseline=None if math.isnan(base) else base,
            score=max(z, 0.0),
            anomalous=throttle is not None,
            unit="%",
            reason=reason,
            detail=detail,
        )


def _main(argv: Sequence[str] | None = None) -> int:
    """The child process: gap lines and heartbeats on stdout until the reader goes away or
    SIGTERM."""
    ap = argparse.ArgumentParser(prog="python -m geoprobe.watch.signals.gaps")
    ap.add_argument("--period", type=float, default=0.001)
    ap.add_argument("--min-gap-ms", type=float, default=1.5)
    args = ap.parse_args(argv)
    out = sys.stdout
    broken = False

    def emit(line: str) -> None:
        nonlocal broken
        try:
            out.write(line)
            out.flush()
        except (BrokenPipeError, ValueError):  # the daemon died: stop within a heartbeat
            broken = True

    try:
        run_loop(
            lambda: broken,
            lambda start, excess: emit(f"g {start} {excess}\n"),
            lambda n, cpu, wall: emit(f"b {n} {cpu} {wall}\n"),
            args.period,
            args.min_gap_ms,
        )
    except KeyboardInterrupt:
        pass
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(_main())
