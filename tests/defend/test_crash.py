"""`kill -9` of a real `geoprobe watch` at each step of a three-action defence, then a restart.

The testbed (built-in world, loopback) puts the VM at Frankfurt; the watch guards DE with a policy
of three actions for a confirmed crossing: a hook (not safe to repeat), `stop_units` through a
stand-in `systemctl` on PATH (safe to repeat) and a wipe of a key file. The hook and the stand-in
report progress through files and wait for a "go" file, so the test can kill the watch before,
inside and after each of them. After the move to Madrid and the kill, a restarted watch must
finish the defence: the hook ran once (reported `interrupted` when the kill caught it), every
repeatable action completed exactly once, every `started` audit row has its end row, no claim is
left `running`, the outbox is empty and the move is still one event.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GEOPROBE = [sys.executable, "-m", "geoprobe"]
UNIT = "geoprobe-test-vault.service"
WAIT_S = 90.0


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in lines(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return list(conn.execute(sql))
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def run_testbed(base: Path, name: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A loopback testbed at Frankfurt named ``name``, its dirs under ``base``: (catalogue, env)."""
    env = dict(
        os.environ,
        GEOPROBE_RUNTIME_DIR=str(base / "run"),
        GEOPROBE_STATE_DIR=str(base / "st"),
        GEOPROBE_CACHE_DIR=str(base / "cache"),
    )
    cat = base / "catalogue.json"
    tb = subprocess.Popen(
        [*GEOPROBE, "testbed", "run", "--at-server", "Frankfurt", "--catalogue", str(cat)]
        + ["--name", name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: cat.exists() or tb.poll() is not None, "the testbed's catalogue", 60)
        assert tb.poll() is None, tb.stderr.read().decode() if tb.stderr else ""
        yield cat, env
    finally:
        tb.send_signal(signal.SIGTERM)
        try:
            tb.wait(30)
        except subprocess.TimeoutExpired:
            tb.kill()
            tb.wait()


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    yield from run_testbed(tmp_path_factory.mktemp("crash-testbed"), "crash-test")


def move(env: dict[str, str], to: str, name: str = "crash-test") -> None:
    subprocess.run(
        [*GEOPROBE, "testbed", "move", "--to-server", to, "--name", name],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def waiting_script(path: Path, name: str, d: Path, guard: str = "") -> None:
    """A program that logs its start, waits for `<name>.go` (at most 60 s), logs its end."""
    path.write_text(
        "#!/bin/sh\n"
        f"{guard}"
        f'echo "$$ $*" >> {d}/{name}.started\n'
        f"i=0; while [ ! -e {d}/{name}.go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        f'echo "$$ $*" >> {d}/{name}.done\n'
    )
    path.chmod(0o755)


class Defence:
    """The policy, its programs, the key and the watch's files, all under one scratch dir."""

    def __init__(self, d: Path, cat: Path, env: dict[str, str]) -> None:
        self.d = d
        self.key = d / "secret.key"
        self.key.write_bytes(os.urandom(4096))
        waiting_script(d / "hook", "hook", d)
        (d / "bin").mkdir()
        # Anything but stopping the test unit fails, so a wrong PATH can never reach real systemd.
        waiting_script(
            d / "bin" / "systemctl",
            "systemctl",
            d,
            guard=f'[ "$*" = "stop -- {UNIT}" ] || exit 1\n',
        )
        self.policy = d / "policy.toml"
        self.policy.write_text(
            '[jurisdiction]\nallow = ["DE"]\n'
            f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{d}/hook"]\n'
            f'[[on.confirmed_crossing]]\naction = "stop_units"\nunits = ["{UNIT}"]\n'
            f'[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["{self.key}"]\n'
        )
        self.events = d / "events.jsonl"
        self.state = d / "state"
        self.db = self.state / "geoprobe.sqlite"
        self.metrics = d / "geoprobe.prom"
        self.env = dict(env, PATH=f"{d / 'bin'}:{env['PATH']}")
        self.argv = [
            *GEOPROBE,
            "watch",
            "--landmarks",
            str(cat),
            "--policy",
            str(self.policy),
            "--events",
            str(self.events),
            "--state",
            str(self.state),
            "--metrics",
            str(self.metrics),
            "--interval",
            "0.5",
            "--warmup",
            "3",
            "--signals",
            "none",
        ]

    def start(self) -> subprocess.Popen[bytes]:
        err = open(self.d / "watch.err", "ab")  # noqa: SIM115  (handed to the child)
        try:
            return subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()

    def go(self, *names: str) -> None:
        for n in names:
            (self.d / f"{n}.go").touch()

    def confirmed(self) -> list[dict[str, Any]]:
        return [e for e in events(self.events) if e["type"] == "io.geoprobe.migration.confirmed"]

    def audit(self) -> list[tuple[int, str]]:
        return [
            (int(i), str(s))
            for i, s in query(self.db, "SELECT action_index, status FROM defend_audit ORDER BY id")
        ]

    def watch_state(self) -> str:
        """The state machine's state from the metrics file ('' before the first round)."""
        text = self.metrics.read_text() if self.metrics.exists() else ""
        for line in text.splitlines():
            if line.startswith("geoprobe_watch_state{") and line.endswith(" 1"):
                return line.split('state="', 1)[1].split('"', 1)[0]
        return ""

    def finished(self) -> bool:
        ends = {i for i, s in self.audit() if s not in ("started", "skipped")}
        pending = query(self.db, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
        return ends == {0, 1, 2} and bool(pending) and pending[0][0] == 0


# Where the kill lands: the name, what to release first, and what must have happened.
STAGES: dict[str, tuple[tuple[str, ...], Callable[[Defence], bool]]] = {
    "before the hook": ((), lambda w: bool(w.confirmed())),
    "inside the hook": ((), lambda w: bool(lines(w.d / "hook.started"))),
    "after the hook": (("hook",), lambda w: bool(lines(w.d / "hook.done"))),
    "inside stop_units": (("hook",), lambda w: bool(lines(w.d / "systemctl.started"))),
    "after stop_units": (("hook", "systemctl"), lambda w: bool(lines(w.d / "systemctl.done"))),
    "after the wipe": (("hook", "systemctl"), lambda w: not w.key.exists()),
    "after everything": (("hook", "systemctl"), Defence.finished),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_at_each_step_then_restart_completes_the_defence_exactly_once(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path, stage: str
) -> None:
    cat, env = testbed
    move(env, "Frankfurt")
    w = Defence(tmp_path, cat, env)
    release, reached = STAGES[stage]
    watch = w.start()
    try:
        wait_for(
            lambda: (
                "geoprobe_watch_rounds_total 6"
                in (w.metrics.read_text() if w.metrics.exists() else "")
                or watch.poll() is not None
            ),
            "six rounds at Frankfurt",
        )
        assert watch.poll() is None, (w.d / "watch.err").read_text()
        w.go(*release)
        move(env, "Madrid")
        wait_for(lambda: reached(w) or watch.poll() is not None, f"the kill point: {stage}")
        watch.send_signal(signal.SIGKILL)
    finally:
        watch.kill()
        watch.wait(30)
    hook_had_started = bool(lines(w.d / "hook.started"))
    stop_had_started = len(lines(w.d / "systemctl.started"))
    assert len(w.confirmed()) == 1

    w.go("hook", "systemctl")
    restart = w.start()
    try:
        states: list[str] = []

        def finished() -> bool:
            states.append(w.watch_state())
            return w.finished() or restart.poll() is not None

        wait_for(finished, "the defence to finish")
        assert restart.poll() is None, (w.d / "watch.err").read_text()
        end = time.monotonic() + 2.0  # a few more rounds: a restart must not report the move again
        while time.monotonic() < end:
            states.append(w.watch_state())
            time.sleep(0.1)
    finally:
        restart.send_signal(signal.SIGTERM)
        restart.wait(30)
    err = (w.d / "watch.err").read_text()
    assert "Traceback" not in err, err

    # Restarted in Madrid, the watch never takes it as home.
    assert "normal" not in states, states

    # One move, one event, one response.
    (ev,) = w.confirmed()
    assert ev["data"]["crossing"] is True
    assert [r[0] for r in query(w.db, "SELECT event_id FROM outbox")] == [ev["id"]]

    # The hook is never run twice. A kill while it ran (or before its end was recorded) reports
    # it interrupted; so does one between its claim and its program's start, a window a loaded
    # machine widens: the program then ran once on its own, or not at all, and is not run again.
    audit = w.audit()
    ends = {
        i: [s for j, s in audit if j == i and s not in ("started", "skipped")] for i in range(3)
    }
    runs = len(lines(w.d / "hook.started"))
    if stage == "inside the hook":
        assert ends[0] == ["interrupted"] and runs == 1
    elif ends[0] == ["ok"]:
        assert runs == 1 and not (hook_had_started and stage == "before the hook")
    else:
        assert ends[0] == ["interrupted"] and runs <= 1, (ends[0], runs)

    # Repeatable actions completed exactly once: one the kill caught runs again to completion
    # (each attempt is one call of the program), one that had finished never runs again.
    # (The kill can also land after the claim and before the program started.)
    calls = lines(w.d / "systemctl.started")
    assert ends[1] in (["ok"], ["interrupted", "ok"]) and 1 <= len(calls) <= len(ends[1])
    if stage == "inside stop_units":
        assert stop_had_started == 1 and ends[1] == ["interrupted", "ok"] and len(calls) == 2
    if stage in ("after the wipe", "after everything"):
        assert ends[1] == ["ok"]
    assert ends[2] in (["ok"], ["interrupted", "ok"]) and not w.key.exists()
    if stage == "after everything":
        assert ends[2] == ["ok"]

    # The audit is complete: every start has its end, and no claim is left running.
    for i in range(3):
        rows = [s for j, s in audit if j == i and s != "skipped"]
        assert rows[0::2] == ["started"] * (len(rows) // 2) and len(rows) % 2 == 0, rows
        assert "started" not in rows[1::2], rows
    assert query(w.db, "SELECT COUNT(*) FROM defend_fired WHERE state = 'running'") == [(0,)]
