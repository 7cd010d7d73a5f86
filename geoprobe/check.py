"""The Nagios check as a library: measure, judge, compare with the last run, respond.

``run_check`` is everything ``geoprobe check`` does except parsing options and printing; it
returns a :class:`CheckResult` whose ``line()`` is the plugin's status line. In cron mode (a state
directory) a migration since the last run becomes the same typed event the watch publishes
(:class:`geoprobe.migration.Migration`), and the policy's response to it runs.

Exit statuses follow the plugin API: 0 OK (inside the allowed set with the policy's confidence),
1 WARNING (straddles the border, too few landmarks, or a move since the last run that crossed no
border), 2 CRITICAL (confidently outside, or a crossing since the last run), 3 UNKNOWN (cannot
measure, bad input).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoprobe.errors import GeoprobeError, MeasurementError
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement, load_measurements, min_rtts
from geoprobe.migration import PROOF_RULES, Migration, crossing_found_outside, crossing_of
from geoprobe.settings import Settings
from geoprobe.status import ExitStatus
from geoprobe.watch.jurisdiction import JurisdictionVerdict
from geoprobe.watch.shift import Baseline, ShiftResult, ShiftTest

if TYPE_CHECKING:
    from geoprobe.policy import Policy
    from geoprobe.watch.state import StoredFix, WatchStore

MeasureFn = Callable[[Sequence[Landmark]], list[Measurement]]
# One stored round is a thin baseline (its noise is unknown), so a change must be larger.
SINCE_LAST_TEST = ShiftTest(min_rounds=1, z=8.0, z_rise=12.0)


def plugin_text(text: str) -> str:
    """Nagios reads ``|`` as the start of perfdata and rewrites ``;``: neither may reach it."""
    return text.replace("|", "/").replace(";", ",").replace("\n", " ")


@dataclass(slots=True)
class CheckResult:
    status: ExitStatus
    summary: str
    perf: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for stderr: what the policy's actions did
    event: dict[str, Any] | None = None  # the migration event this run recorded, if any

    def line(self) -> str:
        perf = " ".join(f"{k}={v}" for k, v in self.perf.items())
        head = f"GEOPROBE {self.status.name} - {plugin_text(self.summary)}"
        return head + (f" | {perf}" if perf else "")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def evaluate(fix: Fix, settings: Settings) -> tuple[ExitStatus, JurisdictionVerdict, str]:
    """The plugin's verdict on one fix (no history)."""
    j = settings.jurisdiction
    v = j.judge(fix)
    n = len(fix.landmarks_used)
    where = fix.certified or fix.country or "unknown"
    cert = f", certified {fix.certified}" if fix.certified else ""
    text = f"{where} (p={v.p_allowed:.2f} allowed{cert}), {fix.error_radius_km:.0f} km radius"
    if is_outside(v, n, settings):
        return (
            ExitStatus.CRITICAL,
            v,
            f"outside {','.join(sorted(j.allowed))}: {text}, {v.reasons[0]}",
        )
    if n < settings.min_landmarks:
        return (
            ExitStatus.WARNING,
            v,
            f"only {n} landmarks answered (need {settings.min_landmarks}): {text}",
        )
    if v.verdict == "inside":
        return ExitStatus.OK, v, text
    return ExitStatus.WARNING, v, f"straddles the border: {text}"


def is_outside(v: JurisdictionVerdict, landmarks: int, settings: Settings) -> bool:
    """Outside, on evidence the plugin acts on: a proof, or a probability from enough landmarks."""
    proof = v.rule in PROOF_RULES
    return v.verdict == "outside" and (proof or landmarks >= settings.min_landmarks)


def perfdata(fix: Fix, v: JurisdictionVerdict, settings: Settings) -> dict[str, str]:
    """Perfdata whose thresholds never claim a worse state than the one reported.

    ``p_allowed`` carries thresholds only when the probability rule decided (a proof decides
    whatever the probability says), and its critical range only when the calibrated basis lets a
    probability alone make the state critical.
    """
    minp = settings.jurisdiction.min_probability
    n = len(fix.landmarks_used)
    warn = crit = ""
    if v.rule == "probability":
        warn = f"{_fmt(minp)}:"
        if settings.jurisdiction.basis == "calibrated" and n >= settings.min_landmarks:
            crit = f"{_fmt(1 - minp)}:"
    return {
        "p_allowed": f"{_fmt(v.p_allowed)};{warn};{crit};0;1",
        "radius_km": _fmt(fix.error_radius_km),
        "landmarks": f"{n};{settings.min_landmarks}:;;0",
    }


def since_last(
    last_rtts: dict[str, float],
    rtts: dict[str, float],
    remeasure: Callable[[], dict[str, float]] | None,
    test: ShiftTest = SINCE_LAST_TEST,
) -> tuple[ShiftResult, bool | None]:
    """Has the fingerprint moved since the stored one? If so, does a re-measurement agree?

    Returns the shift and True/False for the re-measurement (None when there was none to take).
    """
    base = Baseline()
    base.add(last_rtts)
    r = test.assess(base, rtts)
    if r.outcome != "moved" or remeasure is None:
        return r, None
    r2 = test.assess(base, remeasure())
    shared = len(set(r.changed) & set(r2.changed))
    return r, r2.outcome == "moved" and shared >= 0.5 * min(len(r.changed), len(r2.changed))


def _solve(cat: Catalogue, rtts: dict[str, float], cache_dir: Path | None) -> Fix:
    from geoprobe.locate import locate_from_catalogue

    fix: Fix = locate_from_catalogue(cat, rtts, cache_dir=cache_dir)
    return fix


@dataclass(frozen=True, slots=True)
class _Probe:
    """How this run measures: replayed, or probed with the method and limits given."""

    cat: Catalogue
    method: str
    samples: int
    timeout: float
    measure: MeasureFn | None

    def __call__(self) -> list[Measurement]:
        if self.measure is not None:
            return self.measure(self.cat.landmarks)
        from geoprobe.probe import measure

        return measure(self.cat.landmarks, self.method, samples=self.samples, timeout=self.timeout)


def run_check(
    cat: Catalogue,
    settings: Settings,
    *,
    method: str,
    state: Path | None = None,
    replay: Path | None = None,
    samples: int = 3,
    timeout: float = 2.0,
    dry_run: bool = False,
    measure: MeasureFn | None = None,
    cache_dir: Path | None = None,
) -> CheckResult:
    """Measure (or replay), judge, and in cron mode (``state``) report and answer a migration."""
    probe = _Probe(cat, method, samples, timeout, measure)
    ms = load_measurements(replay)[0] if replay is not None else probe()
    rtts = min_rtts(ms)
    if not rtts:
        raise MeasurementError(f"no landmark answered ({len(ms)} probed)")
    fix = _solve(cat, rtts, cache_dir)
    status, v, text = evaluate(fix, settings)
    result = CheckResult(status, text, perfdata(fix, v, settings))
    if state is None:
        return result
    from geoprobe.watch.state import locked_store

    # One run at a time per state dir: concurrent runs would each report the same move.
    with locked_store(state, what="geoprobe check") as store:
        if settings.policy is not None and not dry_run:
            result.notes += redeliver(settings.policy, store.path)
        last = store.last_fix()
        remeasure = None if replay is not None else (lambda: min_rtts(probe()))
        migration = _since_last_run(cat, settings, fix, v, rtts, last, remeasure, result, cache_dir)
        if migration is None:
            store.record_fix(fix, rtts, source="check")
        else:
            event = migration.to_event()
            # The fix, the event and its queue entry before any action: a kill during the
            # response leaves the event queued (the next run resumes it), not a new move.
            queue = settings.policy is not None and not dry_run
            store.record_fix(fix, rtts, source="check", event=event, respond=queue)
            result.event = event
            if settings.policy is not None:
                result.notes += respond(event, settings.policy, store.path, dry_run)
        # Inside and unmoved, or moved inside the allowed set: a watch's open suspicion ended.
        # (``crossing`` false alone is not enough: a move between two places outside is none.)
        unmoved_inside = migration is None and result.status == ExitStatus.OK
        moved_inside = (
            migration is not None and migration.crossing is False and v.verdict == "inside"
        )
        if settings.policy is not None and (unmoved_inside or moved_inside):
            reason = "suspicion_cleared" if migration is None else "moved_inside"
            result.notes += answer_suspicion(store, settings.policy, reason, dry_run)
    return result


def answer_suspicion(store: WatchStore, policy: Policy, reason: str, dry_run: bool) -> list[str]:
    """Give back what a watch's suspicion took, when that watch stopped before the episode ended.

    Cron mode has no suspicion stage of its own, so its runs take nothing reversibly and a
    harmless move it finds calls for nothing. But a watch stopped mid-suspicion on the same
    state dir leaves an episode open; a run that finds the VM inside, unmoved or moved inside the
    allowed set, ends it with a cleared event naming that suspicion, queued before it is recorded
    (a crash then delivers it again; the queued event also keeps the episode answered).
    """
    from geoprobe import defend
    from geoprobe.defend.reversible import open_suspicion
    from geoprobe.events import cleared_event
    from geoprobe.store import StoreError

    try:
        queued = defend.pending(store.path)
    except StoreError as exc:
        return [f"cannot read the queued events: {exc}"]
    suspected_id = open_suspicion([*store.events(), *queued])
    if suspected_id is None:
        return []
    event = cleared_event(reason, suspected_id)
    notes = [f"a watch's suspicion {suspected_id} ended without a crossing ({reason})"]
    if not dry_run:
        defend.accept(event, policy, store_path=store.path, log=notes.append)
        store.record_event(event)
    return notes + respond(event, policy, store.path, dry_run)


def _since_last_run(
    cat: Catalogue,
    settings: Settings,
    fix: Fix,
    v: JurisdictionVerdict,
    rtts: dict[str, float],
    last: StoredFix | None,
    remeasure: Callable[[], dict[str, float]] | None,
    result: CheckResult,
    cache_dir: Path | None = None,
) -> Migration | None:
    """The migration since the last run, if any; updates ``result``'s status, text and perfdata.

    Outside the allowed set is never silent: a first run there, or a run that finds it outside
    without a move the fingerprint shows, is a crossing too (``from`` null when never seen inside).
    """
    j = settings.jurisdiction
    outside = is_outside(v, len(fix.landmarks_used), settings)
    common: dict[str, Any] = {
        "to": j.label(fix),
        "jurisdiction": v.to_json(),
        "landmarks": len(fix.landmarks_used),
        "source": "check",
    }
    if last is None:
        if not outside:
            return None
        why = "outside the allowed set at the first run: never seen inside"
        result.summary = f"{why}: {result.summary}"
        return Migration(
            crossing=crossing_found_outside(v.rule),
            frm=None,
            signals=("jurisdiction",),
            reasons=(why, *v.reasons),
            **common,
        )
    shift, agrees = since_last(last.rtts, rtts, remeasure)
    km = float(haversine_km(last.lat, last.lon, fix.lat, fix.lon))
    result.perf["moved_km"] = _fmt(km)
    frm = last.certified or last.country  # as Jurisdiction.label reports a fix
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last.time))
    was_outside = outside and _was_outside(cat, settings, last, cache_dir)
    if shift.outcome == "moved" and agrees is not False:
        crossing = crossing_of(v.verdict, outside_before=was_outside)
        move = (
            f"migrated {km:.0f} km from {frm or 'unknown'} to {j.label(fix) or 'unknown'} "
            f"since {when}"
        )
        if crossing:
            result.status, result.summary = ExitStatus.CRITICAL, f"{move}: {result.summary}"
        else:
            result.status = max(result.status, ExitStatus.WARNING)
            note = "no crossing" if crossing is False else "crossing unknown"
            result.summary = f"{move} ({note}): {result.summary}"
        return Migration(
            crossing=crossing,
            frm=frm,
            distance_km=km,
            signals=("rtt_fingerprint",),
            reasons=tuple(shift.reasons),
            extra={"remeasured": agrees is not None},
            **common,
        )
    if shift.outcome == "moved":
        result.status = max(result.status, ExitStatus.WARNING)
        result.summary = (
            f"fingerprint changed since the last run but a re-measurement disagrees: "
            f"{result.summary}"
        )
    if outside and not was_outside:
        why = f"outside the allowed set, inside at the last run ({when}), with no move measured"
        result.summary = f"{why}: {result.summary}"
        return Migration(
            crossing=crossing_found_outside(v.rule),
            frm=frm,
            distance_km=km,
            signals=("jurisdiction",),
            reasons=(why, *v.reasons),
            **common,
        )
    return None


def _was_outside(
    cat: Catalogue, settings: Settings, last: StoredFix, cache_dir: Path | None
) -> bool:
    """Was the last run's fix outside the allowed set? (Re-solved from its stored RTTs.)"""
    try:
        before = _solve(cat, {k: float(r) for k, r in last.rtts.items()}, cache_dir)
    except GeoprobeError:
        return False
    return is_outside(settings.jurisdiction.judge(before), len(before.landmarks_used), settings)


def redeliver(policy: Policy, store_path: Path) -> list[str]:
    """Finish the response to a move an earlier run reported but was killed while answering."""
    from geoprobe import defend

    notes: list[str] = []
    try:
        for r in defend.redeliver(policy, store_path=store_path, log=notes.append):
            notes.append(f"action {r.action} ({r.verdict}): {r.status}: {r.detail}")
    except GeoprobeError as exc:
        notes.append(f"policy response failed: {exc}")
    return notes


def respond(event: dict[str, Any], policy: Policy, store_path: Path, dry_run: bool) -> list[str]:
    """Run the policy's response to a migration found since the last run, once per event.

    A failing action is reported, never turned into UNKNOWN: the migration is the news.
    """
    from geoprobe import defend

    notes: list[str] = []
    try:
        for r in defend.respond(
            event, policy, store_path=store_path, dry_run=dry_run, log=notes.append
        ):
            notes.append(f"action {r.action} ({r.verdict}): {r.status}: {r.detail}")
    except GeoprobeError as exc:
        notes.append(f"policy response failed: {exc}")
    return notes
