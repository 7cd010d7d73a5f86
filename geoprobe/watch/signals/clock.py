"""Clock offset against outside time: landmark timestamps and NTP servers.

Live migration restores the guest's clocks across the final pause, so the guest's clock falls
behind by about the downtime: the offset (outside clock minus ours) steps up by that much until
NTP corrects it. (Measured on QEMU: 49 ms downtime -> a +50 ms step, no gap on the monotonic clock.)

How the step test stays robust:

* Per measurement only the lowest-RTT sample's offset is used: queueing makes the offset error up
  to half the RTT, and the minimum RTT has the least queueing in it.
* Each source (landmark or NTP server) keeps its own baseline, the median of its offsets over the
  recent window: path asymmetry gives every source a constant bias of its own, which cancels.
* The step is the *common* shift: the median, over the newest samples of all sources, of each
  sample's deviation from its source's baseline. A step needs ``min_support`` samples that agree
  in sign and exceed half the threshold (many landmarks in one round, or one NTP server over
  several rounds), so one outlier never fires it.
* The score is the shift in robust standard deviations of the baseline scatter, so a noisy path
  cannot fire a 20 ms step either.

A step found in the newest round also splits that round (:meth:`ClockSignal.after_step`): a round
that spans the switchover mixes RTTs from both places, and their minimum per landmark describes
neither. Every signed sample carries its own offset, so the samples after the pause are the ones
stepped by it: they alone say where the VM is now, a round earlier than a re-measurement would.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from geoprobe.measurement import Measurement
from geoprobe.watch.signals import ntp
from geoprobe.watch.signals.base import MAD_TO_SIGMA, Reading


@dataclass(frozen=True, slots=True)
class OffsetSample:
    source: str
    offset_ms: float
    rtt_ms: float | None = None


def best_offset(m: Measurement) -> OffsetSample | None:
    """The offset of the lowest-RTT sample (its error bound RTT/2 is the tightest)."""
    offs = [o for o in m.clock_offsets_ms if math.isfinite(o)]
    if not offs:
        return None
    if len(m.clock_offsets_ms) == len(m.rtts_ms) and m.rtts_ms:
        rtt, off = min(zip(m.rtts_ms, m.clock_offsets_ms), key=lambda p: p[0])
        if math.isfinite(off):
            return OffsetSample(m.landmark_id, off, rtt)
    return OffsetSample(m.landmark_id, statistics.median(offs), m.min_rtt)


class StepDetector:
    """Per-source baselines, common shift, sustained-step test (see the module docstring)."""

    def __init__(
        self,
        threshold_ms: float = 20.0,
        window_rounds: int = 30,
        min_support: int = 3,
        min_baseline: int = 3,
        max_recent_rounds: int = 5,
        z_min: float = 4.0,
        noise_floor_ms: float = 1.0,
    ) -> None:
        self.threshold_ms = threshold_ms
        self.min_support = min_support
        self.min_baseline = min_baseline
        self.max_recent_rounds = max_recent_rounds
        self.z_min = z_min
        self.noise_floor_ms = noise_floor_ms
        self._rounds: deque[tuple[float, dict[str, OffsetSample]]] = deque(
            maxlen=window_rounds + max_recent_rounds
        )
        # (step, per-source baselines) when the newest round alone holds an upward step.
        self.latest_step: tuple[float, dict[str, float]] | None = None

    def add_round(self, samples: Iterable[OffsetSample], t: float | None = None) -> None:
        by_source = {s.source: s for s in samples if math.isfinite(s.offset_ms)}
        if by_source:
            self._rounds.append((time.time() if t is None else t, by_source))

    def reset(self) -> None:
        """Forget the baseline (after a confirmed move the daemon starts afresh)."""
        self._rounds.clear()
        self.latest_step = None

    @property
    def rounds(self) -> int:
        return len(self._rounds)

    def evaluate(self, name: str, unit: str = "ms") -> Reading:
        rounds = list(self._rounds)
        self.latest_step = None
        if not rounds:
            return Reading.unavailable(name, "no clock offsets yet", unit=unit)
        # Newest rounds until they hold min_support samples: the "recent" part under test.
        k, count = 0, 0
        while k < len(rounds) and k < self.max_recent_rounds and count < self.min_support:
            count += len(rounds[-1 - k][1])
            k += 1
        recent, older = rounds[-k:], rounds[:-k]
        history: dict[str, list[float]] = {}
        for _, samples in older:
            for src, s in samples.items():
                history.setdefault(src, []).append(s.offset_ms)
        baselines = {src: statistics.median(v) for src, v in history.items() if len(v) >= self.min_baseline}
        deviations: list[float] = []
        residuals: list[float] = []
        per_source: dict[str, float] = {}
        for src, base in baselines.items():
            residuals.extend(abs(v - base) for v in history[src])
        for _, samples in recent:
            for src, s in samples.items():
                if src in baselines:
                    d = s.offset_ms - baselines[src]
                    deviations.append(d)
                    per_source[src] = round(d, 3)
        latest = statistics.median(s.offset_ms for s in rounds[-1][1].values())
        if len(deviations) < self.min_support:
            return Reading(
                name,
                value=latest,
                unit=unit,
                reason="building baseline",
                detail={"rounds": len(rounds), "sources_with_baseline": len(baselines)},
            )
        shift = statistics.median(deviations)
        scale = (
            max(MAD_TO_SIGMA * statistics.median(residuals), self.noise_floor_ms)
            if residuals
            else self.noise_floor_ms
        )
        z = abs(shift) / scale
        sign = 1.0 if shift >= 0 else -1.0
        support = sum(1 for d in deviations if d * sign >= self.threshold_ms / 2)
        anomalous = (
            abs(shift) >= self.threshold_ms
            and support >= self.min_support
            and support * 2 > len(deviations)
            and z >= self.z_min
        )
        if anomalous and shift > 0 and k == 1:
            self.latest_step = (shift, baselines)
        base = statistics.median(baselines.values())
        reason = (
            f"clock offset stepped {shift:+.1f} ms ({support}/{len(deviations)} samples agree)"
            if anomalous
            else ""
        )
        return Reading(
            name,
            value=base + shift,
            baseline=base,
            score=z,
            anomalous=anomalous,
            unit=unit,
            reason=reason,
            detail={
                "step_ms": round(shift, 3),
                "noise_ms": round(scale, 3),
                "support": support,
                "samples": len(deviations),
                "rounds": len(rounds),
                "sources": per_source,
                "threshold_ms": self.threshold_ms,
            },
        )


class ClockSignal:
    """Offset against landmark time, fed by the prober's signed echoes."""

    decisive = True

    def __init__(self, name: str = "clock_landmarks", detector: StepDetector | None = None) -> None:
        self.name = name
        self.detector = detector or StepDetector()

    def update(self, measurements: Iterable[Measurement], t: float | None = None) -> int:
        """Add one probing round; returns how many landmarks gave an offset."""
        ms = list(measurements)
        samples = [s for s in (best_offset(m) for m in ms) if s is not None]
        if t is None and ms:
            t = max(m.timestamp for m in ms)
        self.detector.add_round(samples, t)
        return len(samples)

    def after_step(self, measurements: Iterable[Measurement]) -> dict[str, float] | None:
        """Landmark -> minimum RTT over the samples taken after a clock step inside this round.

        None unless the last :meth:`sample` found an upward step in the newest round and that
        round also holds samples from before it (``min_support`` of them: a round wholly after
        the step, with a noisy sample or two, needs no split).
        A sample is "after" when its offset sits at least half the step above its landmark's
        baseline; a landmark whose offsets do not pair with its RTTs cannot be split and is left
        out. The RTTs themselves are untouched, so the sound region of the result stays sound.
        """
        found = self.detector.latest_step
        if found is None:
            return None
        step, baselines = found
        after: dict[str, float] = {}
        before = 0
        for m in measurements:
            base = baselines.get(m.landmark_id)
            if base is None or len(m.clock_offsets_ms) != len(m.rtts_ms):
                continue
            for rtt, off in zip(m.rtts_ms, m.clock_offsets_ms, strict=True):
                if math.isfinite(off) and off - base >= step / 2:
                    after[m.landmark_id] = min(rtt, after.get(m.landmark_id, math.inf))
                else:
                    before += 1
        return after if before >= self.detector.min_support else None

    def add(self, samples: Sequence[OffsetSample] | Mapping[str, float], t: float | None = None) -> None:
        """Add one round of raw offsets (source -> ms), for replays and other feeders."""
        if isinstance(samples, Mapping):
            samples = [OffsetSample(k, float(v)) for k, v in samples.items()]
        self.detector.add_round(samples, t)

    def reset(self) -> None:
        self.detector.reset()

    def sample(self) -> Reading:
        return self.detector.evaluate(self.name)


class NtpClockSignal:
    """Offset against the NTP servers named in the config; ``sample()`` queries them (blocking)."""

    decisive = True

    def __init__(
        self,
        servers: Sequence[str],
        name: str = "clock_ntp",
        timeout: float = 1.0,
        detector: StepDetector | None = None,
    ) -> None:
        self.name = name
        self.servers = list(servers)
        self.timeout = timeout
        self.detector = detector or StepDetector()
        self.errors: dict[str, str] = {}

    def poll(self) -> list[OffsetSample]:
        """Query every server at once, so one silent server costs one timeout, not one each."""

        def one(server: str) -> OffsetSample | str:
            try:
                r = ntp.query(server, timeout=self.timeout)
            except ntp.NtpError as exc:
                return str(exc)
            return OffsetSample(server, r.offset_ms, r.delay_ms)

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(self.servers)))) as pool:
            results = list(pool.map(one, self.servers))
        self.errors = {
            srv: res for srv, res in zip(self.servers, results, strict=True) if isinstance(res, str)
        }
        return [res for res in results if isinstance(res, OffsetSample)]

    def sample(self) -> Reading:
        if not self.servers:
            return Reading.unavailable(self.name, "no NTP servers configured", unit="ms")
        got = self.poll()
        if not got and self.detector.rounds == 0:
            return Reading.unavailable(
                self.name, "no NTP server answered: " + "; ".join(self.errors.values()), unit="ms"
            )
        self.detector.add_round(got)
        r = self.detector.evaluate(self.name)
        if self.errors:
            r.detail["errors"] = dict(self.errors)
        return r
