"""CLI: ``geoprobe check``, a Nagios/Icinga plugin (stateless, or cron mode with ``--state``).

Exit codes follow the plugin API exactly: 0 OK (inside the allowed set with the policy's
confidence), 1 WARNING (straddles the border, too few landmarks, or a migration inside the allowed
set since the last run), 2 CRITICAL (confidently outside, or a crossing since the last run), 3
UNKNOWN (cannot measure, bad input, and usage errors too: click's own exit 2 would read as
CRITICAL to a monitoring system). One status line on stdout, perfdata after ``|``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from geoprobe import events
from geoprobe.cli.env import Environment
from geoprobe.cli.options import allow_option, landmarks_option, method_option
from geoprobe.errors import GeoprobeError, InputError, MeasurementError
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue
from geoprobe.measurement import Measurement, load_measurements, min_rtts
from geoprobe.status import ExitStatus
from geoprobe.watch.jurisdiction import Jurisdiction, JurisdictionVerdict
from geoprobe.watch.shift import Baseline, ShiftResult, ShiftTest

DEFAULT_MIN_PROBABILITY = 0.9
DEFAULT_MIN_LANDMARKS = 3


class NagiosCommand(click.Command):
    """A usage error is UNKNOWN (3) with a Nagios status line, not click's exit 2 (CRITICAL)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            env = parent.find_object(Environment) if parent is not None else None
            line = f"GEOPROBE UNKNOWN - usage: {exc.format_message()}"
            if env is not None:
                env.stdout.write(line + "\n")
            else:
                click.echo(line)
            raise click.exceptions.Exit(int(ExitStatus.UNKNOWN)) from None


@dataclass(slots=True)
class Settings:
    """The allowed set and thresholds, from --allow and/or --policy (the command line wins)."""

    jurisdiction: Jurisdiction
    min_landmarks: int
    policy: Any = None


def resolve_settings(
    allow: str | None,
    policy_path: Path | None,
    basis: str,
    min_probability: float | None = None,
    min_landmarks: int | None = None,
) -> Settings:
    """Shared by check and watch: a policy gives defaults, explicit options override them."""
    policy = None
    codes: set[str] = set()
    minp, minl = DEFAULT_MIN_PROBABILITY, DEFAULT_MIN_LANDMARKS
    if policy_path is not None:
        from geoprobe.policy import load_policy

        policy = load_policy(policy_path)
        codes = set(policy.allow)
        minp, minl = policy.min_probability, policy.min_landmarks
    if allow is not None:
        from geoprobe.geo.groups import expand

        codes = expand(c for c in allow.split(",") if c.strip())
    if not codes:
        raise InputError(
            "no allowed jurisdictions: give --allow CODES or a --policy FILE", field="allow"
        )
    j = Jurisdiction.of(
        codes, min_probability=min_probability if min_probability is not None else minp, basis=basis
    )
    return Settings(j, min_landmarks if min_landmarks is not None else minl, policy)


@dataclass(slots=True)
class Result:
    status: ExitStatus
    summary: str
    perf: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for stderr: what the policy's actions did

    def line(self) -> str:
        perf = " ".join(f"{k}={v}" for k, v in self.perf.items())
        return f"GEOPROBE {self.status.name} - {self.summary}" + (f" | {perf}" if perf else "")


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
    proof = v.rule in ("certified", "sound")
    if v.verdict == "outside" and (proof or n >= settings.min_landmarks):
        return (
            ExitStatus.CRITICAL,
            v,
            f"outside {','.join(sorted(j.allowed))}: {text}; {v.reasons[0]}",
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


def perfdata(fix: Fix, v: JurisdictionVerdict, settings: Settings) -> dict[str, str]:
    minp = settings.jurisdiction.min_probability
    return {
        "p_allowed": f"{_fmt(v.p_allowed)};{_fmt(minp)}:;{_fmt(1 - minp)}:;0;1",
        "radius_km": _fmt(fix.error_radius_km),
        "landmarks": f"{len(fix.landmarks_used)};{settings.min_landmarks}:;;0",
    }


def _measure(cat: Catalogue, method: str | None, samples: int, timeout: float) -> list[Measurement]:
    from geoprobe.cli.locate import choose_method
    from geoprobe.probe import measure

    return measure(cat.landmarks, method or choose_method(cat), samples=samples, timeout=timeout)


def _solve(cat: Catalogue, rtts: dict[str, float]) -> Fix:
    from geoprobe.locate import locate_from_catalogue

    fix: Fix = locate_from_catalogue(cat, rtts)
    return fix


def since_last(
    last_rtts: dict[str, float],
    rtts: dict[str, float],
    remeasure: Callable[[], dict[str, float]] | None,
    test: ShiftTest,
) -> tuple[ShiftResult, bool | None]:
    """Has the fingerprint moved since the stored one? If so and we can, does a re-measurement agree?

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


def run_check(
    env: Environment,
    cat: Catalogue,
    settings: Settings,
    *,
    state: Path | None,
    replay: Path | None,
    method: str | None,
    samples: int,
    timeout: float,
    dry_run: bool = False,
) -> Result:
    if replay is not None:
        ms, _meta = load_measurements(replay)
    else:
        ms = _measure(cat, method, samples, timeout)
    rtts = min_rtts(ms)
    if not rtts:
        raise MeasurementError(f"no landmark answered ({len(ms)} probed)")
    fix = _solve(cat, rtts)
    status, v, text = evaluate(fix, settings)
    perf = perfdata(fix, v, settings)
    notes: list[str] = []
    if state is None:
        return Result(status, text, perf)

    from geoprobe.watch.state import locked_store

    # One check at a time per state dir: concurrent runs would each report the same move.
    with locked_store(state, what="geoprobe check") as store:
        if settings.policy is not None and not dry_run:
            notes += redeliver(settings.policy, store.path)
        last = store.last_fix()
        recorded = False
        if last is not None:

            def remeasure() -> dict[str, float]:
                return min_rtts(_measure(cat, method, samples, timeout))

            # One stored round is a thin baseline (its noise is unknown), so a fall must be larger.
            shift, agrees = since_last(
                last.rtts,
                rtts,
                None if replay is not None else remeasure,
                ShiftTest(min_rounds=1, z=8.0, z_rise=12.0),
            )
            km = float(haversine_km(last.lat, last.lon, fix.lat, fix.lon))
            perf["moved_km"] = _fmt(km)
            if shift.outcome == "moved" and agrees is not False:
                j = settings.jurisdiction
                frm = last.certified or last.country  # as Jurisdiction.label reports a fix
                crossing = v.verdict == "outside"
                when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last.time))
                move = (
                    f"migrated {km:.0f} km from {frm or 'unknown'} to {j.label(fix) or 'unknown'} "
                    f"since {when}"
                )
                event = events.make_event(
                    events.CONFIRMED,
                    {
                        "crossing": crossing,
                        "from": frm,
                        "to": j.label(fix),
                        "distance_km": round(km, 1),
                        "signals": ["rtt_fingerprint"],
                        "jurisdiction": v.to_json(),
                        "source": "check",
                        "probability": 1.0
                        if v.rule in ("certified", "sound")
                        else round(1 - v.p_allowed, 4),
                        "landmarks": len(fix.landmarks_used),
                        "remeasured": agrees is not None,
                    },
                )
                # The fix, the event and its queue entry before any action: a kill during the
                # response leaves the event queued (the next run resumes it), not a new move.
                recorded = True
                store.record_fix(
                    fix,
                    rtts,
                    source="check",
                    event=event,
                    respond=settings.policy is not None and not dry_run,
                )
                if settings.policy is not None:
                    notes += respond(event, settings.policy, store.path, dry_run)
                if crossing:
                    status, text = ExitStatus.CRITICAL, f"{move}: {text}"
                else:
                    status = max(status, ExitStatus.WARNING)
                    text = f"{move} (no crossing): {text}"
            elif shift.outcome == "moved":
                status = max(status, ExitStatus.WARNING)
                text = (
                    f"fingerprint changed since the last run but a re-measurement disagrees: {text}"
                )
        if not recorded:
            store.record_fix(fix, rtts, source="check")
    return Result(status, text, perf, notes)


def respond(event: dict[str, Any], policy: Any, store_path: Path, dry_run: bool) -> list[str]:
    """Run the policy's response to a migration found since the last run (DEFEND), once per event.

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


def redeliver(policy: Any, store_path: Path) -> list[str]:
    """Finish the response to a move an earlier run reported but was killed while answering."""
    from geoprobe import defend

    notes: list[str] = []
    try:
        for r in defend.redeliver(policy, store_path=store_path, log=notes.append):
            notes.append(f"action {r.action} ({r.verdict}): {r.status}: {r.detail}")
    except GeoprobeError as exc:
        notes.append(f"policy response failed: {exc}")
    return notes


@click.command("check", cls=NagiosCommand)
@landmarks_option()
@allow_option()
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy TOML: allowed set and confidence thresholds (--allow overrides its set).",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cron mode: compare with the last fix stored here, report a migration, record this fix.",
)
@click.option(
    "--replay",
    "replay_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use saved measurements instead of probing.",
)
@method_option()
@click.option("--samples", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option(
    "--min-probability", type=click.FloatRange(0.5, 1.0), help="Override the policy's confidence."
)
@click.option(
    "--min-landmarks", type=click.IntRange(1), help="Override the policy's minimum landmarks."
)
@click.option(
    "--basis",
    type=click.Choice(["sound", "calibrated"]),
    default="sound",
    show_default=True,
    help="What an 'outside' verdict may rest on: sound (proof) or also calibrated probability.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --policy: print the actions a migration calls for, run none.",
)
@click.pass_obj
def check_cmd(
    env: Environment,
    landmarks_path: Path | None,
    allow: str | None,
    policy_path: Path | None,
    state_dir: Path | None,
    replay_path: Path | None,
    method: str | None,
    samples: int,
    timeout: float,
    min_probability: float | None,
    min_landmarks: int | None,
    basis: str,
    dry_run: bool,
) -> None:
    """Nagios/Icinga plugin: is this machine inside the allowed jurisdictions?

    In cron mode (--state) a migration since the last run is reported, and with --policy the
    policy's response to it runs (each action once per event, audited in the state store).
    """
    try:
        from geoprobe.cli.locate import catalogue_from

        settings = resolve_settings(allow, policy_path, basis, min_probability, min_landmarks)
        cat = catalogue_from(landmarks_path)
        result = run_check(
            env,
            cat,
            settings,
            state=state_dir,
            replay=replay_path,
            method=method,
            samples=samples,
            timeout=timeout,
            dry_run=dry_run,
        )
    except GeoprobeError as exc:
        # Nagios reads the status line on stdout; people and cron mail read stderr.
        env.stderr.write(f"geoprobe check: {exc}\n")
        result = Result(ExitStatus.UNKNOWN, str(exc))
    for note in result.notes:
        env.stderr.write(f"geoprobe check: {note}\n")
    env.stdout.write(result.line() + "\n")
    env.stdout.flush()
    raise click.exceptions.Exit(int(result.status))


def register(group: click.Group) -> None:
    group.add_command(check_cmd)


__all__: Sequence[str] = ("check_cmd", "evaluate", "register", "resolve_settings", "run_check")
