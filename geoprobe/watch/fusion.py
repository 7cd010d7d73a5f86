"""Fusion: one state machine turns fingerprint shifts, fixes and timing signals into a verdict.

States: ``normal -> suspect -> confirming -> confirmed -> settled`` (and back to ``normal`` when a
suspicion clears), and ``outside`` while the VM is outside the allowed set. Every transition carries
its reasons, and the ones users act on carry an event. Every round's jurisdiction verdict counts:
the daemon passes each round's fix (``Observation.fix``), and fusion judges it.

* normal/settled -> suspect: the fingerprint moved, a decisive timing/fingerprint signal fired
  (except ``LOAD_SENSITIVE`` ones, which host load alone sets off), or a signal saw a migration in
  progress (``Anomaly.precopy``: a dirty sync, a failover unplug, a free-page hint) before any RTT
  moved. Emits ``migration.suspected``; the daemon probes faster while
  suspicious.
* normal/settled -> suspect -> confirming -> confirmed in one round: the first moved measurement
  is already judged outside by the sound or certified rule *and* a decisive independent signal
  (clock step, gaps, host fingerprint, cloud notice) fired within ``signal_window_s``: a sound
  exit backed by an independent signal, so no second round is waited for.
* suspect -> confirming: a re-measurement agrees with the moved fingerprint (same landmarks changed
  the same way and, when both have fixes, the fixes lie close together).
* confirming -> confirmed, ``crossing=true``: the jurisdiction rule says *outside* (by default only
  a certified country or a sound region that leaves the allowed set, see ``jurisdiction.py``) AND
  it is corroborated, either by a decisive independent signal within ``signal_window_s`` or by the
  previous agreeing measurement also judged outside. Added delay alone cannot satisfy the sound
  rule, so a crossing cannot be forced by an on-path adversary. With the opt-in calibrated basis,
  a probability-only "outside" also needs the RTT to have *fallen* to at least ``min_decreased``
  landmarks, which added delay cannot produce.
* confirming -> confirmed, ``crossing=false``: the new fix is inside the allowed set (a move within
  it, or back into it), or the VM was already outside before this move (no new crossing).
* confirming -> confirmed, ``crossing=null``: the new region still straddles the border after
  ``max_confirm_rounds`` rounds: a move whose crossing is unknown (an overlapping region is never a
  confirmed crossing); the policy's ``unknown`` verdict decides what to do.
* unsure fingerprints (RTTs only rose) raise a suspicion after ``unsure_rounds`` rounds in a row; if
  they persist ``max_confirm_rounds`` more, the move is confirmed with ``crossing=null`` (unknown):
  rises alone can never take the sound region out of the allowed set.
* confirming/suspect -> normal: the fingerprint is back at its baseline for ``clear_rounds``
  rounds.
* confirmed -> settled: ``settle_rounds`` quiet rounds against the new baseline taken after the
  move.
* any state -> confirmed, ``crossing=true`` (``from`` null when the VM was never seen inside):
  ``outside_rounds`` rounds in a row judged outside by a proof, whether or not the fingerprint
  showed a move (at start, during warm-up, or a change too gradual for the shift test). Two
  independent measurements that each prove the VM outside corroborate each other. An outside
  verdict from the calibrated probability alone gives ``crossing=null``: added delay could have
  produced it.
* confirmed -> outside: every confirmation whose new fix is judged outside. No baseline is taken
  there; each round is judged instead.
* outside -> confirmed, ``crossing=false``: ``outside_rounds`` rounds in a row not judged outside;
  the daemon then takes a new baseline at the place it is judged to be.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from geoprobe import events
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.migration import Migration, crossing_found_outside, crossing_of
from geoprobe.watch.jurisdiction import Jurisdiction, JurisdictionVerdict
from geoprobe.watch.shift import ShiftResult

# Signals that host load alone sets off (a host that preempts the vCPU makes a first-write pass
# slow just as a dirty sync does): they corroborate a move, but never raise a suspicion alone. The
# dirty-sync probe (``dirty_sync``, ``precopy``) is the specific test that replaces them there.
LOAD_SENSITIVE = frozenset({"first_write"})


def raises_suspicion(a: Anomaly) -> bool:
    """Whether this anomaly alone opens a suspicion at rest: a migration seen in progress, or a
    decisive signal that host load alone does not set off."""
    return a.precopy or (a.decisive and a.signal not in LOAD_SENSITIVE)


class State(StrEnum):
    NORMAL = "normal"
    SUSPECT = "suspect"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    SETTLED = "settled"
    OUTSIDE = "outside"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An independent signal that fired (clock step, execution gaps, host fingerprint, cloud
    notice)."""

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
    """One round: the shift test's answer, this round's fix (every round is judged) and the signals
    that fired."""

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
    migration: Migration | None = None  # the confirmed migration ``data`` was built from

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
    outside_rounds: int = 2  # rounds in a row judged outside (or back) that confirm it on their own


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
            (
                f"re-measurement agrees: {overlap:.0%} of changed landmarks shared, "
                f"fixes {d:.0f} km apart"
            ),
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
    verdict: JurisdictionVerdict | None = None  # this round's, when it had a fix
    _outside_seen: int = 0  # rounds in a row judged outside, outside the ``outside`` state
    _back_seen: int = 0  # rounds in a row not judged outside, in the ``outside`` state
    _outside_fix: Fix | None = None  # the last fix judged outside (``from`` when coming back)

    @property
    def outside(self) -> bool:
        """Outside the allowed set since a confirmation: no home, every round judged."""
        return self.state == State.OUTSIDE

    @property
    def judging(self) -> bool:
        """A round was judged outside (or, outside, not) and the next one decides."""
        return self._outside_seen > 0 or self._back_seen > 0

    @property
    def fast(self) -> bool:
        """Probe faster while a suspicion is open, or after an unsure fingerprint."""
        return self._hurry or self.state in (State.SUSPECT, State.CONFIRMING) or self.judging

    def _go(
        self,
        out: list[Transition],
        to: State,
        reasons: list[str],
        now: float,
        event_type: str | None = None,
        data: dict[str, Any] | None = None,
        migration: Migration | None = None,
    ) -> None:
        out.append(Transition(self.state, to, reasons, now, event_type, data or {}, migration))
        self.state = to

    def _corroborating(self, now: float) -> list[Anomaly]:
        """The decisive anomalies of the window, the latest of each signal."""
        latest = {
            a.signal: a
            for a in self._signals
            if a.decisive and now - a.time <= self.config.signal_window_s
        }
        return list(latest.values())

    def step(self, obs: Observation) -> list[Transition]:
        """Feed one round; return the transitions it caused (each with its reasons)."""
        out: list[Transition] = []
        self._take_signals(obs)
        self.verdict = self.jurisdiction.judge(obs.fix) if obs.fix is not None else None
        handler = HANDLERS[self.state]
        if self.state == State.OUTSIDE:
            handler(self, out, obs)  # every round judged on its own: no fingerprint to follow
            return out
        if obs.shift is not None:
            self._hurry = obs.shift.outcome == "unsure"
            self._unsure = self._unsure + 1 if self._hurry else 0
        if not self._persistent_rises(out, obs):
            handler(self, out, obs)
        if not self.outside and not any(t.to == State.CONFIRMED for t in out):
            self._outside_without_move(out, obs)
        return out

    def _outside_without_move(self, out: list[Transition], obs: Observation) -> None:
        """any -> confirmed -> outside: ``outside_rounds`` rounds in a row judged outside.

        Whether or not the fingerprint showed a move: a watch started outside, a move during
        warm-up, or one the shift test could not see must not leave the watch quiet.
        """
        v, fix = self.verdict, obs.fix
        if v is None or fix is None:
            return  # no fix this round: neither for nor against
        if v.verdict != "outside" or self._home_outside():
            self._outside_seen = 0
            return
        self._outside_seen += 1
        if self._outside_seen == 1 and self.state not in (State.SUSPECT, State.CONFIRMING):
            self._open(obs.time, None)
        if self._outside_seen < self.config.outside_rounds:
            return
        crossing = crossing_found_outside(v.rule)
        why = (
            f"judged outside the allowed set {self._outside_seen} rounds in a row"
            + (" (never seen inside)" if self.home_fix is None else "")
            + (
                ""
                if crossing
                else ": by the calibrated probability only, which added delay can forge"
            )
        )
        self._verdicts = [v]
        self._confirm(
            out,
            obs.shift,
            fix,
            crossing,
            [why, *v.reasons],
            obs.time,
            ["jurisdiction"],
        )

    def _take_signals(self, obs: Observation) -> None:
        """Keep this round's anomalies (stamped with its time) and forget the ones too old."""
        now = obs.time
        self._signals.extend(a if a.time else replace(a, time=now) for a in obs.anomalies)
        self._signals = [a for a in self._signals if now - a.time <= self.config.signal_window_s]

    def _open(self, now: float, first: ShiftResult | None) -> None:
        """Start a new episode: its moved measurements, verdicts and counters."""
        self._moves = [first] if first is not None else []
        self._verdicts, self._quiet, self._confirm_rounds, self._since = [], 0, 0, now

    def _persistent_rises(self, out: list[Transition], obs: Observation) -> bool:
        """Unsure fingerprints (RTTs only rose) raise a suspicion after ``unsure_rounds`` rounds
        in a row.

        Rises that persist are load, added delay, or a move away from every landmark; from
        confirmed too, since a further move against the new baseline opens a new episode.
        """
        shift = obs.shift
        if (
            shift is None
            or self._unsure < self.config.unsure_rounds
            or self.state not in (State.NORMAL, State.SETTLED, State.CONFIRMED)
        ):
            return False
        self._open(obs.time, None)
        why = f"fingerprint changed for {self._unsure} rounds in a row without RTT falling"
        self._go(
            out,
            State.SUSPECT,
            [why, *shift.reasons],
            obs.time,
            events.SUSPECTED,
            self._data(shift),
        )
        return True

    def _on_normal(self, out: list[Transition], obs: Observation) -> None:
        """normal/settled -> suspect: the fingerprint moved, a decisive timing/fingerprint signal
        fired (except ``LOAD_SENSITIVE`` ones, which host load alone sets off), or a signal saw a
        migration in progress (``Anomaly.precopy``: a dirty sync, a failover unplug, a free-page
        hint) before any RTT moved. Emits ``migration.suspected``; the daemon probes faster while
        suspicious.

        When the moved measurement is already a proof backed by a signal, the crossing is
        confirmed in this round (see ``_corroborated_at_once``).
        """
        shift, now = obs.shift, obs.time
        moved = shift if shift is not None and shift.outcome == "moved" else None
        triggers = [a for a in obs.anomalies if raises_suspicion(a)]
        if moved is None and not triggers:
            return
        reasons = list(moved.reasons) if moved is not None else []
        reasons += [f"signal {a.signal}: {a.detail}" for a in triggers]
        self._open(now, moved)
        self._go(
            out,
            State.SUSPECT,
            reasons,
            now,
            events.SUSPECTED,
            self._data(shift, signals=[a.signal for a in triggers]),
        )
        if moved is not None:
            self._corroborated_at_once(out, moved, now)

    def _on_confirmed(self, out: list[Transition], obs: Observation) -> None:
        """confirmed -> settled: ``settle_rounds`` quiet rounds against the new baseline taken after
        the move.

        A further move against that baseline opens a new episode."""
        shift, now = obs.shift, obs.time
        if shift is not None and shift.outcome == "moved":
            self._open(now, shift)
            self._go(
                out, State.SUSPECT, list(shift.reasons), now, events.SUSPECTED, self._data(shift)
            )
            self._corroborated_at_once(out, shift, now)
        elif shift is not None and shift.outcome == "not_moved":
            self._quiet += 1
            if self._quiet >= self.config.settle_rounds:
                why = f"{self._quiet} quiet rounds at the new location"
                self._go(out, State.SETTLED, [why], now)

    def _on_suspect(self, out: list[Transition], obs: Observation) -> None:
        """suspect -> confirming: a re-measurement agrees with the moved fingerprint (same landmarks
        changed the same way and, when both have fixes, the fixes lie close together).

        A moved measurement that is a proof on its own (see ``_corroborated_at_once``) confirms
        at once here too: after a suspicion raised by a signal during pre-copy, or by a round
        that mixed both places, the first clean round after the switchover decides.
        """
        shift = self._moved_while_suspicious(out, obs)
        if shift is None:
            return
        if self._corroborated_at_once(out, shift, obs.time):
            return
        if not self._moves:
            self._moves.append(shift)  # the suspicion came from a signal: the first measurement
            return
        ok, why = _agree_shift(self._moves[-1], shift, self.config)
        self._moves.append(shift)
        if not ok:
            self._verdicts.clear()
            return  # keep suspecting; compare the next round with this one
        prev = self._moves[-2]
        if prev.fix is not None:
            self._verdicts = [self.jurisdiction.judge(prev.fix)]
        self._go(out, State.CONFIRMING, [why], obs.time)
        self._judge(out, shift, obs)

    def _on_confirming(self, out: list[Transition], obs: Observation) -> None:
        """confirming -> confirmed, ``crossing=true``: the jurisdiction rule says *outside* (by
        default only a certified country or a sound region that leaves the allowed set, see
        ``jurisdiction.py``) AND it is corroborated, either by a decisive independent signal within
        ``signal_window_s`` or by the previous agreeing measurement also judged outside. Added
        delay alone cannot satisfy the sound rule, so a crossing cannot be forced by an on-path
        adversary. With the opt-in calibrated basis, a probability-only "outside" also needs the
        RTT to have *fallen* to at least ``min_decreased`` landmarks, which added delay cannot
        produce.

        Or ``crossing=false`` (inside the allowed set, or already outside before this move), or
        ``crossing=null`` (still astride the border after ``max_confirm_rounds``): ``_judge``
        decides which, on this measurement's fix."""
        shift = self._moved_while_suspicious(out, obs)
        if shift is not None:
            self._judge(out, shift, obs)

    def _moved_while_suspicious(
        self, out: list[Transition], obs: Observation
    ) -> ShiftResult | None:
        """What suspect and confirming share: the moved measurement to go on with, or None.

        confirming/suspect -> normal: the fingerprint is back at its baseline for ``clear_rounds``
        rounds. Unsure rounds that persist ``max_confirm_rounds`` past the suspicion confirm a
        move with ``crossing=null``: rises alone can never take the sound region out of the
        allowed set.
        """
        shift, now = obs.shift, obs.time
        if shift is None:
            return None
        if shift.outcome == "not_moved":
            self._quiet += 1
            if self._quiet >= self.config.clear_rounds:
                why = f"fingerprint at its baseline for {self._quiet} rounds"
                if shift.near is not None and shift.max_move_km is not None:
                    why += f"; still near {shift.near} (moved at most {shift.max_move_km:.0f} km)"
                self._go(out, State.NORMAL, [why], now)
            return None
        fix = shift.fix or obs.fix
        if self._unsure >= self.config.unsure_rounds + self.config.max_confirm_rounds and fix:
            # For good, but nothing places it: added delay only grows the sound region, so no
            # rule can say whether this crossed a border. Report it, re-baseline, move on.
            self._verdicts.append(self.jurisdiction.judge(fix))
            why = (
                f"fingerprint changed for {self._unsure} rounds but RTT fell to no landmark: "
                "a move that cannot be placed (crossing unknown)"
            )
            self._confirm(out, shift, fix, None, [why], now, [])
            return None
        if shift.outcome != "moved":
            return None  # unsure: keep probing fast
        self._quiet = 0
        return shift

    def _judge(self, out: list[Transition], shift: ShiftResult, obs: Observation) -> None:
        """confirming -> confirmed with ``crossing`` true (outside and corroborated), false (inside,
        or outside already before the move) or null (still straddling after
        ``max_confirm_rounds`` rounds)."""
        now = obs.time
        fix = shift.fix or obs.fix
        if fix is None:
            return
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
        signals = [a.signal for a in self._corroborating(now)]
        crossing = crossing_of(verdict.verdict, outside_before=self._home_outside())
        if crossing is False:
            why = (
                "already outside the allowed set before this move: no new crossing"
                if self._home_outside()
                else "a move within the allowed set"
            )
            self._confirm(out, shift, fix, False, [*verdict.reasons, why], now, signals)
        elif crossing is True:
            corr = self._corroborating(now)
            if corr:
                support = [f"corroborated by {a.signal}: {a.detail}" for a in corr]
            elif prev_v is not None and prev_v.verdict == "outside":
                support = ["corroborated by a re-measurement also judged outside"]
            else:
                return  # one outside verdict: wait for the next round to agree
            self._confirm(out, shift, fix, True, verdict.reasons + support, now, signals)
        elif self._confirm_rounds >= self.config.max_confirm_rounds:
            # Moved, but neither provably out nor in: the policy's ``unknown`` verdict decides.
            why = (
                f"still straddling after {self._confirm_rounds} rounds: "
                "a move, crossing unknown (never a confirmed crossing)"
            )
            self._confirm(out, shift, fix, None, [*verdict.reasons, why], now, signals)

    def _on_outside(self, out: list[Transition], obs: Observation) -> None:
        """outside -> confirmed, ``crossing=false``: ``outside_rounds`` rounds in a row not judged
        outside; the daemon then takes a new baseline at the place it is judged to be."""
        v, fix = self.verdict, obs.fix
        if v is None or fix is None:
            return
        if v.verdict == "outside":
            self._back_seen = 0
            self._outside_fix = fix
            return
        self._back_seen += 1
        if self._back_seen < self.config.outside_rounds:
            return
        why = f"judged {v.verdict} {self._back_seen} rounds in a row: no longer outside"
        self._open(obs.time, None)
        self._verdicts = [v]
        self._confirm(
            out,
            obs.shift,
            fix,
            False,
            [why, *v.reasons],
            obs.time,
            ["jurisdiction"],
            frm=self._outside_fix,
        )

    def enter_outside(
        self, fix: Fix | None, now: float, out: list[Transition] | None = None
    ) -> None:
        """Outside the allowed set: no home here. (Also how a restart resumes after a crossing.)"""
        if out is not None:
            why = "outside the allowed set: no baseline is taken here, every round is judged"
            self._go(out, State.OUTSIDE, [why], now)
        else:
            self.state = State.OUTSIDE
        self.home_fix, self._home_verdict = None, None
        self._outside_fix = fix
        self._outside_seen = self._back_seen = 0

    def _corroborated_at_once(self, out: list[Transition], shift: ShiftResult, now: float) -> bool:
        """Confirm a crossing on a moved measurement that is already a proof when an independent
        signal backs it: a sound exit backed by an independent signal needs no second round, and
        skipping it saves a whole round between the switchover and the confirmation.

        Only a sound or certified "outside" qualifies: a calibrated one still waits for a
        re-measurement, and so does anything straddling or inside.
        """
        corr = self._corroborating(now)
        if not corr or shift.fix is None or self._home_outside():
            return False
        verdict = self.jurisdiction.judge(shift.fix)
        if verdict.verdict != "outside" or verdict.rule not in ("sound", "certified"):
            return False
        if not any(m is shift for m in self._moves):
            self._moves.append(shift)
        self._verdicts = [verdict]
        self._confirm_rounds = 1
        why = f"this measurement after the move is already a proof ({verdict.rule} rule)"
        self._go(out, State.CONFIRMING, [why], now)
        support = [f"corroborated by {a.signal}: {a.detail}" for a in corr]
        self._confirm(
            out, shift, shift.fix, True, verdict.reasons + support, now, [a.signal for a in corr]
        )
        return True

    def _confirm(
        self,
        out: list[Transition],
        shift: ShiftResult | None,
        fix: Fix,
        crossing: bool | None,
        reasons: list[str],
        now: float,
        signals: list[str],
        *,
        frm: Fix | None = None,
    ) -> None:
        """-> confirmed, with the typed migration event; -> outside when the new fix is."""
        data = self._data(shift, signals=["rtt_fingerprint", *signals] if shift else signals)
        v = self._verdicts[-1]
        origin = frm if frm is not None else self.home_fix
        dist = data["distance_km"]
        if dist is None and origin is not None:
            dist = float(haversine_km(origin.lat, origin.lon, fix.lat, fix.lon))
        migration = Migration(
            crossing=crossing,
            frm=self.jurisdiction.label(origin),
            to=self.jurisdiction.label(fix),
            jurisdiction=v.to_json(),
            landmarks=len(fix.landmarks_used),
            source="watch",
            signals=tuple(data["signals"]),
            distance_km=dist,
            reasons=tuple(reasons),
            extra={
                "state": State.CONFIRMED.value,
                "shift": data["shift"],
                "allowed": data["allowed"],
                "rounds": len(self._moves),
                "seconds": round(now - self._since, 3),
                "fix": fix.to_json(),
            },
        )
        self._go(
            out, State.CONFIRMED, reasons, now, events.CONFIRMED, migration.to_data(), migration
        )
        self.confirmed_fix = fix
        self._quiet = self._unsure = 0
        self._outside_seen = self._back_seen = 0
        if v.verdict == "outside":
            self.enter_outside(fix, now, out)

    def _data(self, shift: ShiftResult | None, signals: Sequence[str] = ()) -> dict[str, Any]:
        """The event payload shared by suspected and confirmed (``from``, ``to``, distance,
        signals)."""
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
        """The daemon took a new baseline (after confirmation): fixes are now compared with it."""
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


#: Each state's handler, headed by its line of the module docstring (settled reacts as normal).
HANDLERS: Mapping[State, Callable[[Fusion, list[Transition], Observation], None]] = {
    State.NORMAL: Fusion._on_normal,
    State.SETTLED: Fusion._on_normal,
    State.SUSPECT: Fusion._on_suspect,
    State.CONFIRMING: Fusion._on_confirming,
    State.CONFIRMED: Fusion._on_confirmed,
    State.OUTSIDE: Fusion._on_outside,
}
