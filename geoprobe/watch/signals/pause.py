"""Whole-VM pause: one jump of CLOCK_MONOTONIC seen by every vCPU at once, not paid as steal.

Newer KVM can advance the guest's clock across a migration's final pause (``KVM_CLOCK_REALTIME``).
The clock-offset step against the landmarks then vanishes, and the pause shows instead as one
jump of CLOCK_MONOTONIC. A sleeper that sleeps ``period_s`` and wakes ``min_gap_ms`` late saw
such a jump, but so does one the guest or the host merely preempted. What sets a pause apart:

* **every vCPU at once**: one sleeper thread pinned to each online CPU; a pause stops them all,
  a preemption stops one vCPU thread (with a single vCPU this test cannot tell them apart, and
  the pause is then reported but not decisive);
* **not steal**: a host that preempts a vCPU charges the wait to that vCPU's steal time (KVM);
  a stopped VM's vCPUs do not wait to run, so a pause adds none;
* **not a suspend**: CLOCK_BOOTTIME counts a suspend and CLOCK_MONOTONIC does not; a pause moves
  both alike.

The sleepers run in a child process (``python -m geoprobe.watch.signals.pause``), so the daemon's
own GIL holds are not taken for gaps. It writes one line per gap:
``g <cpu> <end monotonic ns> <gap ns> <boottime - monotonic change ns> <steal ns>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from geoprobe.status import ExitStatus
from geoprobe.watch.signals.base import Reading, stop_child

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Gap:
    cpu: int
    end: float  # monotonic seconds at wake-up
    gap_ms: float  # beyond the sleep
    suspend_ms: float  # how much more CLOCK_BOOTTIME moved than CLOCK_MONOTONIC
    steal_ms: float  # steal time this CPU accrued over the gap

    @property
    def start(self) -> float:
        return self.end - self.gap_ms / 1000

    def to_line(self) -> str:
        return (
            f"g {self.cpu} {int(self.end * 1e9)} {int(self.gap_ms * 1e6)} "
            f"{int(self.suspend_ms * 1e6)} {int(self.steal_ms * 1e6)}\n"
        )


def parse_gap(line: str) -> Gap | None:
    parts = line.split()
    if len(parts) != 6 or parts[0] != "g":
        return None
    try:
        cpu, end, gap, susp, steal = (int(p) for p in parts[1:])
    except ValueError:
        return None
    if cpu < 0 or end < 0 or gap < 0 or steal < 0:
        return None
    return Gap(cpu, end / 1e9, gap / 1e6, susp / 1e6, steal / 1e6)


@dataclass(frozen=True, slots=True)
class Pause:
    end: float
    gap_ms: float  # the shortest of the CPUs' gaps: what the whole VM lost at least
    cpus: int
    decisive: bool  # seen on two or more CPUs


def find_pauses(
    gaps: Sequence[Gap],
    cpus: int,
    *,
    min_gap_ms: float = 40.0,
    tolerance_ms: float = 20.0,
    max_steal_share: float = 0.5,
    max_suspend_ms: float = 5.0,
) -> list[Pause]:
    """Gaps of at least ``min_gap_ms`` that every one of ``cpus`` sleepers saw, ending within
    ``tolerance_ms`` of each other, neither paid as steal nor a suspend."""
    clean = [
        g
        for g in gaps
        if g.gap_ms >= min_gap_ms
        and g.steal_ms <= max_steal_share * g.gap_ms
        and abs(g.suspend_ms) <= max_suspend_ms
    ]
    clean.sort(key=lambda g: g.end)
    out: list[Pause] = []
    i = 0
    while i < len(clean):
        group = [clean[i]]
        j = i + 1
        while j < len(clean) and clean[j].end - clean[i].end <= tolerance_ms / 1000:
            group.append(clean[j])
            j += 1
        seen = {g.cpu for g in group}
        if len(seen) >= cpus:
            out.append(
                Pause(
                    end=max(g.end for g in group),
                    gap_ms=min(g.gap_ms for g in group),
                    cpus=len(seen),
                    decisive=len(seen) >= 2,
                )
            )
            i = j
        else:
            i += 1
    return out


def _steal_ns(cpu: int) -> int:
    """This CPU's steal time from /proc/stat (0 where the hypervisor reports none)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    fields = line.split()
                    return int(fields[8]) * 1_000_000_000 // USER_HZ if len(fields) > 8 else 0
    except (OSError, ValueError):
        pass
    return 0


def sleeper(
    cpu: int,
    period_s: float,
    min_gap_ms: float,
    emit: Callable[[str], None],
    stopped: Callable[[], bool],
) -> None:
    try:
        os.sched_setaffinity(0, {cpu})  # this thread only
    except OSError:
        pass

    def boot() -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    mono = time.monotonic_ns
    period_ns, min_ns = int(period_s * 1e9), int(min_gap_ms * 1e6)
    time.sleep(period_s)  # the first wake-up waits for the thread's start: not a gap
    steal = _steal_ns(cpu)
    m0, b0 = mono(), boot()
    while not stopped():
        time.sleep(period_s)
        m1, b1 = mono(), boot()
        gap = m1 - m0 - period_ns
        if gap >= min_ns:
            s1 = _steal_ns(cpu)
            suspend = (b1 - b0) - (m1 - m0)
            emit(Gap(cpu, m1 / 1e9, gap / 1e6, suspend / 1e6, (s1 - steal) / 1e6).to_line())
            steal = s1
        m0, b0 = m1, b1


class PauseSignal:
    """Whole-VM pauses (background; ``start()``/``stop()``)."""

    decisive = True

    def __init__(
        self,
        name: str = "vm_pause",
        *,
        period_s: float = 0.02,
        min_gap_ms: float = 40.0,
        hold_s: float = 300.0,
    ) -> None:
        self.name = name
        self.period_s = period_s
        self.min_gap_ms = min_gap_ms
        self.hold_s = hold_s
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        self.proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._gaps: deque[Gap] = deque(maxlen=10_000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error = ""
        self.changed = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "geoprobe.watch.signals.pause",
                    "--period",
                    str(self.period_s),
                    "--min-gap-ms",
                    str(self.min_gap_ms / 2),
                    "--cpus",
                    ",".join(map(str, self.cpus)),
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self._error = f"cannot start the pause sampler: {exc}"
            return
        self._thread = threading.Thread(target=self._read, name="vm-pause", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stop_child(self.proc, self._thread)
        self._thread = None
        self.proc = None

    def reset(self) -> None:
        with self._lock:
            self._gaps.clear()

    def feed(self, line: str) -> None:
        g = parse_gap(line)
        if g is None:
            return
        with self._lock:
            self._gaps.append(g)
        if g.gap_ms >= self.min_gap_ms:
            self.changed.set()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[str] = self.proc.stdout
        for line in out:
            self.feed(line)
        if not self._stop.is_set():
            self._error = f"pause sampler exited (status {self.proc.poll()})"

    def pauses(self) -> list[Pause]:
        now = time.monotonic()
        with self._lock:
            gaps = [g for g in self._gaps if now - g.end <= self.hold_s]
        return find_pauses(gaps, len(self.cpus), min_gap_ms=self.min_gap_ms)

    def sample(self) -> Reading:
        if self._error:
            return Reading.unavailable(self.name, self._error, unit="ms")
        if self._thread is None:
            return Reading.unavailable(self.name, "not started", unit="ms")
        pauses = self.pauses()
        now = time.monotonic()
        worst = max(pauses, key=lambda p: p.gap_ms) if pauses else None
        decisive = any(p.decisive for p in pauses)
        reason = ""
        if worst is not None:
            reason = (
                f"every vCPU ({worst.cpus}) stopped {worst.gap_ms:.0f} ms at once, not as steal: "
                "a whole-VM pause (a switchover whose clock step the hypervisor hid?)"
            )
        return Reading(
            self.name,
            value=worst.gap_ms if worst else 0.0,
            baseline=0.0,
            score=worst.gap_ms / self.min_gap_ms if worst else 0.0,
            anomalous=bool(pauses),
            unit="ms",
            decisive=decisive,
            reason=reason,
            detail={
                "cpus": len(self.cpus),
                "pauses": [
                    {"ago_s": round(now - p.end, 2), "ms": round(p.gap_ms, 1), "cpus": p.cpus}
                    for p in pauses[-5:]
                ],
            },
        )


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m geoprobe.watch.signals.pause")
    ap.add_argument("--period", type=float, default=0.02)
    ap.add_argument("--min-gap-ms", type=float, default=20.0)
    ap.add_argument("--cpus", default="0")
    args = ap.parse_args(argv)
    lock = threading.Lock()
    broken = threading.Event()

    def emit(line: str) -> None:
        with lock:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                broken.set()

    threads = [
        threading.Thread(
            target=sleeper,
            args=(int(c), args.period, args.min_gap_ms, emit, broken.is_set),
            daemon=True,
        )
        for c in args.cpus.split(",")
    ]
    for t in threads:
        t.start()
    try:
        while not broken.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(_main())
