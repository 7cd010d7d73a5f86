"""What every timing or host signal gives the watch daemon: a value, its baseline and a score.

* :class:`Reading` is one evaluation of one signal (its fields say what each means).
* :class:`Signal` is anything with ``name``, ``decisive`` and ``sample() -> Reading``. Signals fed
  by the prober (clock offsets) also take ``update(...)`` with new data; each module says how.
* :class:`BackgroundSignal` adds ``start()``/``stop()`` for signals that need their own thread or
  process (execution gaps, first-write latency). ``sample()`` then summarises what it saw over a
  rolling window; it is thread-safe and never blocks for long.
* ``sample()`` never raises for platform reasons: it returns ``Reading.unavailable(...)``.

The signals themselves are the modules of this package, each documented where it is defined; the
daemon turns an available, anomalous Reading into a ``fusion.Anomaly``.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Reading:
    """One evaluation of one signal."""

    name: str
    value: float | None = None  # in ``unit``
    baseline: float | None = None  # in ``unit``
    # A robust z: distance from the baseline in robust standard deviations, >= 0; 0 while there is
    # nothing to compare with yet.
    score: float = 0.0
    anomalous: bool = False  # the signal's own verdict
    unit: str = ""
    # False for weak signals (steal time): fusion records them but never counts them as
    # corroboration.
    decisive: bool = True
    # False when the platform lacks what the signal reads; then only ``reason`` is meaningful.
    available: bool = True
    reason: str = ""  # why the signal is unavailable, or why it fired
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-safe extras
    time: float = field(default_factory=time.time)
    # Specific to a migration in progress (see ``fusion.Anomaly.precopy``).
    precopy: bool = False

    @classmethod
    def unavailable(
        cls, name: str, reason: str, *, decisive: bool = True, unit: str = ""
    ) -> Reading:
        return cls(name=name, available=False, reason=reason, decisive=decisive, unit=unit)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "available": self.available,
            "value": self.value,
            "baseline": self.baseline,
            "score": self.score,
            "anomalous": self.anomalous,
            "unit": self.unit,
            "decisive": self.decisive,
            "time": self.time,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        return out


@runtime_checkable
class Signal(Protocol):
    name: str
    decisive: bool

    def sample(self) -> Reading: ...


@runtime_checkable
class BackgroundSignal(Signal, Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


# -- robust statistics shared by the signals ---------------------------------------------------

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def robust_center_scale(values: Sequence[float], floor: float = 0.0) -> tuple[float, float]:
    """Median and MAD-based scale; ``floor`` keeps a flat history from making every change huge."""
    if not values:
        return math.nan, math.nan
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return med, max(MAD_TO_SIGMA * mad, floor)


def robust_z(value: float, values: Sequence[float], floor: float) -> tuple[float, float, float]:
    """(z, median, scale) of ``value`` against ``values``."""
    med, scale = robust_center_scale(values, floor)
    if math.isnan(med) or scale <= 0:
        return 0.0, med, scale
    return (value - med) / scale, med, scale


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def stop_child(proc: subprocess.Popen[str] | None, reader: threading.Thread | None) -> None:
    """End a sampler's child process and the thread reading its lines: SIGTERM, then SIGKILL
    after 5 s; the pipe is closed only once the reader has let go of it."""
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if reader is not None:
        reader.join(timeout=5)
    if proc is not None and proc.stdout is not None:
        proc.stdout.close()
