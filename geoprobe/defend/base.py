"""What every action shares: its context (event, deadline), its result, and running a subprocess.

Each action family lives in its own module and exposes ``run(spec, ctx) -> Outcome`` and
``plan(spec, ctx) -> str`` (what ``--dry-run`` prints; planning never touches anything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.policy import ActionSpec

OUTPUT_LIMIT = 4096  # bytes of a child's stdout/stderr kept in the audit trail

Log = Callable[[str], None]


def no_log(message: str) -> None:
    return None


class ActionFailed(Exception):
    """An action could not do its job; the runner records it and goes on to the next one."""

    def __init__(
        self, message: str, *, data: Mapping[str, Any] | None = None, warnings: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.data = dict(data or {})
        self.warnings = list(warnings)


class ActionTimeout(ActionFailed):
    """The action ran out of its policy timeout."""


@dataclass
class Deadline:
    """Monotonic deadline shared by the steps of one action (retries, scripts, files)."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, what: str) -> None:
        if self.expired():
            raise ActionTimeout(f"timed out {what}")


@dataclass
class ActionContext:
    event: Mapping[str, Any]
    verdict: str
    deadline: Deadline
    store_path: Path
    log: Log = no_log

    @property
    def event_json(self) -> bytes:
        return json.dumps(self.event, separators=(",", ":")).encode()

    @property
    def event_id(self) -> str:
        return str(self.event.get("id", ""))


@dataclass
class Outcome:
    """What a successful action reports: a one-line detail, caveats, and structured data."""

    detail: str
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionResult:
    index: int
    action: str
    verdict: str
    status: str  # ok | failed | timeout | skipped | dry-run
    detail: str
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "dry-run")

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "verdict": self.verdict,
            "status": self.status,
            "detail": self.detail,
            "warnings": self.warnings,
            "data": self.data,
            "duration_s": round(self.duration_s, 4),
        }


ActionRun = Callable[[ActionSpec, ActionContext], Outcome]
ActionPlan = Callable[[ActionSpec, ActionContext], str]


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT] + "...[truncated]"


def run_command(
    argv: Sequence[str],
    deadline: Deadline,
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Completed:
    """Run a child in its own session; on timeout kill its whole process group (hooks fork)."""
    deadline.check(f"before running {argv[0]}")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise ActionFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(stdin, timeout=max(deadline.remaining(), 0.001))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise ActionTimeout(
            f"{argv[0]} killed at the timeout",
            data={"argv": list(argv), "stdout": _clip(out), "stderr": _clip(err)},
        ) from None
    return Completed(list(argv), proc.returncode, _clip(out), _clip(err))


def check_command(argv: Sequence[str], deadline: Deadline, **kw: Any) -> Completed:
    """``run_command`` that turns a non-zero exit into ActionFailed with the child's stderr."""
    done = run_command(argv, deadline, **kw)
    if done.returncode != 0:
        msg = done.stderr.strip().splitlines()[-1:] or [""]
        raise ActionFailed(
            f"{' '.join(argv)} exited {done.returncode}: {msg[0]}".rstrip(": "),
            data={"argv": done.argv, "returncode": done.returncode, "stderr": done.stderr},
        )
    return done
