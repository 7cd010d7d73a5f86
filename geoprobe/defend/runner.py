"""Runs a verdict's actions in order: each under its timeout, each once per event, each audited.

A failing or hanging action never stops the ones after it: every action runs in a worker thread
that the runner waits on for the action's timeout (plus a short grace for the action's own
cleanup); an action that still has not returned is recorded as ``timeout`` and abandoned.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoprobe.defend import delay, hook, luks, notify, system, wipe
from geoprobe.defend.audit import AuditStore, Claim
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

GRACE_S = 2.0

ACTIONS: dict[str, tuple[ActionRun, ActionPlan]] = {
    "hook": (hook.run, hook.plan),
    "wipe": (wipe.run, wipe.plan),
    "unmount": (system.run_unmount, system.plan_unmount),
    "stop_units": (system.run_stop_units, system.plan_stop_units),
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
            state = store.status_of(event_id, spec.index) if store else None
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


def _run_unrecorded(
    event: Mapping[str, Any],
    verdict: str,
    specs: Sequence[ActionSpec],
    store_path: Path,
    log: Log,
    why: str,
) -> list[ActionResult]:
    results = []
    for spec in specs:
        res = execute(spec, _context(event, verdict, spec, store_path, log))
        res.warnings.append(f"not recorded in the state store ({why}): may fire again")
        log(f"{spec.where} {spec.action}: {res.status}: {res.detail}")
        results.append(res)
    return results


def run_actions(
    event: Mapping[str, Any],
    verdict: str,
    specs: Sequence[ActionSpec],
    *,
    store_path: Path,
    log: Log = no_log,
) -> list[ActionResult]:
    """Fire each not-yet-fired action in order; audit every one, including skips.

    If the state store cannot be opened the actions still run (a broken disk must not disarm
    the defence) and each result says it was neither deduplicated nor audited.
    """
    try:
        store = AuditStore.open(store_path)
    except (sqlite3.Error, OSError) as exc:
        log(f"state store {store_path} unavailable ({exc}); running actions unrecorded")
        return _run_unrecorded(event, verdict, specs, store_path, log, str(exc))
    event_id = str(event["id"])
    results: list[ActionResult] = []
    try:
        store.record_event(event, verdict)
        for spec in specs:
            claim = store.claim(event_id, spec.index, verdict, spec.action)
            if not isinstance(claim, Claim):
                res = _skipped(spec, claim)
                store.audit_result(event_id, res)
                log(f"{spec.where} {spec.action}: skipped ({claim})")
                results.append(res)
                continue
            if claim.attempts > 1:
                log(f"{spec.where} {spec.action}: resuming after an interrupted run")
            log(f"{spec.where} {spec.action}: running (timeout {spec.timeout:g} s)")
            res = execute(spec, _context(event, verdict, spec, store_path, log))
            if claim.attempts > 1:
                res.data["attempt"] = claim.attempts
            store.complete(claim, res)
            log(f"{spec.where} {spec.action}: {res.status}: {res.detail}")
            for w in res.warnings:
                log(f"{spec.where} {spec.action}: warning: {w}")
            results.append(res)
    finally:
        store.close()
    return results
