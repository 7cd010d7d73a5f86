"""What every timing or host signal gives the watch daemon: a value, its baseline and a score.

Agreed interface (SIGNALS <-> WATCH)
-----------------------------------
* :class:`Reading` is one evaluation of one signal. ``value`` and ``baseline`` are in ``unit``;
  ``score`` is an anomaly score (a robust z: distance from the baseline in robust standard
  deviations, >= 0; 0 when there is nothing to compare yet); ``anomalous`` is the signal's own
  verdict; ``decisive`` is False for weak signals (steal time), which fusion records but never
  counts as corroboration. When the platform lacks what a signal reads, ``available`` is False,
  ``reason`` says why, and nothing else is meaningful. ``detail`` holds JSON-safe extras.
* :class:`Signal` is anything with ``name``, ``decisive`` and ``sample() -> Reading``. Signals fed
  by the prober (clock offsets) also take ``update(...)`` with new data; see each module.
* :class:`BackgroundSignal` adds ``start()``/``stop()`` for signals that need their own thread
  (execution gaps, first-write latency). ``sample()`` then summarises what the thread saw since the
  signal started (a rolling window); it is thread-safe and never blocks for long.
* ``sample()`` never raises for platform reasons: it returns ``Reading.unavailable(...)``.

Signals (constructors take keyword settings with sensible defaults):

* ``clock.ClockSignal()`` -- offset against landmark time. Feed each probing round with
  ``update(measurements)`` (uses ``Measurement.clock_offsets_ms``); ``sample()`` reports the
  current common shift against the per-landmark baselines, anomalous on a sustained step >= 20 ms.
* ``clock.NtpClockSignal(servers=["host[:port]", ...])`` -- the same test against SNTP servers;
  ``sample()`` queries them in parallel (blocks up to ``timeout``: call it off the event loop).
* ``gaps.GapSignal(period_s=0.001, realtime=False)`` -- background (a child process); execution
  gaps and auto-converge throttling, episodes held for ``hold_s`` so a 60 s round misses none.
* ``writes.WriteLatencySignal(pages=16384, interval_s=0.1)`` -- background (a thread);
  first-write latency, spikes at pre-copy's dirty syncs.
* ``steal.StealSignal()`` -- steal time share from /proc/stat; ``decisive=False`` always.
* ``fingerprint.FingerprintSignal(baseline=None)`` -- host fingerprint, passive unless
  ``active_arp=True`` or ``hop_targets`` are given; ``rebaseline()`` after a confirmed move;
  ``fingerprint.take()``
  returns a ``HostFingerprint`` (``to_json``/``from_json`` for the state store) and
  ``fingerprint.compare(old, new)`` says which fields changed.
* ``geoprobe.watch.cloud.CloudNotices(sources=None)`` -- maintenance notices (GCE, Azure, AWS;
  ``sources`` defaults to all three at their real addresses);
  ``poll()`` returns ``Notice`` objects, ``sample()`` a Reading; background ``start()/stop()``
  for the GCE long poll. Notices are triggers to measure, never evidence of location.

A Reading maps onto ``fusion.Anomaly`` as ``Anomaly(r.name, r.score, r.reason, r.decisive, r.time)``
when ``r.available and r.anomalous``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Reading:
    """One evaluation of one signal."""

    name: str
    value: float | None = None
    baseline: float | None = None
    score: float = 0.0
    anomalous: bool = False
    unit: str = ""
    decisive: bool = True
    available: bool = True
    reason: str = ""  # why the signal is unavailable, or why it fired
    detail: dict[str, Any] = field(default_factory=dict)
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
