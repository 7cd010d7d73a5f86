"""The host's side of a run: the vCPU thread's wait for a CPU, and how fast the guest dirties RAM.

A suspicion inside the guest means something only when the host shows its cause. Dirty syncs
(QMP's `dirty-sync-count`) are a migration; run delay of the vCPU thread
(`/proc/<pid>/task/<tid>/schedstat`, second field: nanoseconds runnable but not running) is host
load, which TCG never reports to the guest as steal time. Without a migration QMP's
`calc-dirty-rate` (page sampling, any accelerator) measures how fast the guest dirties memory: in an
idle control that is geoprobe's own cost to a future migration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .qmp import QMPError
from .vm import QemuProcess

# Pages sampled per GiB by calc-dirty-rate: QEMU's maximum, so a 512 MiB guest is sampled at 2048
# pages and one changed page reads as 0.25 MB/s over a 1 s window.
SAMPLE_PAGES = 4096


def read_schedstat(pid: int, tid: int) -> tuple[int, int, int] | None:
    """(ns on a CPU, ns runnable but waiting, timeslices) of one thread, or None if it is gone."""
    try:
        fields = open(f"/proc/{pid}/task/{tid}/schedstat").read().split()  # noqa: SIM115
        return int(fields[0]), int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class HostMonitor:
    """Sampled from the lab's polling loops; rate-limited, so calling it often costs nothing."""

    period_s: float = 0.25
    calc_time_s: int = 1
    schedstat: list[dict[str, Any]] = field(default_factory=list)  # t, vm, tid, run_ns, wait_ns
    dirty_rates: list[dict[str, Any]] = field(default_factory=list)  # t, vm, mb_s (calc-dirty-rate)
    vmgenid: dict[str, str | None] = field(default_factory=dict)  # src/dst generation IDs
    _last: float = 0.0
    # vm name -> monotonic time its calc-dirty-rate started
    _measuring: dict[str, float] = field(default_factory=dict)

    def sample(self, vms: Sequence[QemuProcess | None], measure_dirty: bool = False) -> None:
        now = time.monotonic()
        if now - self._last < self.period_s:
            return
        self._last = now
        t = time.time()
        for vm in vms:
            if vm is None or vm.proc is None or not vm.alive():
                continue
            for tid in vm.vcpu_threads():
                st = read_schedstat(vm.proc.pid, tid)
                if st is not None:
                    self.schedstat.append(
                        {"t": t, "vm": vm.name, "tid": tid, "run_ns": st[0], "wait_ns": st[1]}
                    )
            if measure_dirty and not vm.incoming:
                self._dirty_rate(vm, now, t)

    def _dirty_rate(self, vm: QemuProcess, now: float, t: float) -> None:
        if vm.qmp is None:
            return
        try:
            started = self._measuring.get(vm.name)
            if started is not None:
                if now - started < self.calc_time_s + 0.1:
                    return
                res = vm.qmp.execute("query-dirty-rate")
                if res.get("status") != "measured":
                    return
                rate = res.get("dirty-rate")
                self.dirty_rates.append(
                    {"t": t, "vm": vm.name, "mb_s": rate, "calc_s": self.calc_time_s}
                )
            vm.qmp.execute("calc-dirty-rate", calc_time=self.calc_time_s, sample_pages=SAMPLE_PAGES)
            self._measuring[vm.name] = now
        except QMPError:  # an older QEMU without the command: the report says "not measured"
            self._measuring[vm.name] = float("inf")

    def stop_measuring(self) -> None:
        """Forget a calc-dirty-rate in flight (a migration is about to start)."""
        self._measuring.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "schedstat": self.schedstat,
            "dirty_rates": self.dirty_rates,
            "vmgenid": self.vmgenid,
        }


@dataclass
class HostLoad:
    """CPU burners on the host for a loaded-host control; each stopped by its own pid."""

    count: int = 1
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> HostLoad:
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
