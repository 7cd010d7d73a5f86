"""Fusion: one state machine turns fingerprint shifts, fixes and timing signals into a verdict.

States: ``normal -> suspect -> confirming -> confirmed -> settled`` (and back to ``normal`` when a
suspicion clears). Every transition carries its reasons, and the ones users act on carry an event.

* normal/settled -> suspect: the fingerprint moved, or a decisive timing/fingerprint signal fired.
  Emits ``migration.suspected``; the daemon probes faster while suspicious.
* normal/settled -> suspect -> confirming -> confirmed in one round: the first moved measurement
  is already judged outside by the sound or certified rule *and* a decisive independent signal
  (clock step, gaps, host fingerprint, cloud notice) fired within ``signal_window_s``: that is
  the issue's "sound exit + independent signal", so no second round is waited for.
* suspect -> confirming: a re-measurement agrees with the moved fingerprint (same landmarks changed
  the same way and, when both have fixes, the fixes lie close together).
* confirming -> confirmed, ``crossing=true``: the jurisdiction rule says *outside* (by default only a
  certified country or a sound region that leaves the allowed set, see ``jurisdiction.py``) AND it is
  corroborated, either by a decisive independent signal within ``signal_window_s`` or by the
  previous agreeing measurement also judged outside. Added delay alone cannot satisfy the sound rule,
  so a crossing cannot be forced by an on-path adversary.
  With the opt-in calibrated basis, a probability-only "outside" also needs the RTT to have *fallen*
  to at least ``min_decreased`` landmarks, which added delay cannot produce.
* confirming -> confirmed, ``crossing=false``: the new fix is inside the allowed set (a move within
  it, or back into it), or the VM was already outside before this move (no new crossing).
* confirming -> confirmed, ``crossing=null``: the new region still straddles the border after
  ``max_confirm_rounds`` rounds: a move whose crossing is unknown (an overlapping region is never a
  confirmed crossing); the policy's ``unknown`` verdict decides what to do.
* unsure fingerprints (RTTs only rose) raise a suspicion after ``unsure_rounds`` rounds in a row; if
  they persist ``max_confirm_rounds`` more, the move is confirmed with ``crossing=null`` (unknown):
  rises alone can never take the sound region out of the allowed set.
* confirming/suspect -> normal: the fingerprint is back at its baseline for ``clear_rounds`` rounds.
* confirmed -> settled: ``settle_rounds`` quiet rounds against the new baseline taken after the move.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from geoprobe import events
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.watch.jurisdiction import Jurisdiction, JurisdictionVerdict
from geoprobe.watch.shift import ShiftResult


class State(str, Enum):
    NORMAL = "normal"
    SUSPECT = "suspect"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    SETTLED = "settled"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An independent signal that fired (clock step, execution gaps, host fingerprint, cloud notice)."""

    signal: str
    score: float
    detail: str = ""
    decisive: bool = True  # weak signals (steal time) are recorded but never corroborate
    time: float = 0.0
    # Evidence that only a migration in progress produces (dirty-page tracking, a platform's own
    # notice): it raises ``suspected`` on its own, before any RTT has moved.
    precopy: bool = False


@dataclass(slots=True)
class Observation:
    """One round: the shift test's answer (with its fix, if solved) and the signals that fired."""

    shift: ShiftResult | None
    fix: Fix | None = None
    anomalies: Sequence[Anomaly] = ()
    time: float = field(default_factory=_time.time)


@dataclass(slots=True)
class Transition:
    frm: State
    to: State
    reasons: list[str]
    time: float
    event_type: str | None = None  # a CloudEvent type when users should hear of it
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.frm.value,
            "to": self.to.value,
            "reasons": self.reasons,
            "time": self.time,
            "event_type": self.event_type,
        }


@dataclass(frozen=True, slots=True)
class FusionConfig:
    agree_km: float = (
        400.0  # two fixes of one move agree if this close (or within their error radii)
    )
    agree_overlap: float = 0.5  # share of changed landmarks two measurements of one move must share
    clear_rounds: int = 3
    max_confirm_rounds: int = 5
    unsure_rounds: int = 3  # consecutive unsure fingerprints (rises only) that raise a suspicion
    settle_rounds: int = 3
    signal_window_s: float = 600.0
    min_decreased: int = 2  # a calibrated-only "outside" needs RTT to fall to this many landmarks


def _agree_shift(a: ShiftResult, b: ShiftResult, cfg: FusionConfig) -> tuple[bool, str]:
    """Do two moved measurements describe the same move?"""
    sa, sb = set(a.changed), set(b.changed)
    small = min(len(sa), len(sb))
    overlap = len(sa & sb) / small if small else 0.0
    if overlap < cfg.agree_overlap:
        return False, f"changed landmarks overlap {overlap:.0%} (< {cfg.agree_overlap:.0%})"
    ia, ib = set(a.increased), set(b.increased)
    da, db = set(a.decreased), set(b.decreased)
    contra = len((ia & db) | (da & ib))
    if contra > 0.2 * max(1, len(sa & sb)):
        return False, f"{contra} landmarks changed in opposite directions"
    if a.fix is not None and b.fix is not None:
        d = float(haversine_km(a.fix.lat, a.fix.lon, b.fix.lat, b.fix.lon))
        tol = max(cfg.agree_km, a.fix.error_radius_km + b.fix.error_radius_km)
        if d > tol:
            return False, f"fixes {d:.0f} km apart (> {tol:.0f} km)"
        return (
            True,
            f"re-measurement agrees: {overlap:.0%} of changed landmarks shared, fixes {d:.0f} km apart",
        )
    return True, f"re-measurement agrees: {overlap:.0%} of changed landmarks shared"


@dataclass
class Fusion:
    """The state machine. Pure: it knows nothing of sockets, files or clocks (time comes in)."""

    jurisdiction: Jurisdiction
    config: FusionConfig = field(default_factory=FusionConfig)
    home_fix: Fix | None = None  # where the baseline was taken
    state: State = State.NORMAL
    _moves: list[ShiftResult] = field(default_factory=list)  # moved measurements of this episode
    _verdicts: list[JurisdictionVerdict] = field(default_factory=list)
    _signals: list[Anomaly] = field(default_factory=list)
    _quiet: int = 0
    _confirm_rounds: int = 0
    _since: float = 0.0
    confirmed_fix: Fix | None = None  # set on confirmation: the daemon re-baselines there
    _home_verdict: JurisdictionVerdict | None = None
    _hurry: bool = False
    _unsure: int = 0  # consecutive unsure rounds

    @property
    def fast(self) -> bool:
        """Probe faster while a suspicion is open, or after an unsure fingerprint."""
        return self._hurry or self.state in (State.SUSPECT, State.CONFIRMING)

    def _go(
        self,
        out: list[Transition],
        to: State,
        reasons: list[str],
        now: float,
        event_type: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        out.append(Transition(self.state, to, reasons, now, event_type, data or {}))
        self.state = to

    def _corroborating(self, now: float) -> list[Anomaly]:
        return [
            a for a in self._signals if a.decisive and now - a.time <= self.config.signal_window_s
        ]

    def step(self, obs: Observation) -> list[Transition]:
        now = obs.time
        out: list[Transition] = []
        for a in obs.anomalies:
            self._signals.append(
                a if a.time else Anomaly(a.signal, a.score, a.detail, a.decisive, now)
            )
        self._signals = [a for a in self._signals if now - a.time <= self.config.signal_window_s]
        decisive_now = [a for a in obs.anomalies if a.decisive]
        shift = obs.shift
        moved = shift is not None and shift.outcome == "moved"
        quiet = shift is not None and shift.outcome == "not_moved"
        if shift is not None:
            self._hurry = shift.outcome == "unsure"
            self._unsure = self._unsure + 1 if self._hurry else 0
        persistent = self._unsure >= self.config.unsure_rounds
        if (
            persistent
            and shift is not None
            and self.state in (State.NORMAL, State.SETTLED, State.CONFIRMED)
        ):
            # Rises that persist: load, added delay, or a move away from every landmark.
            self._moves, self._verdicts, self._quiet, self._confirm_rounds, self._since = (
                [],
                [],
                0,
                0,
                now,
            )
            why = f"fingerprint changed for {self._unsure} rounds in a row without RTT falling"
            self._go(
                out, State.SUSPECT, [why, *shift.reasons], now, events.SUSPECTED, self._data(shift)
            )
            return out

        if self.state in (State.NORMAL, State.SETTLED):
            if moved or decisive_now:
                assert shift is not None or decisive_now
                reasons = list(shift.reasons) if moved and shift is not None else []
                reasons += [f"signal {a.signal}: {a.detail}" for a in decisive_now]
                self._moves = [shift] if moved and shift is not None else []
                self._verdicts, self._quiet, self._confirm_rounds, self._since = [], 0, 0, now
                self._go(
                    out,
                    State.SUSPECT,
                    reasons,
                    now,
                    events.SUSPECTED,
                    self._data(shift, signals=[a.signal for a in decisive_now]),
                )
                if moved and shift is not None:
                    self._corroborated_at_once(out, shift, now)
            return out

        if self.state == State.CONFIRMED:
            if moved and shift is not None:
                # A further move against the new baseline opens a new episode.
                self._moves, self._verdicts, self._quiet, self._confirm_rounds = [shift], [], 0, 0
                self._since = now
                self._go(
                    out,
                    State.SUSPECT,
                    list(shift.reasons),
                    now,
                    events.SUSPECTED,
                    self._data(shift),
                )
                self._corroborated_at_once(out, shift, now)
            elif quiet:
                self._quiet += 1
                if self._quiet >= self.config.settle_rounds:
                    self._go(
                        out, State.SETTLED, [f"{self._quiet} quiet rounds at the new location"], now
                    )
            return out

        # SUSPECT or CONFIRMING
        if quiet:
            self._quiet += 1
            if self._quiet >= self.config.clear_rounds:
                why = f"fingerprint at its baseline for {self._quiet} rounds"
                if shift is not None and shift.near is not None and shift.max_move_km is not None:
                    why += f"; still near {shift.near} (moved at most {shift.max_move_km:.0f} km)"
                self._go(out, State.NORMAL, [why], now)
            return out
        if (
            shift is not None
            and self._unsure >= self.config.unsure_rounds + self.config.max_confirm_rounds
        ):
            fix = shift.fix or obs.fix
            if fix is not None:
                # For good, but nothing places it: added delay only grows the sound region, so no
                # rule can say whether this crossed a border. Report it, re-baseline, move on.
                self._verdicts.append(self.jurisdiction.judge(fix))
                why = (
                    f"fingerprint changed for {self._unsure} rounds but RTT fell to no landmark: "
                    "a move that cannot be placed (crossing unknown)"
                )
                self._confirm(out, shift, fix, None, [why], now, [])
                return out
        if not moved or shift is None:
            return out  # unsure or nothing new: keep probing fast
        self._quiet = 0

        if self.state == State.SUSPECT:
            if not self._moves:
                self._moves.append(
                    shift
                )  # suspicion came from a signal; this is the first measurement
                return out
            ok, why = _agree_shift(self._moves[-1], shift, self.config)
            self._moves.append(shift)
            if not ok:
                self._verdicts.clear()
                return out  # keep suspecting; compare the next round with this one
            prev = self._moves[-2]
            if prev.fix is not None:
                self._verdicts = [self.jurisdiction.judge(prev.fix)]
            self._go(out, State.CONFIRMING, [why], now)

        # CONFIRMING: judge this measurement's fix.
        fix = shift.fix or obs.fix
        if fix is None:
            return out
        self._confirm_rounds += 1
        verdict = self.jurisdiction.judge(fix)
        if (
            verdict.verdict == "outside"
            and verdict.rule == "probability"
            and len(shift.decreased) < self.config.min_decreased
        ):
            # Calibrated bounds can be pushed across a border by added delay; falling RTTs cannot.
            verdict.verdict = "straddles"
            verdict.reasons.append(
                f"calibrated verdict outside, but RTT fell to only {len(shift.decreased)} "
                f"landmarks (need {self.config.min_decreased}): could be added delay"
            )
        prev_v = self._verdicts[-1] if self._verdicts else None
        self._verdicts.append(verdict)
        if verdict.verdict == "outside" and self._home_outside():
            # Already outside before this move: a migration, but no new crossing of the border.
            self._confirm(
                out,
                shift,
                fix,
                False,
                verdict.reasons
                + [("already outside the allowed set before this move: no new crossing")],
                now,
                [a.signal for a in self._corroborating(now)],
            )
        elif verdict.verdict == "outside":
            corr = self._corroborating(now)
            if corr:
                support = [f"corroborated by {a.signal}: {a.detail}" for a in corr]
            elif prev_v is not None and prev_v.verdict == "outside":
                support = ["corroborated by a re-measurement also judged outside"]
            else:
                return out  # one outside verdict: wait for the next round to agree
            self._confirm(
                out, shift, fix, True, verdict.reasons + support, now, [a.signal for a in corr]
            )
        elif verdict.verdict == "inside":
            self._confirm(
                out,
                shift,
                fix,
                False,
                verdict.reasons + ["a move within the allowed set"],
                now,
                [a.signal for a in self._corroborating(now)],
            )
        elif self._confirm_rounds >= self.config.max_confirm_rounds:
            # Moved, but neither provably out nor in: the policy's ``unknown`` verdict decides.
            self._confirm(
                out,
                shift,
                fix,
                None,
                verdict.reasons
                + [
                    (
                        f"still straddling after {self._confirm_rounds} rounds: "
                        "a move, crossing unknown (never a confirmed crossing)"
                    )
                ],
                now,
                [a.signal for a in self._corroborating(now)],
            )
        return out

    def _corroborated_at_once(self, out: list[Transition], shift: ShiftResult, now: float) -> None:
        """Confirm a crossing on the first moved measurement when it is already a proof and an
        independent signal backs it: the issue's "sound exit + independent signal" needs no
        second round, and skipping it saves a whole round (the lab's switchover -> confirmation).

        Only a sound or certified "outside" qualifies: a calibrated one still waits for a
        re-measurement, and so does anything straddling or inside.
        """
        corr = self._corroborating(now)
        if not corr or shift.fix is None or self._home_outside():
            return
        verdict = self.jurisdiction.judge(shift.fix)
        if verdict.verdict != "outside" or verdict.rule not in ("sound", "certified"):
            return
        self._verdicts = [verdict]
        self._confirm_rounds = 1
        why = f"first measurement after the move is already a proof ({verdict.rule} rule)"
        self._go(out, State.CONFIRMING, [why], now)
        support = [f"corroborated by {a.signal}: {a.detail}" for a in corr]
        self._confirm(
            out, shift, shift.fix, True, verdict.reasons + support, now, [a.signal for a in corr]
        )

    def _confirm(
        self,
        out: list[Transition],
        shift: ShiftResult,
        fix: Fix,
        crossing: bool | None,
        reasons: list[str],
        now: float,
        signals: list[str],
    ) -> None:
        data = self._data(shift, signals=["rtt_fingerprint", *signals])
        v = self._verdicts[-1]
        # ``probability``: that the VM is where the event says (outside the allowed set for a
        # crossing, inside for a move within it); a sound or certified verdict is a proof.
        proof = v.rule in ("sound", "certified")
        prob = 1.0 if proof else (1.0 - v.p_allowed if crossing else v.p_allowed)
        data.update(
            {
                "crossing": crossing,
                "to": self.jurisdiction.label(fix),
                "jurisdiction": v.to_json(),
                "probability": round(prob, 4),
                "landmarks": len(fix.landmarks_used),
                "rounds": len(self._moves),
                "seconds": round(now - self._since, 3),
                "fix": fix.to_json(),
            }
        )
        self._go(out, State.CONFIRMED, reasons, now, events.CONFIRMED, data)
        self.confirmed_fix = fix
        self._quiet = self._unsure = 0

    def _data(self, shift: ShiftResult | None, signals: Sequence[str] = ()) -> dict[str, Any]:
        """The event payload shared by suspected and confirmed (``from``, ``to``, distance, signals)."""
        sigs = list(dict.fromkeys(signals))  # each signal once, however often it fired
        if shift is not None and shift.outcome == "moved" and "rtt_fingerprint" not in sigs:
            sigs.insert(0, "rtt_fingerprint")
        return {
            "from": self.jurisdiction.label(self.home_fix),
            "to": self.jurisdiction.label(shift.fix)
            if shift is not None and shift.fix is not None
            else None,
            "distance_km": None
            if shift is None or shift.distance_km is None
            else round(shift.distance_km, 1),
            "signals": sigs,
            "shift": shift.to_json() if shift is not None else None,
            "allowed": sorted(self.jurisdiction.allowed),
        }

    def rebaseline(self, fix: Fix | None) -> None:
        """The daemon took a new baseline (after confirmation): fixes are now compared with this one."""
        self.home_fix = fix
        self._home_verdict = None

    def _home_outside(self) -> bool:
        """Was the VM provably outside before this move? (Sound rule only: a calibrated doubt about
        the home must not swallow a real crossing.)"""
        if self.home_fix is None:
            return False
        if self._home_verdict is None:
            self._home_verdict = replace(self.jurisdiction, basis="sound").judge(self.home_fix)
        return self._home_verdict.verdict == "outside"
