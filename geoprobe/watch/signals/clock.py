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

The pause can also fall inside a round, so that only its last samples are stepped: too few to
move the median. Each sample's send time orders the round, and a step there is a change point: a
time after which (nearly) every sample sits half the threshold or more above its baseline and
before which (nearly) none does, with at least ``min_support`` on each side. Queueing noise is not
ordered in time like that, and a migration's pause is.

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


@dataclass(frozen=True, slots=True)
class TimedOffset:
    """One sample's offset and when it was sent (our clock): the change-point test's input."""

    source: str
    offset_ms: float
    sent_at: float


def timed_offsets(measurements: Iterable[Measurement]) -> list[TimedOffset]:
    """Every sample that has both an offset and a send time (signed UDP echoes)."""
    out: list[TimedOffset] = []
    for m in measurements:
        if len(m.clock_offsets_ms) == len(m.sent_at) == len(m.rtts_ms):
            out.extend(
                TimedOffset(m.landmark_id, o, t)
                for o, t in zip(m.clock_offsets_ms, m.sent_at, strict=True)
                if math.isfinite(o) and math.isfinite(t)
            )
    return out


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

    def evaluate(self, name: str, unit: str = "ms", timed: Sequence[TimedOffset] = ()) -> Reading:
        """Test the newest round(s) against the baselines; ``timed`` (the newest round's samples
        with send times) adds the within-round change-point test."""
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
        baselines = {
            src: statistics.median(v) for src, v in history.items() if len(v) >= self.min_baseline
        }
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
        reason = f"clock offset stepped {shift:+.1f} ms ({support}/{len(deviations)} samples agree)"
        if not anomalous and k == 1 and timed:
            found = self._change_point(timed, baselines, scale)
            if found is not None:
                shift, support, n = found
                z, anomalous = shift / scale, True
                reason = (
                    f"clock offset stepped {shift:+.1f} ms within the round "
                    f"(the last {support} of its {n} samples)"
                )
        if anomalous and shift > 0 and k == 1:
            self.latest_step = (shift, baselines)
        base = statistics.median(baselines.values())
        reason = reason if anomalous else ""
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

    def _change_point(
        self, timed: Sequence[TimedOffset], baselines: Mapping[str, float], scale: float
    ) -> tuple[float, int, int] | None:
        """(step, stepped samples after it, samples) for an upward step inside the round, or None.

        The split maximises the samples on the expected side (unstepped before, stepped after);
        both sides need ``min_support`` samples and 90 % agreement, and the part after it a median
        step of at least the threshold and ``z_min`` noise scales.
        """
        devs = sorted(
            (t.sent_at, t.offset_ms - baselines[t.source]) for t in timed if t.source in baselines
        )
        n = len(devs)
        if n < 2 * self.min_support:
            return None
        stepped = [d >= self.threshold_ms / 2 for _, d in devs]
        best, cut = -1, 0
        ones_after, zeros_before = sum(stepped), 0
        for j in range(n + 1):
            if zeros_before + ones_after > best:
                best, cut = zeros_before + ones_after, j
            if j < n:
                ones_after -= stepped[j]
                zeros_before += not stepped[j]
        before, after = stepped[:cut], stepped[cut:]
        if len(before) < self.min_support or len(after) < self.min_support:
            return None
        if sum(after) < 0.9 * len(after) or before.count(False) < 0.9 * len(before):
            return None
        shift = statistics.median(d for _, d in devs[cut:])
        if shift < self.threshold_ms or shift / scale < self.z_min:
            return None
        return shift, sum(after), n


class ClockSignal:
    """Offset against landmark time, fed by the prober's signed echoes."""

    decisive = True

    def __init__(self, name: str = "clock_landmarks", detector: StepDetector | None = None) -> None:
        self.name = name
        self.detector = detector or StepDetector()
        self._timed: list[TimedOffset] = []  # the newest round's samples, for the change point

    def update(self, measurements: Iterable[Measurement], t: float | None = None) -> int:
        """Add one probing round; returns how many landmarks gave an offset."""
        ms = list(measurements)
        self._timed = timed_offsets(ms)
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

    def add(
        self, samples: Sequence[OffsetSample] | Mapping[str, float], t: float | None = None
    ) -> None:
        """Add one round of raw offsets (source -> ms), for replays and other feeders."""
        if isinstance(samples, Mapping):
            samples = [OffsetSample(k, float(v)) for k, v in samples.items()]
        self._timed = []
        self.detector.add_round(samples, t)

    def reset(self) -> None:
        self.detector.reset()
        self._timed = []

    def sample(self) -> Reading:
        return self.detector.evaluate(self.name, timed=self._timed)


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
