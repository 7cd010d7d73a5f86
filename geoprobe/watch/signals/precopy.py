"""Dirty-sync probe: a test for dirty-page tracking that host load alone does not pass.

During pre-copy the hypervisor re-arms dirty tracking at every dirty-bitmap sync: under TCG the
next write to each page takes QEMU's slow "notdirty" path, and write-protecting KVM traps it.
Only the *first* write after a sync is slow; the page is then marked dirty and the next write runs
at full speed. Host preemption of the vCPU or a busy neighbour slows whatever runs at that moment
instead, whichever write it is.

So every ``interval_s`` (0.5 s) the probe visits ``pages`` (1,024) resident pages of distinct
random content, in ``chunks`` (8) of 128, and for each chunk, back to back:

1. reads one byte of every page: the cache line and the TLB entry are warm, and any fault that a
   read also takes (swap, page migration, NUMA hinting) is paid here, not below;
2. writes every page and times it (``first``);
3. writes every page again and times it (``second``).

A chunk is *slow-first* when ``first`` exceeds ``second`` by ``ratio`` (2x) and by
``min_excess_ns`` per page (50 ns). A cycle is a *sync* when all chunks but one are slow-first: a
sync slows every chunk, while a preemption lands in one timed interval of one chunk, and a
uniformly slower CPU (load, frequency, a noisy sibling) slows both writes alike. The signal fires
(``precopy=True``) on ``min_syncs`` syncs within ``window_s``.

Cost: 4 MiB resident (locked when ``RLIMIT_MEMLOCK`` allows, never huge pages), about 8 MiB/s
dirtied (1,024 pages, twice a second), and well under 1 % of a core. It runs in a child process
(``python -m geoprobe.watch.signals.precopy``): a fork of the daemon (a hook, a subprocess
fallback) would write-protect a buffer in the daemon's own memory and look exactly like a sync.

Where it is blind: Intel PML logs writes without a trap, so on such KVM hosts the first write is
not slower; docs/precopy.md lists what each hypervisor shows.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import mmap
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

import numpy as np

from geoprobe.status import ExitStatus
from geoprobe.watch.signals.base import Reading, stop_child

SYNC = "sync"
PARTIAL = "partial"
QUIET = "quiet"


@dataclass(frozen=True, slots=True)
class Cycle:
    """One visit of all chunks: per chunk, the first and the second write's wall time (ns)."""

    time: float  # monotonic seconds
    first_ns: tuple[int, ...]
    second_ns: tuple[int, ...]
    pages: int  # pages per chunk

    def to_line(self) -> str:
        f = ",".join(map(str, self.first_ns))
        s = ",".join(map(str, self.second_ns))
        return f"c {int(self.time * 1e9)} {self.pages} {f} {s}\n"


def parse_line(line: str) -> Cycle | None:
    """A cycle line from the child, or None for anything else (heartbeats, garbage)."""
    parts = line.split()
    if len(parts) != 5 or parts[0] != "c":
        return None
    try:
        t, pages = int(parts[1]), int(parts[2])
        first = tuple(int(x) for x in parts[3].split(","))
        second = tuple(int(x) for x in parts[4].split(","))
    except ValueError:
        return None
    if (
        pages <= 0
        or not first
        or len(first) != len(second)
        or min(first) < 0
        or min(second) < 0
        or t < 0
    ):
        return None
    return Cycle(t / 1e9, first, second, pages)


@dataclass(frozen=True, slots=True)
class Thresholds:
    ratio: float = 2.0  # first write at least this many times the second
    min_excess_ns: float = 50.0  # per page: ~1 us measured under TCG, a KVM trap ~1 us
    quorum_missing: int = 1  # chunks that may stay fast in a sync (one sync can land mid-cycle)


def slow_first(first: int, second: int, pages: int, th: Thresholds) -> bool:
    """Was this chunk's first write slow in the way only re-armed dirty tracking makes it?"""
    return first >= th.ratio * second and first - second >= th.min_excess_ns * pages


def classify(cycle: Cycle, th: Thresholds = Thresholds()) -> str:
    """``sync`` (every chunk but ``quorum_missing``), ``partial`` (some) or ``quiet`` (none)."""
    slow = sum(
        slow_first(f, s, cycle.pages, th)
        for f, s in zip(cycle.first_ns, cycle.second_ns, strict=True)
    )
    need = max(1, len(cycle.first_ns) - th.quorum_missing)
    if slow >= need and len(cycle.first_ns) >= 3:
        return SYNC
    return PARTIAL if slow else QUIET


def excess_per_page_ns(cycle: Cycle) -> float:
    """Median over chunks of (first - second) per page: how slow a first write was."""
    return float(
        statistics.median(
            (f - s) / cycle.pages for f, s in zip(cycle.first_ns, cycle.second_ns, strict=True)
        )
    )


class Sampler:
    """The probe's buffer and one measurement cycle (used by the child and by tests)."""

    def __init__(self, pages: int = 1024, chunks: int = 8, *, lock: bool = True) -> None:
        if chunks < 1 or pages < chunks:
            raise ValueError("need at least one page per chunk")
        self.page_size = mmap.PAGESIZE
        self.chunks = chunks
        self.per_chunk = pages // chunks
        self.pages = self.per_chunk * chunks
        self.buffer = mmap.mmap(
            -1, self.pages * self.page_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
        # Distinct contents: no page is a zero page or a twin that KSM could merge (a merged
        # page is write-protected, and its next write would look like a sync).
        self.buffer.write(os.urandom(len(self.buffer)))
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            try:
                self.buffer.madvise(mmap.MADV_NOHUGEPAGE)
            except OSError:
                pass
        self.locked = lock and _mlock(self.buffer)
        self.view = np.frombuffer(self.buffer, dtype=np.uint8)[:: self.page_size]
        self._value = 0

    def cycle(self) -> Cycle:
        first, second = [], []
        clock = time.perf_counter_ns
        for k in range(self.chunks):
            chunk = self.view[k * self.per_chunk : (k + 1) * self.per_chunk]
            int(chunk.sum())  # read: warm cache and TLB, take any read fault now
            self._value = (self._value + 2) % 256
            t0 = clock()
            chunk[:] = self._value
            t1 = clock()
            chunk[:] = self._value + 1
            t2 = clock()
            first.append(t1 - t0)
            second.append(t2 - t1)
        return Cycle(time.monotonic(), tuple(first), tuple(second), self.per_chunk)

    def close(self) -> None:
        del self.view
        self.buffer.close()


def _mlock(buf: mmap.mmap) -> bool:
    """Keep the pages resident, so reclaim cannot make a first write fault; best effort."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    ok = libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(len(buf))) == 0
    return bool(ok)


def run_loop(
    stopped: Callable[[], bool],
    emit: Callable[[str], None],
    *,
    pages: int,
    chunks: int,
    interval_s: float,
) -> None:
    sampler = Sampler(pages, chunks)
    emit(f"i {sampler.pages} {sampler.chunks} {int(sampler.locked)}\n")
    n, c0, w0 = 0, time.process_time_ns(), time.monotonic_ns()
    next_beat = time.monotonic() + 1.0
    try:
        while not stopped():
            emit(sampler.cycle().to_line())
            n += 1
            if time.monotonic() >= next_beat:
                emit(f"b {n} {time.process_time_ns() - c0} {time.monotonic_ns() - w0}\n")
                next_beat += 1.0
            time.sleep(interval_s)
    finally:
        sampler.close()


class DirtySyncSignal:
    """The dirty-sync probe (background; ``start()``/``stop()``)."""

    decisive = True

    def __init__(
        self,
        name: str = "dirty_sync",
        *,
        pages: int = 1024,
        chunks: int = 8,
        interval_s: float = 0.5,
        window_s: float = 120.0,
        min_syncs: int = 1,
        thresholds: Thresholds = Thresholds(),
    ) -> None:
        self.name = name
        self.pages = pages
        self.chunks = chunks
        self.interval_s = interval_s
        self.window_s = window_s
        self.min_syncs = min_syncs
        self.thresholds = thresholds
        self.proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cycles: deque[tuple[Cycle, str]] = deque(maxlen=max(100, int(window_s / interval_s)))
        self._counts = {SYNC: 0, PARTIAL: 0, QUIET: 0}
        self._beat: tuple[int, int, int] | None = None
        self._locked: bool | None = None
        self._error = ""
        # Set on every sync, so a daemon can measure at once instead of at its next round.
        self.changed = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._error = ""
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "geoprobe.watch.signals.precopy",
                    "--pages",
                    str(self.pages),
                    "--chunks",
                    str(self.chunks),
                    "--interval",
                    str(self.interval_s),
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self._error = f"cannot start the dirty-sync probe: {exc}"
            return
        self._thread = threading.Thread(target=self._read, name="dirty-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stop_child(self.proc, self._thread)
        self._thread = None
        self.proc = None

    def reset(self) -> None:
        """Forget the cycles seen (after a confirmed move: its syncs are history)."""
        with self._lock:
            self._cycles.clear()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[str] = self.proc.stdout
        for line in out:
            self.feed(line)
        if not self._stop.is_set():
            self._error = f"dirty-sync probe exited (status {self.proc.poll()})"

    def feed(self, line: str) -> None:
        """One line of the child's output."""
        cycle = parse_line(line)
        if cycle is not None:
            verdict = classify(cycle, self.thresholds)
            with self._lock:
                self._cycles.append((cycle, verdict))
                self._counts[verdict] += 1
            if verdict == SYNC:
                self.changed.set()
            return
        parts = line.split()
        try:
            if parts[:1] == ["b"] and len(parts) == 4:
                self._beat = (int(parts[1]), int(parts[2]), int(parts[3]))
            elif parts[:1] == ["i"] and len(parts) == 4:
                self._locked = parts[3] == "1"
        except ValueError:
            pass

    def cycles(self, since: float) -> list[tuple[Cycle, str]]:
        with self._lock:
            return [(c, v) for c, v in self._cycles if c.time >= since]

    def sample(self) -> Reading:
        if self._error:
            return Reading.unavailable(self.name, self._error, unit="ns/page")
        if self._thread is None:
            return Reading.unavailable(self.name, "not started", unit="ns/page")
        now = time.monotonic()
        recent = self.cycles(now - self.window_s)
        if not recent:
            return Reading(self.name, unit="ns/page", reason="no cycles yet")
        syncs = [c for c, v in recent if v == SYNC]
        quiet = [excess_per_page_ns(c) for c, v in recent if v == QUIET]
        base = statistics.median(quiet) if quiet else None
        worst = max(excess_per_page_ns(c) for c, _ in recent)
        anomalous = len(syncs) >= self.min_syncs
        detail: dict[str, object] = {
            "cycles": len(recent),
            "syncs": len(syncs),
            "partial": sum(v == PARTIAL for _, v in recent),
            "sync_times_ago_s": [round(now - c.time, 2) for c in syncs[-10:]],
            "totals": dict(self._counts),
        }
        if self._locked is not None:
            detail["locked"] = self._locked
        if self._beat is not None and self._beat[2] > 0:
            detail["cpu_share"] = round(self._beat[1] / self._beat[2], 5)
        reason = ""
        if anomalous:
            reason = (
                f"{len(syncs)} dirty syncs in {self.window_s:g} s: every chunk's first write "
                f"slow (up to {worst:.0f} ns/page more than its second): dirty-page tracking "
                "(pre-copy)"
            )
        score = 0.0
        if anomalous and base is not None:
            score = max(0.0, (worst - base) / max(self.thresholds.min_excess_ns, 1.0))
        return Reading(
            self.name,
            value=excess_per_page_ns(recent[-1][0]),
            baseline=base,
            score=score if math.isfinite(score) else 0.0,
            anomalous=anomalous,
            unit="ns/page",
            reason=reason,
            detail=detail,
            precopy=anomalous,
        )


def _main(argv: Sequence[str] | None = None) -> int:
    """The child: cycle lines and heartbeats on stdout until the reader goes away or SIGTERM."""
    ap = argparse.ArgumentParser(prog="python -m geoprobe.watch.signals.precopy")
    ap.add_argument("--pages", type=int, default=1024)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--interval", type=float, default=0.5)
    args = ap.parse_args(argv)
    out = sys.stdout
    broken = False

    def emit(line: str) -> None:
        nonlocal broken
        try:
            out.write(line)
            out.flush()
        except (BrokenPipeError, ValueError):  # the daemon died: stop at the next cycle
            broken = True

    try:
        run_loop(
            lambda: broken,
            emit,
            pages=args.pages,
            chunks=args.chunks,
            interval_s=args.interval,
        )
    except KeyboardInterrupt:
        pass
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(_main())
