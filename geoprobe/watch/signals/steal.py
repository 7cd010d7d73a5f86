"""Steal time from /proc/stat: the share of time the hypervisor ran something else on our vCPUs.

A weak signal: pre-copy and auto-converge can raise it, but so does any busy neighbour, and many
hypervisors do not report it at all. It is recorded (``decisive=False``) and never corroborates a
crossing on its own.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from geoprobe.watch.signals.base import Reading, robust_z

STEAL_FIELD = 7  # user nice system idle iowait irq softirq steal guest guest_nice


def read_cpu_times(path: str | Path = "/proc/stat") -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs. Raises OSError/ValueError when unreadable."""
    with open(path) as f:
        for line in f:
            if line.startswith("cpu "):
                fields = [int(x) for x in line.split()[1:]]
                if len(fields) <= STEAL_FIELD:
                    raise ValueError("no steal column (kernel older than 2.6.11?)")
                # guest and guest_nice are already counted in user and nice
                return fields[STEAL_FIELD], sum(fields[: STEAL_FIELD + 1])
    raise ValueError("no aggregate 'cpu' line")


class StealSignal:
    """Steal share (%) between two samples, against its own rolling median. Never decisive."""

    decisive = False

    def __init__(
        self,
        name: str = "steal_time",
        *,
        path: str | Path = "/proc/stat",
        threshold_pct: float = 10.0,
        z_min: float = 6.0,
        history: int = 360,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.threshold_pct = threshold_pct
        self.z_min = z_min
        self._last: tuple[int, int] | None = None
        self._history: deque[float] = deque(maxlen=history)

    def sample(self) -> Reading:
        try:
            steal, total = read_cpu_times(self.path)
        except (OSError, ValueError) as exc:
            return Reading.unavailable(self.name, f"{self.path}: {exc}", decisive=False, unit="%")
        last, self._last = self._last, (steal, total)
        if last is None or total <= last[1]:
            return Reading(self.name, unit="%", decisive=False, reason="first sample")
        share = 100.0 * max(steal - last[0], 0) / (total - last[1])
        z, base, _ = robust_z(share, list(self._history), floor=1.0)
        self._history.append(share)
        has_base = len(self._history) > 3
        anomalous = has_base and share - base >= self.threshold_pct and z >= self.z_min
        return Reading(
            self.name,
            value=share,
            baseline=base if has_base else None,
            score=max(z, 0.0),
            anomalous=anomalous,
            unit="%",
            decisive=False,
            reason=f"steal time {share:.1f}% (baseline {base:.1f}%): weak, never decisive"
            if anomalous
            else "",
            detail={"steal_jiffies": steal - last[0], "total_jiffies": total - last[1]},
        )
