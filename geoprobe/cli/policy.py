"""CLI: ``geoprobe policy check|fire|audit``: validate a policy, run it on an event, show the
trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import click

from geoprobe.cli.env import Environment
from geoprobe.defend import ActionResult, respond
from geoprobe.defend.audit import AuditStore
from geoprobe.errors import InputError
from geoprobe.events import MAX_EVENT_BYTES, parse_event, read_event
from geoprobe.policy import VERDICTS, Policy, load_policy
from geoprobe.status import ExitStatus
from geoprobe.store import default_path


def _summary_lines(policy: Policy) -> list[str]:
    allow = ", ".join(sorted(policy.allow)) or "(none: pass --allow to watch/check)"
    written = ", ".join(policy.allow_as_written)
    as_written = f"  (as written: {written})" if written != allow else ""
    lines = [
        f"{policy.path}: valid",
        f"  allow: {allow}{as_written}",
        (
            f"  confidence: min_probability={policy.min_probability:g} "
            f"min_landmarks={policy.min_landmarks}"
        ),
    ]
    for verdict in VERDICTS:
        specs = policy.actions_for(verdict)  # in the order they run
        lines.append(f"  on {verdict}: {len(specs)} action(s), in run order")
        lines.extend(f"    {n}. [{s.index}] {s.describe()}" for n, s in enumerate(specs, 1))
    lines.extend(f"  warning: {w}" for w in policy.warnings())
    return lines


def _print_results(env: Environment, results: list[ActionResult], as_json: bool) -> None:
    if as_json:
        env.stdout.write(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        return
    if not results:
        env.stdout.write("no actions for this event\n")
    for r in results:
        env.stdout.write(f"[{r.index}] {r.action}: {r.status}: {r.detail}\n")
        for w in r.warnings:
            env.stdout.write(f"      warning: {w}\n")


def _load_event(path: Path, stdin: IO[str]) -> dict[str, Any]:
    if str(path) != "-":
        return read_event(path)
    text = stdin.read(MAX_EVENT_BYTES + 1)
    if len(text) > MAX_EVENT_BYTES:
        raise InputError(f"larger than {MAX_EVENT_BYTES >> 20} MiB: refused", file="<stdin>")
    return parse_event(text, file="<stdin>")


def register(group: click.Group) -> None:
    @group.group("policy")
    def policy_group() -> None:
        """Validate and exercise a defence policy (TOML)."""

    @policy_group.command("check")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print the parsed policy as JSON.")
    @click.pass_obj
    def check(env: Environment, file: Path, as_json: bool) -> None:
        """Validate FILE; a malformed policy gives one line naming the field, and exit 3."""
        policy = load_policy(file)
        if as_json:
            env.stdout.write(json.dumps(policy.summary(), indent=2) + "\n")
        else:
            env.stdout.write("\n".join(_summary_lines(policy)) + "\n")

    @policy_group.command("fire")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option(
        "--event",
        "event_file",
        type=click.Path(path_type=Path),
        required=True,
        help="CloudEvent JSON (a file, its last line if JSON lines, or - for stdin).",
    )
    @click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path),
        default=None,
        help="State dir holding the store (default: the state dir).",
    )
    @click.option("--dry-run", is_flag=True, help="Print what would run; touch nothing.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def fire(
        env: Environment,
        file: Path,
        event_file: Path,
        state: Path | None,
        dry_run: bool,
        as_json: bool,
    ) -> None:
        """Run FILE's actions for one event, as the watch daemon would (once per event).

        Exit 1 when an action failed or timed out (the others still ran), 3 on bad input.
        """
        policy = load_policy(file)
        event = _load_event(event_file, env.stdin)
        store = default_path(state or env.state_dir)

        def log(message: str) -> None:
            env.stderr.write(f"geoprobe: {message}\n")

        results = respond(event, policy, store_path=store, dry_run=dry_run, log=log)
        _print_results(env, results, as_json)
        if any(r.status in ("failed", "timeout") for r in results):
            raise click.exceptions.Exit(int(ExitStatus.ACTION_FAILED))

    @policy_group.command("audit")
    @click.option("--state", "state", type=click.Path(path_type=Path), default=None)
    @click.option("--event", "event_id", default=None, help="Only this event id.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def audit(env: Environment, state: Path | None, event_id: str | None, as_json: bool) -> None:
        """Show the defence audit trail from the state store."""
        path = default_path(state or env.state_dir)
        store = AuditStore.read(path)  # StoreError (one line, exit 3) rather than an empty audit
        try:
            rows = store.trail(event_id)
        finally:
            store.close()
        if as_json:
            env.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        for r in rows:
            env.stdout.write(
                f"{r['ts']:.3f} {r['event_id']} {r['verdict']} [{r['action_index']}] "
                f"{r['action']}: {r['status']}: {r['detail']}\n"
            )
