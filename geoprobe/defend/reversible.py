"""Which measures ``on.cleared`` gives back, and what ``policy check`` warns about.

A suspicion is evidence that may clear. What ``on.suspected`` takes should come back by itself
after a harmless outcome, so the policy pairs each reversible measure with its counterpart in
``on.cleared``; a measure taken on suspicion that cannot be given back (a wipe, a LUKS close, a
power-off) is valid but almost never meant, so it is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoprobe.policy import ActionSpec, Policy

# taken on suspicion -> (the action that gives it back, the field naming what it applies to)
COUNTERPARTS: dict[str, tuple[str, str]] = {
    "luks_suspend": ("luks_resume", "luks"),
    "stop_units": ("start_units", "units"),
    "signal_units": ("signal_units", "units"),
}
# No on.cleared action can undo these.
IRREVERSIBLE = frozenset({"wipe", "unmount", "poweroff"})
# Measures that make no sense once the outcome is known to be harmless.
NOT_ON_CLEARED = IRREVERSIBLE | {"delay", "luks_suspend", "stop_units"}


def _names(specs: list[ActionSpec], action: str, key: str) -> set[str]:
    return {n for s in specs if s.action == action for n in s.options.get(key, [])}


def policy_warnings(policy: Policy) -> list[str]:
    """One line per probable mistake, naming the entry; empty for a consistent policy."""
    suspected = policy.actions.get("suspected", [])
    cleared = policy.actions.get("cleared", [])
    out: list[str] = []
    for spec in suspected:
        if spec.action in IRREVERSIBLE:
            out.append(
                f"{spec.where} {spec.action}: cannot be undone, and a suspicion may clear "
                "(put it in on.confirmed_crossing, or use a reversible measure)"
            )
            continue
        pair = COUNTERPARTS.get(spec.action)
        if pair is None:
            continue
        back, key = pair
        missing = [n for n in spec.options.get(key, []) if n not in _names(cleared, back, key)]
        if missing:
            out.append(
                f"{spec.where} {spec.action}: no {back} in on.cleared for {', '.join(missing)}: "
                "it stays taken after a harmless move"
            )
    held = _names(suspected, "luks_suspend", "luks")
    for verdict in ("confirmed_crossing", "unknown"):
        for spec in policy.actions.get(verdict, []):
            both = [n for n in spec.options.get("luks", []) if n in held]
            if spec.action == "unmount" and both and spec.options.get("paths"):
                out.append(
                    f"{spec.where} unmount: {', '.join(both)} may be suspended by on.suspected; "
                    "unmounting its filesystem waits on the blocked I/O until the timeout "
                    "(a suspended volume's key is already out of memory: leave it suspended)"
                )
    for spec in cleared:
        if spec.action in NOT_ON_CLEARED:
            out.append(
                f"{spec.where} {spec.action}: runs when the suspicion ended without a crossing; "
                "on.cleared is for giving back what on.suspected took"
            )
    return out


def open_suspicion(history: Iterable[Mapping[str, Any]]) -> str | None:
    """The suspected event of an episode nothing has ended yet, from events in the order they
    were recorded (a watch stopped mid-suspicion leaves one). A confirmed move ends it with
    nothing to give back, unless it crossed nothing and ended judged inside (its cleared event
    follows it); a cleared event naming it ends it. None when every suspicion was answered."""
    from geoprobe import events

    open_id: str | None = None
    for ev in history:
        kind = ev.get("type")
        raw = ev.get("data")
        data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        judged = data.get("jurisdiction")
        inside = isinstance(judged, Mapping) and judged.get("verdict") == "inside"
        if kind == events.SUSPECTED:
            open_id = str(ev.get("id"))
        elif (kind == events.CONFIRMED and not (data.get("crossing") is False and inside)) or (
            kind == events.CLEARED and data.get("suspected_id") == open_id
        ):
            open_id = None
    return open_id
