"""Runs a verdict's actions in order: each under its timeout, each once per event, each audited.

An event handed to the policy is queued in the store's outbox first and leaves it only when all
its actions have finished, so a crash part-way is followed by a redelivery on the next start;
``RERUN_AFTER_CRASH`` says which interrupted actions run again.

A failing or hanging action never stops the ones after it: every action runs in a worker thread
that the runner waits on for the action's timeout (plus a short grace for the action's own
cleanup); an action that still has not returned is recorded as ``timeout`` and abandoned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoprobe.defend import delay, hook, luks, notify, system, wipe
from geoprobe.defend.audit import AuditStore, Claim, Interrupted
from geoprobe.defend.base import (
    ActionContext,
    ActionFailed,
    ActionPlan,
    ActionResult,
    ActionRun,
    ActionTimeout,
    Deadline,
    Log,
    Outcome,
    no_log,
)
from geoprobe.policy import ACTION_FIELDS, ActionSpec
from geoprobe.store import StoreError

GRACE_S = 2.0

ACTIONS: dict[str, tuple[ActionRun, ActionPlan]] = {
    "hook": (hook.run, hook.plan),
    "wipe": (wipe.run, wipe.plan),
    "unmount": (system.run_unmount, system.plan_unmount),
    "stop_units": (system.run_stop_units, system.plan_stop_units),
    "start_units": (system.run_start_units, system.plan_start_units),
    "signal_units": (system.run_signal_units, system.plan_signal_units),
    "poweroff": (system.run_poweroff, system.plan_poweroff),
    "webhook": (notify.run_webhook, notify.plan_webhook),
    "syslog": (notify.run_syslog, notify.plan_syslog),
    "delay": (delay.run, delay.plan),
    "luks_suspend": (luks.run_suspend, luks.plan_suspend),
    "luks_resume": (luks.run_resume, luks.plan_resume),
}
assert set(ACTIONS) == set(ACTION_FIELDS), "every policy action needs an implementation"


def execute(spec: ActionSpec, ctx: ActionContext) -> ActionResult:
    """Run one action under its timeout; never raises."""
    run = ACTIONS[spec.action][0]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = run(spec, ctx)
        except BaseException as exc:  # noqa: BLE001 - reported, never propagated
            box["error"] = exc

    t0 = time.monotonic()
    worker = threading.Thread(target=target, name=f"geoprobe-{spec.action}", daemon=True)
    worker.start()
    worker.join(spec.timeout + GRACE_S)
    elapsed = time.monotonic() - t0

    def result(
        status: str,
        detail: str,
        warnings: list[str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> ActionResult:
        return ActionResult(
            index=spec.index,
            action=spec.action,
            verdict=spec.verdict,
            status=status,
            detail=detail,
            warnings=warnings or [],
            data=data or {},
            duration_s=elapsed,
        )

    if worker.is_alive():
        return result("timeout", f"still running after {spec.timeout:g} s; abandoned")
    err = box.get("error")
    if isinstance(err, ActionTimeout):
        return result("timeout", str(err), err.warnings, err.data)
    if isinstance(err, ActionFailed):
        return result("failed", str(err), err.warnings, err.data)
    if err is not None:
        return result("failed", f"{type(err).__name__}: {err}")
    out: Outcome = box["outcome"]
    return result("ok", out.detail, out.warnings, out.data)


def _context(
    event: Mapping[str, Any], verdict: str, spec: ActionSpec, store_path: Path, log: Log
) -> ActionContext:
    return ActionContext(
        event=event,
        verdict=verdict,
        deadline=Deadline.after(spec.timeout),
        store_path=store_path,
        log=log,
    )


def _skipped(spec: ActionSpec, why: str) -> ActionResult:
    return ActionResult(
        index=spec.index,
        action=spec.action,
        verdict=spec.verdict,
        status="skipped",
        detail=f"already fired for this event ({why})",
    )


def dry_run(
    event: Mapping[str, Any],
    verdict: str,
    specs: Sequence[ActionSpec],
    *,
    store_path: Path,
    log: Log = no_log,
) -> list[ActionResult]:
    """What would run, in order. Reads the store if it exists; writes and touches nothing."""
    store = AuditStore.open_readonly(store_path)
    event_id = str(event["id"])
    results = []
    try:
        for spec in specs:
            try:
                state = store.status_of(event_id, spec.index) if store else None
            except StoreError:
                state = None
            if state is not None and state != "interrupted":
                res = _skipped(spec, state)
            else:
                ctx = _context(event, verdict, spec, store_path, log)
                try:
                    text = ACTIONS[spec.action][1](spec, ctx)
                except (OSError, ActionFailed) as exc:
                    text = f"(cannot plan: {exc})"
                res = ActionResult(
                    index=spec.index,
                    action=spec.action,
                    verdict=verdict,
                    status="dry-run",
                    detail=text,
                )
            log(f"dry-run {spec.where} {spec.action}: {res.detail}")
            results.append(res)
    finally:
        if store is not None:
            store.close()
    return results


# Kinds whose second run does no harm and finishes what a crash cut short: overwriting and
# unlinking the rest of the files, unmounting what is still mounted, stopping (or starting) what
# still is not, a second log line, a fresh memory dirtier, the same "drop your keys" signal again,
# suspending (or resuming) the volumes not yet so. A hook or a webhook may have done its work
# already and cannot be asked, so an interrupted one is reported, never repeated.
RERUN_AFTER_CRASH = frozenset(
    {
        "wipe",
        "unmount",
        "stop_units",
        "start_units",
        "signal_units",
        "poweroff",
        "syslog",
        "delay",
        "luks_suspend",
        "luks_resume",
    }
)
assert RERUN_AFTER_CRASH < set(ACTIONS)

# Without a store, one process still fires each (event, action) once.
_unrecorded_fired: set[tuple[str, int]] = set()
_unrecorded_lock = threading.Lock()


def _run_unrecorded(
    event: Mapping[str, Any],
    verdict: str,
    specs: Sequence[ActionSpec],
    store_path: Path,
    log: Log,
    why: str,
) -> list[ActionResult]:
    results = []
    event_id = str(event["id"])
    for spec in specs:
        with _unrecorded_lock:
            seen = (event_id, spec.index) in _unrecorded_fired
            _unrecorded_fired.add((event_id, spec.index))
        if seen:
            res = _skipped(spec, "by this process; the store is unavailable")
        else:
            res = execute(spec, _context(event, verdict, spec, store_path, log))
            res.warnings.append(f"not recorded in the state store ({why}): may fire again")
        log(f"{spec.where} {spec.action}: {res.status}: {res.detail}")
        results.append(res)
    return results


def _interrupted(spec: ActionSpec, verdict: str, why: Interrupted) -> ActionResult:
    return ActionResult(
        index=spec.index,
        action=spec.action,
        verdict=verdict,
        status="interrupted",
        detail=why.detail,
        data={"attempt": why.attempts},
    )


def run_actions(
    event: Mapping[str, Any],
    verdict: str,
    specs: Sequence[ActionSpec],
    *,
    store_path: Path,
    log: Log = no_log,
) -> list[ActionResult]:
    """Fire each not-yet-fired action in order; audit start and end of every one, and skips.

    If the state store cannot be opened, or fails part-way (a full disk), the remaining actions
    still run (a broken disk must not disarm the defence) and each result says it was neither
    deduplicated nor audited. When every action has finished the event leaves the outbox.
    """
    try:
        store = AuditStore.open(store_path)
    except StoreError as exc:
        log(f"{exc}; running actions unrecorded")
        return _run_unrecorded(event, verdict, specs, store_path, log, exc.problem)
    event_id = str(event["id"])
    results: list[ActionResult] = []
    try:
        try:
            store.record_event(event, verdict)
        except StoreError as exc:
            log(f"{exc}; running actions unrecorded")
            return _run_unrecorded(event, verdict, specs, store_path, log, exc.problem)
        for n, spec in enumerate(specs):
            try:
                claim = store.claim(
                    event_id,
                    spec.index,
                    verdict,
                    spec.action,
                    rerun=spec.action in RERUN_AFTER_CRASH,
                )
            except StoreError as exc:
                log(f"{exc}; running the remaining actions unrecorded")
                return results + _run_unrecorded(
                    event, verdict, specs[n:], store_path, log, exc.problem
                )
            if isinstance(claim, Interrupted):
                res = _interrupted(spec, verdict, claim)
                log(f"{spec.where} {spec.action}: interrupted: {res.detail}")
                results.append(res)
                continue
            if not isinstance(claim, Claim):
                res = _skipped(spec, claim)
                try:
                    store.audit_result(event_id, res)
                except StoreError as exc:
                    res.warnings.append(f"not recorded in the state store ({exc.problem})")
                log(f"{spec.where} {spec.action}: skipped ({claim})")
                results.append(res)
                continue
            if claim.attempts > 1:
                log(f"{spec.where} {spec.action}: running again after an interrupted attempt")
            log(f"{spec.where} {spec.action}: running (timeout {spec.timeout:g} s)")
            res = execute(spec, _context(event, verdict, spec, store_path, log))
            res.data["attempt"] = claim.attempts
            try:
                store.complete(claim, res)
            except StoreError as exc:
                res.warnings.append(f"not recorded in the state store ({exc.problem})")
                log(f"{spec.where} {spec.action}: {res.status}: {res.detail}")
                log(f"{exc}; running the remaining actions unrecorded")
                return [
                    *results,
                    res,
                    *_run_unrecorded(event, verdict, specs[n + 1 :], store_path, log, exc.problem),
                ]
            log(f"{spec.where} {spec.action}: {res.status}: {res.detail}")
            for w in res.warnings:
                log(f"{spec.where} {spec.action}: warning: {w}")
            results.append(res)
        store.settle(event_id)
    except StoreError as exc:
        log(f"{exc}; the event stays queued and is delivered again on the next start")
    finally:
        store.close()
    return results


def queue(event: Mapping[str, Any], store_path: Path) -> None:
    """Record that ``event`` awaits its response; ``StoreError`` when the store cannot say so."""
    store = AuditStore.open(store_path)
    try:
        store.queue(event)
    finally:
        store.close()


def pending(store_path: Path) -> list[dict[str, Any]]:
    """Events handed to the policy whose actions did not all finish (a crash cut them short)."""
    if not store_path.exists():
        return []
    store = AuditStore.open(store_path)
    try:
        return store.pending()
    finally:
        store.close()


def settle(event_id: str, store_path: Path) -> None:
    """Take an event that calls for nothing (any more) out of the outbox, if it is there."""
    if not store_path.exists():
        return
    try:
        store = AuditStore.open(store_path)
    except StoreError:
        return
    try:
        store.settle(event_id)
    except StoreError:
        pass
    finally:
        store.close()
