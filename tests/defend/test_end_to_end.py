"""Defence acceptance: testbed at a German server, `geoprobe watch --policy` with the acceptance
policy (tests/data/acceptance-policy.toml, filled with this run's own directory and free port), a
webhook receiver on loopback, then a move > 500 km out of DE.

Within 15 s of the move (scaled by the machine's load, see ``time_scale``): the key file is gone,
having been overwritten first (read back through a descriptor opened before); the hook has the
event JSON; the webhook has the CloudEvent; the audit in the state store records all three. With
``--dry-run`` nothing is touched. Feeding the same confirmed event again fires nothing.

The move waits for the end of the watch's warm-up (read from its metrics textfile), not for a fixed
time. Needs ../shared/data (WonderProxy); skips with the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import acceptance_policy

from .receiver import Receiver, receiver

pytestmark = pytest.mark.slow

HOME_SERVER = "Frankfurt"  # Germany
AWAY_SERVER = "Madrid"  # Spain, ~1,400 km from Frankfurt
ACCEPT_S = 15.0  # the target: counter-measures done this long after the move, on an idle machine
WARMUP_ROUNDS = 3  # the watch's default --warmup
ROUNDS_BEFORE_MOVE = WARMUP_ROUNDS + 2  # the baseline is taken, and two quiet rounds follow it


SECRET = os.urandom(4096)
GEOPROBE = [sys.executable, "-m", "geoprobe"]


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    with receiver(0) as rx:  # a free port: two runs on one machine never collide
        yield rx


@pytest.fixture
def accept(tmp_path: Path, webhook: Receiver, wonderproxy_dir: Path) -> dict[str, Path]:
    """The acceptance policy's files laid out under tmp_path: key, hook (records its stdin)."""
    home = tmp_path / "accept"
    home.mkdir()
    key = home / "secret.key"
    key.write_bytes(SECRET)
    hook = home / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {home}/hook.got\necho >> {home}/hook.got\n")
    hook.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(acceptance_policy(home, webhook.url))
    return {
        "dataset": wonderproxy_dir,
        "key": key,
        "hook_got": home / "hook.got",
        "policy": policy,
        "state": tmp_path / "state",
        "events": tmp_path / "events.jsonl",
        "metrics": tmp_path / "geoprobe.prom",
        "catalogue": tmp_path / "catalogue.json",
        "runtime": tmp_path / "run",
    }


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _wait(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


class World:
    """testbed run + watch as real processes; stopped by their own pids."""

    def __init__(
        self,
        env: dict[str, str],
        paths: dict[str, Path],
        extra_watch: list[str],
    ) -> None:
        self.env, self.paths = env, paths
        tb = [
            *GEOPROBE,
            "testbed",
            "run",
            "--dataset",
            str(paths["dataset"]),
            "--at-server",
            HOME_SERVER,
            "--catalogue",
            str(paths["catalogue"]),
            "--landmarks",
            "40",
        ]
        self.procs = [
            subprocess.Popen(tb, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ]
        _wait(lambda: paths["catalogue"].exists(), 120, "the testbed's catalogue")
        watch = [
            *GEOPROBE,
            "watch",
            "--landmarks",
            str(paths["catalogue"]),
            "--policy",
            str(paths["policy"]),
            "--events",
            str(paths["events"]),
            "--state",
            str(paths["state"]),
            "--interval",
            "1",
            "--warmup",
            str(WARMUP_ROUNDS),
            "--metrics",
            str(paths["metrics"]),
            *extra_watch,
        ]
        self.procs.append(
            subprocess.Popen(watch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )

    def move(self, to: str) -> None:
        subprocess.run(
            [*GEOPROBE, "testbed", "move", "--to-server", to],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def alive(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                err = p.stderr.read().decode() if p.stderr else ""
                pytest.fail(f"{p.args!r} exited {p.returncode}: {err[-2000:]}")
        return False

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _rounds(metrics: Path) -> int:
    """Rounds the watch has run, from its textfile (0 before the first)."""
    try:
        found = re.search(r"^geoprobe_watch_rounds_total (\S+)$", metrics.read_text(), re.MULTILINE)
    except FileNotFoundError:
        return 0
    return int(float(found.group(1))) if found else 0


def _run_world(accept: dict[str, Path], extra: list[str], scale: float) -> World:
    env = dict(
        os.environ,
        GEOPROBE_RUNTIME_DIR=str(accept["runtime"]),
        GEOPROBE_STATE_DIR=str(accept["state"]),
    )
    world = World(env, accept, extra)
    _wait(
        lambda: _rounds(accept["metrics"]) >= ROUNDS_BEFORE_MOVE or world.alive(),
        120 * scale,
        f"{ROUNDS_BEFORE_MOVE} rounds of the watch (warm-up done, baseline taken)",
    )
    assert {e.get("type") for e in _events(accept["events"])} == {"io.geoprobe.location.fix"}
    return world


def _audit(state: Path) -> list[dict[str, Any]]:
    db = state / "geoprobe.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM defend_audit ORDER BY id")]
        except sqlite3.OperationalError:
            return []


def test_confirmed_crossing_fires_the_policy(
    accept: dict[str, Path], webhook: Receiver, time_scale: float
) -> None:
    fd = os.open(accept["key"], os.O_RDONLY)  # sees the inode's bytes after the unlink
    world = _run_world(accept, [], time_scale)
    try:
        world.move(AWAY_SERVER)
        moved = time.monotonic()

        def done() -> bool:
            statuses = {(r["action"], r["status"]) for r in _audit(accept["state"])}
            return (
                {("wipe", "ok"), ("hook", "ok"), ("webhook", "ok")} <= statuses
                and not accept["key"].exists()
                and accept["hook_got"].exists()
                and bool(webhook.requests)
            )

        _wait(done, ACCEPT_S * time_scale, "wipe, hook, webhook and their audit after the move")
        took = time.monotonic() - moved
    finally:
        world.stop()
    after = os.pread(fd, len(SECRET) + 1, 0)
    os.close(fd)
    assert len(after) == len(SECRET) and after != SECRET  # overwritten before the unlink
    hook_event = json.loads(accept["hook_got"].read_text().splitlines()[0])
    assert hook_event["type"] == "io.geoprobe.migration.confirmed"
    assert hook_event["data"]["crossing"] is True  # `from`/`to` are null when uncertified
    (req,) = webhook.requests
    assert req.headers["Content-Type"] == "application/cloudevents+json"
    assert json.loads(req.body) == hook_event
    print(
        f"counter-measures complete {took:.1f} s after the move; event data: "
        f"{json.dumps(hook_event['data'])[:300]}"
    )

    # The same event again (a restarted daemon replaying it): nothing fires.
    ev_file = accept["state"].parent / "again.json"
    ev_file.write_text(json.dumps(hook_event))
    res = subprocess.run(
        [
            *GEOPROBE,
            "policy",
            "fire",
            str(accept["policy"]),
            "--event",
            str(ev_file),
            "--state",
            str(accept["state"]),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [r["status"] for r in json.loads(res.stdout)] == ["skipped"] * 3
    assert len(webhook.requests) == 1
    assert accept["hook_got"].read_text().count('"specversion"') == 1


def test_dry_run_touches_nothing(
    accept: dict[str, Path], webhook: Receiver, time_scale: float
) -> None:
    world = _run_world(accept, ["--dry-run"], time_scale)
    try:
        world.move(AWAY_SERVER)
        _wait(
            lambda: any(
                e.get("type") == "io.geoprobe.migration.confirmed"
                for e in _events(accept["events"])
            ),
            ACCEPT_S * time_scale,
            "the confirmed crossing",
        )
        time.sleep(2.0)  # give a (wrongly) firing policy time to show itself
    finally:
        world.stop()
    assert accept["key"].read_bytes() == SECRET
    assert not accept["hook_got"].exists()
    assert webhook.requests == []
    assert [r for r in _audit(accept["state"]) if r["status"] != "dry-run"] == []
