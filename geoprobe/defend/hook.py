"""hook: run the owner's executable with the event's CloudEvent JSON on stdin.

``command = ["/path/prog", "arg"]`` runs one program. If ``command[0]`` is a directory it is
run-parts style: every executable regular file in it whose name run-parts would accept
(``[A-Za-z0-9_-]+``, so no dots) runs in lexical order with the remaining arguments. Names it
skips are reported, since a silently ignored ``10-wipe.sh`` would be worse than a warning.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Outcome, run_command
from geoprobe.policy import ActionSpec

RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _env(spec: ActionSpec, ctx: ActionContext) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.options.get("env", {}))
    data = ctx.event.get("data") or {}
    env.update(
        {
            "GEOPROBE_EVENT_ID": ctx.event_id,
            "GEOPROBE_EVENT_TYPE": str(ctx.event.get("type", "")),
            "GEOPROBE_VERDICT": ctx.verdict,
            "GEOPROBE_FROM": str(data.get("from") or ""),
            "GEOPROBE_TO": str(data.get("to") or ""),
            # a cleared event: the suspected event whose measures to give back, and why
            "GEOPROBE_SUSPECTED_ID": str(data.get("suspected_id") or ""),
            "GEOPROBE_REASON": str(data.get("reason") or ""),
        }
    )
    return env


def scripts(directory: Path) -> tuple[list[Path], list[str]]:
    """The run-parts selection of ``directory``: (to run, in order; skipped names)."""
    run: list[Path] = []
    skipped: list[str] = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if not RUN_PARTS_NAME.match(entry.name):
            skipped.append(entry.name)
        elif entry.is_file() and os.access(entry, os.X_OK):
            run.append(entry)
        else:
            skipped.append(entry.name)
    return run, skipped


def _targets(spec: ActionSpec) -> tuple[list[list[str]], list[str]]:
    command = list(spec.options["command"])
    head = Path(command[0])
    if head.is_dir():
        run, skipped = scripts(head)
        return [[str(p), *command[1:]] for p in run], skipped
    return [command], []


def plan(spec: ActionSpec, ctx: ActionContext) -> str:
    argvs, skipped = _targets(spec)
    text = "; ".join(" ".join(a) for a in argvs) or "(no executable in directory)"
    return f"run {text} with the event JSON on stdin" + (
        f" (skipping {skipped})" if skipped else ""
    )


def run(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    argvs, skipped = _targets(spec)
    warnings = [f"run-parts skipped {name!r}" for name in skipped]
    if not argvs:
        raise ActionFailed(f"no executable hook in {spec.options['command'][0]}", warnings=warnings)
    env = _env(spec, ctx)
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    for argv in argvs:
        try:
            done = run_command(argv, ctx.deadline, stdin=ctx.event_json, env=env)
        except ActionTimeout as exc:
            exc.data["completed"] = runs
            exc.warnings[:0] = warnings
            raise
        except ActionFailed as exc:  # could not even start: record and go on with the next part
            failures.append(str(exc))
            runs.append({"argv": argv, "error": str(exc)})
            continue
        runs.append(
            {
                "argv": argv,
                "returncode": done.returncode,
                "stdout": done.stdout,
                "stderr": done.stderr,
            }
        )
        if done.returncode != 0:
            failures.append(f"{argv[0]} exited {done.returncode}")
    if failures:
        raise ActionFailed("; ".join(failures), data={"runs": runs}, warnings=warnings)
    names = ", ".join(Path(a[0]).name for a in argvs)
    return Outcome(f"ran {names}", warnings=warnings, data={"runs": runs})
