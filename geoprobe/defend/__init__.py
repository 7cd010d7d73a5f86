"""Defence: map a migration event to the policy's verdict and run its actions.

The watch daemon calls ``accept`` then ``respond(event, policy, store_path=...)`` for every
migration event, ``pending`` at start to deliver again what a crash cut short, and
``clear(store_path)`` when a suspicion clears (that stops a background ``delay``).

Verdicts from CloudEvents (``geoprobe.events``):

- ``io.geoprobe.migration.suspected`` -> ``suspected``
- ``io.geoprobe.migration.confirmed``: read as a ``geoprobe.migration.Migration``, whose
  ``policy_verdict`` decides: ``data.crossing`` true -> ``confirmed_crossing``, unless the
  evidence is below the policy's ``[confidence]`` (not a proof and ``1 - data.p_allowed`` below
  ``min_probability``, or fewer than ``min_landmarks`` in ``data.landmarks``): then ``unknown``;
  ``data.crossing`` null -> ``unknown``; false (moved within the allowed set) -> no verdict.
- ``io.geoprobe.migration.cleared`` (a suspicion ended without a crossing) -> ``cleared``.
- any event whose ``data.verdict`` names a verdict (e.g. ``"unknown"`` when the location can no
  longer be measured) -> that verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionResult, Log, no_log
from geoprobe.errors import InputError
from geoprobe.events import CLEARED, CONFIRMED, SUSPECTED
from geoprobe.migration import Migration
from geoprobe.policy import VERDICTS, Policy

__all__ = ["ActionResult", "accept", "clear", "pending", "redeliver", "respond", "verdict_of"]


def verdict_of(event: Mapping[str, Any], policy: Policy | None = None) -> str | None:
    """The policy verdict an event calls for, or None when it calls for nothing."""
    data = event.get("data") or {}
    if not isinstance(data, Mapping):
        data = {}
    explicit = data.get("verdict")
    if isinstance(explicit, str) and explicit in VERDICTS:
        return explicit
    etype = event.get("type")
    if etype == SUSPECTED:
        return "suspected"
    if etype == CLEARED:
        return "cleared"
    if etype != CONFIRMED:
        return None
    migration = Migration.from_data(data)
    if policy is None:
        return migration.policy_verdict(0.0, 0)
    return migration.policy_verdict(policy.min_probability, policy.min_landmarks)


def respond(
    event: Mapping[str, Any],
    policy: Policy,
    *,
    store_path: str | Path,
    dry_run: bool = False,
    log: Log = no_log,
) -> list[ActionResult]:
    """Run (or with ``dry_run`` only describe) the actions the event's verdict calls for.

    Each action fires at most once per event id, also across restarts; an action interrupted by
    a crash is run again on the next delivery when its kind is safe to repeat
    (``runner.RERUN_AFTER_CRASH``) and reported ``interrupted`` otherwise. Returns one result per
    action of the verdict.
    """
    from geoprobe.defend import runner  # imports every action family; keep `verdict_of` light

    if not isinstance(event, Mapping) or not event.get("id") or not event.get("type"):
        raise InputError("not a CloudEvent: needs 'id' and 'type'", entry="event", field="id")
    verdict = verdict_of(event, policy)
    path = Path(store_path)
    specs = policy.actions_for(verdict) if verdict is not None else []
    if verdict is None or not specs:
        if verdict is not None:
            log(f"event {event['id']}: verdict {verdict}: the policy has no actions for it")
        if not dry_run:
            runner.settle(str(event["id"]), path)  # nothing left to do for it
        return []
    if dry_run:
        return runner.dry_run(event, verdict, specs, store_path=path, log=log)
    return runner.run_actions(event, verdict, specs, store_path=path, log=log)


def accept(
    event: Mapping[str, Any], policy: Policy, *, store_path: str | Path, log: Log = no_log
) -> bool:
    """Queue an event that calls for actions in the store's outbox, before handing it on.

    Until its actions have all finished, ``pending`` returns it, so a crash in between is
    followed by a redelivery instead of a lost response. Returns whether it was queued; a store
    that fails is reported through ``log`` and the response still runs.
    """
    from geoprobe.defend import runner
    from geoprobe.store import StoreError

    verdict = verdict_of(event, policy)
    if verdict is None or not policy.actions_for(verdict):
        return False
    try:
        runner.queue(event, Path(store_path))
    except StoreError as exc:
        log(f"{exc}; event {event.get('id')} not queued: a crash now would lose its response")
        return False
    return True


def pending(store_path: str | Path) -> list[dict[str, Any]]:
    """Events whose actions did not all finish (the process died part-way): deliver them again.

    Raises ``StoreError`` when the store cannot be read.
    """
    from geoprobe.defend import runner

    return runner.pending(Path(store_path))


def redeliver(policy: Policy, *, store_path: str | Path, log: Log = no_log) -> list[ActionResult]:
    """Respond again to every queued event whose actions did not all finish.

    Completed actions are skipped, interrupted ones re-run or reported (see ``runner``).
    """
    results: list[ActionResult] = []
    for event in pending(store_path):
        log(
            f"event {event.get('id')} ({event.get('type')}): its actions did not all finish "
            "before the last stop; delivering it again"
        )
        results += respond(event, policy, store_path=store_path, log=log)
    return results


def clear(store_path: str | Path | None = None) -> int:
    """The verdict cleared: stop background delays. Returns how many of ours were stopped."""
    from geoprobe.defend.delay import stop_background

    return stop_background(store_path)
