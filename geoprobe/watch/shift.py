"""Has the VM moved? A change test on the RTT fingerprint against a robust per-landmark baseline.

The fingerprint is the minimum RTT to each landmark in a stable subset. Each landmark has a
baseline (median of its recent per-round minima) and a noise scale (scaled MAD, floored), so a
round gives one robust z-score per landmark. The test counts landmarks whose change is beyond the
noise (a rise must go further than a fall) and asks how unlikely that count is if nothing moved
(binomial tail).

Three facts shape the test, because an adversary on the path can only *add* delay:

* A *decrease* beyond the noise is unforgeable: the VM really got closer to that landmark.
* A *common-mode* rise (every landmark slower by about the same amount) is what added delay or
  queueing on the VM's own link looks like; it is removed before counting, so it alone is not a
  move.
* "Still near landmark X" is robust: the old and new positions both lie within the sound radius
  of X, so the move is at most ``100 km/ms x (old RTT + new RTT)`` (``max_move_km``).

The engine's fix (solved lazily, only when the fingerprint changed) gives the distance moved and the
new region; fusion decides about borders.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from geoprobe.geo.fix import Fix

Outcome = Literal["moved", "not_moved", "unsure"]
SOUND_KM_PER_MS = 100.0  # light in fibre: 1 ms of round trip bounds the distance to ~100 km
MAD_TO_SIGMA = 1.4826


@dataclass(slots=True)
class Baseline:
    """Per-landmark history of per-round minimum RTTs (ms), bounded to ``window`` rounds."""

    window: int = 20
    history: dict[str, deque[float]] = field(default_factory=dict)
    rounds: int = 0
    fix: Fix | None = None  # the fix the baseline was taken at (for distances)
    _stats: dict[str, tuple[float, float, int]] = field(default_factory=dict, repr=False)

    def _stat(self, lid: str) -> tuple[float, float, int] | None:
        """(median, scaled MAD, count) of one landmark's history, cached until the next add."""
        st = self._stats.get(lid)
        if st is None:
            h = self.history.get(lid)
            if not h:
                return None
            med = statistics.median(h)
            mad = statistics.median(abs(x - med) for x in h) * MAD_TO_SIGMA if len(h) >= 3 else 0.0
            st = self._stats[lid] = (med, mad, len(h))
        return st

    def add(self, rtts: Mapping[str, float]) -> None:
        for lid, r in rtts.items():
            if not math.isfinite(r) or r < 0:
                continue
            h = self.history.get(lid)
            if h is None:
                h = self.history[lid] = deque(maxlen=self.window)
            h.append(float(r))
        self.rounds += 1
        self._stats.clear()

    def reset(self, rounds: Iterable[Mapping[str, float]] = (), fix: Fix | None = None) -> None:
        """Start again at a new place (after a confirmed move)."""
        self.history.clear()
        self._stats.clear()
        self.rounds = 0
        self.fix = fix
        for r in rounds:
            self.add(r)

    def rtt(self, lid: str) -> float | None:
        st = self._stat(lid)
        return st[0] if st else None

    def scale(self, lid: str, *, floor_ms: float, rel_floor: float) -> float | None:
        """Robust noise scale: scaled MAD of the history, never below the floor for its RTT."""
        st = self._stat(lid)
        return max(st[1], floor_ms, rel_floor * st[0]) if st else None

    def stable(
        self, *, min_rounds: int, max_rel_scale: float, floor_ms: float, rel_floor: float
    ) -> list[str]:
        """Landmarks seen in enough rounds whose noise is small against their RTT."""
        need = min(min_rounds, self.rounds)
        out = []
        for lid in self.history:
            st = self._stat(lid)
            if st is None or st[2] < max(1, need):
                continue
            med = st[0]
            s = max(st[1], floor_ms, rel_floor * med)
            if s <= max(max_rel_scale * med, floor_ms):
                out.append(lid)
        return sorted(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "rounds": self.rounds,
            "history": {k: list(v) for k, v in self.history.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Baseline:
        b = cls(window=int(raw.get("window", 20)), rounds=int(raw.get("rounds", 0)))
        for k, v in dict(raw.get("history", {})).items():
            b.history[str(k)] = deque((float(x) for x in v), maxlen=b.window)
        return b


@dataclass(slots=True)
class ShiftResult:
    outcome: Outcome
    p_value: float  # binomial tail of the changed count under "not moved"
    compared: int  # landmarks in both the stable baseline and this round
    changed: list[str]  # beyond the noise after removing the common mode
    decreased: list[str]  # RTT fell beyond the noise: unforgeable evidence of a real move
    increased: list[str]
    common_mode_ms: float  # median change over all compared landmarks
    max_move_km: float | None  # sound upper bound on the move ("still near landmark X")
    near: str | None  # the landmark that gives max_move_km
    distance_km: float | None  # between the baseline fix and the new fix, when both exist
    fix: Fix | None  # the engine's new fix (solved only when the fingerprint changed)
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "p_value": self.p_value,
            "compared": self.compared,
            "changed": len(self.changed),
            "decreased": self.decreased[:20],
            "increased": len(self.increased),
            "common_mode_ms": round(self.common_mode_ms, 3),
            "max_move_km": None if self.max_move_km is None else round(self.max_move_km, 1),
            "near": self.near,
            "distance_km": None if self.distance_km is None else round(self.distance_km, 1),
            "reasons": self.reasons,
        }


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (n is at most a few hundred landmarks)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    term = math.comb(n, k) * p**k * (1 - p) ** (n - k)
    total = 0.0
    for i in range(k, n + 1):
        total += term
        if i < n:
            term *= (n - i) / (i + 1) * p / (1 - p)
    return min(1.0, total)


@dataclass(frozen=True, slots=True)
class ShiftTest:
    """Thresholds of the change test. Defaults are tuned on the WonderProxy replay (benchmarks/)."""

    z: float = 5.0  # robust z beyond which a fall in RTT counts as a change
    # Rises need more: load on the VM, queueing and an adversary all add delay, none can remove it.
    z_rise: float = 8.0
    floor_ms: float = 0.3  # noise floor, absolute
    rel_floor: float = (
        0.03  # noise floor, relative to the RTT (route jitter grows with path length)
    )
    p_null: float = (
        0.02  # assumed chance that one landmark of a stationary VM exceeds z (heavy tails)
    )
    alpha: float = 1e-6  # p-value below which the fingerprint moved
    alpha_unsure: float = 1e-2  # p-value below which it is at least unsure
    min_changed: int = 3  # and never on fewer changed landmarks than this
    # "moved" needs RTT to fall to this many landmarks. Rises alone are what load, queueing or an
    # adversary produce too, and they can only grow the sound region: they can never prove a
    # crossing, so they make the answer "unsure" (probe faster), not "moved".
    min_decreased: int = 2
    min_compared: int = 5  # fewer comparable landmarks: unsure
    min_rounds: int = 2  # baseline rounds a landmark needs to be in the stable subset
    max_rel_scale: float = 0.25  # landmarks noisier than this fraction of their RTT are left out

    def stable_subset(self, baseline: Baseline) -> list[str]:
        return baseline.stable(
            min_rounds=self.min_rounds,
            max_rel_scale=self.max_rel_scale,
            floor_ms=self.floor_ms,
            rel_floor=self.rel_floor,
        )

    def assess(
        self,
        baseline: Baseline,
        rtts: Mapping[str, float],
        solve: Callable[[Mapping[str, float]], Fix] | None = None,
    ) -> ShiftResult:
        """Compare one round of min RTTs with the baseline; solve a new fix only if it changed."""
        ids = [
            lid for lid in self.stable_subset(baseline) if lid in rtts and math.isfinite(rtts[lid])
        ]
        reasons: list[str] = []
        base = {lid: baseline.rtt(lid) or 0.0 for lid in ids}
        scale = {
            lid: baseline.scale(lid, floor_ms=self.floor_ms, rel_floor=self.rel_floor)
            or self.floor_ms
            for lid in ids
        }
        deltas = {lid: rtts[lid] - base[lid] for lid in ids}
        common = statistics.median(deltas.values()) if deltas else 0.0
        # Only a rise can be common-mode added delay; a common fall is kept as evidence.
        cm = max(common, 0.0)
        changed = [
            lid
            for lid in ids
            if deltas[lid] - cm < -self.z * scale[lid]
            or deltas[lid] - cm > self.z_rise * scale[lid]
        ]
        decreased = [lid for lid in ids if deltas[lid] < -self.z * scale[lid]]
        increased = [lid for lid in ids if deltas[lid] > self.z_rise * scale[lid]]
        decreased.sort(key=lambda lid: deltas[lid])
        max_move, near = None, None
        for lid in ids:
            bound = SOUND_KM_PER_MS * (base[lid] + rtts[lid])
            if max_move is None or bound < max_move:
                max_move, near = bound, lid
        n = len(ids)
        p = binom_sf(len(changed), n, self.p_null) if n else 1.0
        if cm > 0 and len(increased) > len(changed):
            reasons.append(
                f"common-mode rise of {cm:.2f} ms on all landmarks removed (added delay or queueing)"
            )
        if n < self.min_compared:
            outcome: Outcome = "unsure"
            reasons.append(f"only {n} stable landmarks answered (need {self.min_compared})")
        elif (
            p < self.alpha
            and len(changed) >= self.min_changed
            and len(decreased) >= self.min_decreased
        ):
            outcome = "moved"
            reasons.append(f"{len(changed)} of {n} landmarks changed beyond noise (p={p:.2g})")
            reasons.append(
                f"RTT fell to {len(decreased)} landmarks (unforgeable), e.g. {decreased[0]} "
                f"by {-deltas[decreased[0]]:.1f} ms"
            )
        elif p < self.alpha and len(changed) >= self.min_changed:
            outcome = "unsure"
            reasons.append(
                f"{len(changed)} of {n} landmarks changed beyond noise (p={p:.2g}), but RTT fell to "
                f"only {len(decreased)}: rises alone look like load or added delay"
            )
        elif p < self.alpha_unsure:
            outcome = "unsure"
            reasons.append(
                f"{len(changed)} of {n} landmarks changed beyond noise (p={p:.2g}): not conclusive"
            )
        else:
            outcome = "not_moved"
            if near is not None:
                reasons.append(f"still near {near}: moved at most {max_move:.0f} km")
        fix: Fix | None = None
        dist: float | None = None
        if outcome != "not_moved" and solve is not None:
            fix = solve(rtts)
            if baseline.fix is not None:
                from geoprobe.geo.sphere import haversine_km

                dist = float(haversine_km(baseline.fix.lat, baseline.fix.lon, fix.lat, fix.lon))
                reasons.append(f"engine: fix moved {dist:.0f} km")
        return ShiftResult(
            outcome=outcome,
            p_value=p,
            compared=n,
            changed=changed,
            decreased=decreased,
            increased=increased,
            common_mode_ms=common,
            max_move_km=max_move,
            near=near,
            distance_km=dist,
            fix=fix,
            reasons=reasons,
        )
