"""The reversible stage end to end: a real `geoprobe watch` on the loopback testbed.

The policy's `on.suspected` hook records "suspend" and its `on.cleared` hook records "resume".
A move inside Germany (Frankfurt to Berlin) must run both once, in that order, the resume naming
the suspected event it answers; a move to Madrid must never run the resume. Then `kill -9` inside
each `on.cleared` action: the restarted watch finishes the stage exactly once (the hook reported
`interrupted`, `start_units` run again to completion), with every audit row closed and the outbox
empty.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_crash import GEOPROBE, events, lines, query, run_testbed, wait_for, waiting_script
from .test_crash import move as crash_move

pytestmark = pytest.mark.slow

NAME = "cleared-test"
UNIT = "geoprobe-test-vault.service"
CLEARED = "io.geoprobe.migration.cleared"
SUSPECTED = "io.geoprobe.migration.suspected"
CONFIRMED = "io.geoprobe.migration.confirmed"


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    yield from run_testbed(tmp_path_factory.mktemp("cleared-testbed"), NAME)


def move(env: dict[str, str], to: str) -> None:
    crash_move(env, to, NAME)


class Watch:
    """A watch with its policy and files under one scratch dir."""

    def __init__(self, d: Path, cat: Path, env: dict[str, str], policy: str) -> None:
        self.d = d
        self.policy = d / "policy.toml"
        self.policy.write_text('[jurisdiction]\nallow = ["DE"]\n' + policy)
        self.events = d / "events.jsonl"
        self.db = d / "state" / "geoprobe.sqlite"
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
            str(d / "state"),
            "--metrics",
            str(self.metrics),
            "--interval",
            "0.5",
            "--warmup",
            "3",
            "--signals",
            "none",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        err = open(self.d / "watch.err", "ab")  # noqa: SIM115  (handed to the child)
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err
            )
        finally:
            err.close()
        return self.proc

    def at_home(self) -> None:
        assert self.proc is not None
        proc = self.proc
        wait_for(
            lambda: (
                "geoprobe_watch_rounds_total 6"
                in (self.metrics.read_text() if self.metrics.exists() else "")
                or proc.poll() is not None
            ),
            "six rounds at Frankfurt",
        )
        assert proc.poll() is None, (self.d / "watch.err").read_text()

    def of_type(self, type_: str) -> list[dict[str, object]]:
        return [e for e in events(self.events) if e["type"] == type_]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = (self.d / "watch.err").read_text()
        assert "Traceback" not in err, err


def recording_policy(rec: Path) -> str:
    return (
        '[[on.suspected]]\naction = "hook"\n'
        f'command = ["sh", "-c", "echo suspend $GEOPROBE_EVENT_ID >> {rec}"]\n'
        '[[on.cleared]]\naction = "hook"\n'
        f'command = ["sh", "-c", "echo resume $GEOPROBE_SUSPECTED_ID >> {rec}"]\n'
    )


def settle(seconds: float = 3.0) -> None:
    """A few more rounds: nothing may run twice, or late."""
    time.sleep(seconds)


def test_a_move_inside_germany_suspends_then_resumes_once(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    cat, env = testbed
    move(env, "Frankfurt")
    rec = tmp_path / "record"
    w = Watch(tmp_path, cat, env, recording_policy(rec))
    w.start()
    try:
        w.at_home()
        move(env, "Berlin")
        wait_for(lambda: len(lines(rec)) >= 2, "suspend and resume")
        settle()
    finally:
        w.stop()
    (suspected,) = w.of_type(SUSPECTED)
    (done,) = w.of_type(CLEARED)
    assert done["data"] == {"reason": "moved_inside", "suspected_id": suspected["id"]}
    assert lines(rec) == [f"suspend {suspected['id']}", f"resume {suspected['id']}"]
    assert [e["data"]["crossing"] for e in w.of_type(CONFIRMED)] == [False]  # type: ignore[index]


def test_a_move_abroad_never_resumes(testbed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    cat, env = testbed
    move(env, "Frankfurt")
    rec = tmp_path / "record"
    w = Watch(tmp_path, cat, env, recording_policy(rec))
    w.start()
    try:
        w.at_home()
        move(env, "Madrid")
        wait_for(lambda: bool(w.of_type(CONFIRMED)), "the confirmed crossing")
        settle()
    finally:
        w.stop()
    assert [e["data"]["crossing"] for e in w.of_type(CONFIRMED)] == [True]  # type: ignore[index]
    (suspected,) = w.of_type(SUSPECTED)
    assert lines(rec) == [f"suspend {suspected['id']}"]
    assert w.of_type(CLEARED) == []


def crash_policy(d: Path) -> str:
    """on.suspected stops the unit at once; on.cleared runs a waiting hook, then starts it
    through a stand-in systemctl that waits inside `start` (any other call returns at once)."""
    waiting_script(d / "hook", "hook", d)
    (d / "bin").mkdir()
    waiting_script(
        d / "bin" / "systemctl",
        "start",
        d,
        guard=f'echo "$*" >> {d}/systemctl.calls\n[ "$*" = "start -- {UNIT}" ] || exit 0\n',
    )
    return (
        f'[[on.suspected]]\naction = "stop_units"\nunits = ["{UNIT}"]\n'
        f'[[on.cleared]]\naction = "hook"\ncommand = ["{d}/hook"]\n'
        f'[[on.cleared]]\naction = "start_units"\nunits = ["{UNIT}"]\n'
    )


@pytest.mark.parametrize("stage", ["inside the hook", "inside start_units"])
def test_kill_9_inside_on_cleared_then_restart_finishes_it_exactly_once(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path, stage: str
) -> None:
    cat, env = testbed
    move(env, "Frankfurt")
    w = Watch(tmp_path, cat, env, crash_policy(tmp_path))
    if stage == "inside start_units":
        (tmp_path / "hook.go").touch()
    w.start()
    try:
        w.at_home()
        move(env, "Berlin")
        name = "hook" if stage == "inside the hook" else "start"
        wait_for(lambda: bool(lines(tmp_path / f"{name}.started")), f"the kill point: {stage}")
    finally:
        w.stop(signal.SIGKILL)
    (done,) = w.of_type(CLEARED)
    (tmp_path / "hook.go").touch()
    (tmp_path / "start.go").touch()

    def finished() -> bool:
        done_claims = query(
            w.db,
            f"SELECT COUNT(*) FROM defend_fired WHERE event_id = '{done['id']}' AND state = 'done'",
        )
        return done_claims == [(2,)] or (w.proc is not None and w.proc.poll() is not None)

    w.start()
    try:
        wait_for(lambda: finished() or len(lines(tmp_path / "hook.started")) > 1, "the restart")
        settle(2.0)
    finally:
        w.stop()

    assert len(w.of_type(CLEARED)) == 1  # the restart answers the same event, never a new one
    assert len(lines(tmp_path / "hook.started")) == 1  # a hook never runs twice
    rows = query(
        w.db,
        "SELECT action_index, status FROM defend_audit "
        f"WHERE event_id = '{done['id']}' ORDER BY id",
    )
    ends = {i: [s for j, s in rows if j == i and s not in ("started", "skipped")] for i in (0, 1)}
    starts = [c for c in lines(tmp_path / "systemctl.calls") if c.startswith("start")]
    if stage == "inside the hook":
        assert ends[0] == ["interrupted"] and ends[1] == ["ok"] and len(starts) == 1
    else:
        assert ends[0] == ["ok"] and ends[1] == ["interrupted", "ok"] and len(starts) == 2
    assert lines(tmp_path / "start.done")  # the unit was started in the end
    for i in (0, 1):
        seq = [s for j, s in rows if j == i and s != "skipped"]
        assert seq[0::2] == ["started"] * (len(seq) // 2) and len(seq) % 2 == 0, seq
    assert query(w.db, "SELECT COUNT(*) FROM defend_fired WHERE state = 'running'") == [(0,)]
    assert query(w.db, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)]
