"""One migration is one event: the state dir's lock against concurrent watches and checks, and
cron mode's response surviving `kill -9`.

Real processes throughout; RTTs are replayed from a synthetic world (tests/watch/watch_world.py),
so no packet leaves the machine.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from geoprobe import statelock
from geoprobe.cli import main
from geoprobe.cli.env import Environment

from .synthetic import FRANKFURT, MADRID, make_catalogue, replay

GEOPROBE = [sys.executable, "-m", "geoprobe"]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_catalogue(tmp_path_factory.mktemp("cat") / "catalogue.json")


def env_for(tmp: Path) -> dict[str, str]:
    return dict(os.environ, GEOPROBE_CACHE_DIR=str(tmp / "cache"))


# --- two watches --------------------------------------------------------------------------------


def test_a_second_watch_on_one_state_dir_refuses_and_a_killed_one_leaves_it_free(
    catalogue: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    argv = [*GEOPROBE, "watch", "--landmarks", str(catalogue), "--allow", "DE"]
    argv += ["--state", str(state), "--events", str(tmp_path / "ev.jsonl")]
    argv += ["--interval", "0.5", "--timeout", "0.05", "--signals", "none"]
    env = env_for(tmp_path)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = state / "geoprobe.lock"
    try:
        wait_for(
            lambda: (
                f"pid {first.pid}" in (lock.read_text() if lock.exists() else "")
                or first.poll() is not None
            ),
            "the first watch to take the lock",
        )
        assert first.poll() is None
        second = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 3
        (line,) = second.stderr.splitlines()
        assert str(state) in line and "in use" in line and f"pid {first.pid}" in line
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # The kernel dropped the dead holder's lock: a new watch starts at once.
    third = subprocess.run(
        [*argv, "--rounds", "1"], check=False, env=env, capture_output=True, text=True
    )
    assert third.returncode == 0, third.stderr


# --- checks ---------------------------------------------------------------------------------


def test_check_waiting_too_long_for_the_state_dir_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoprobe.watch import state as watch_state

    monkeypatch.setattr(watch_state, "LOCK_WAIT_S", 0.3)
    cat = make_catalogue(tmp_path / "catalogue.json")
    st = tmp_path / "state"
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, state_dir=tmp_path / "default")
    args = ["check", "--landmarks", str(cat), "--allow", "DE", "--state", str(st)]
    with statelock.hold(st, what="geoprobe watch"):
        code = main([*args, "--replay", str(replay(tmp_path, FRANKFURT, 1))], env=env)
    assert code == 3
    (line,) = out.getvalue().splitlines()
    assert line.startswith(f"GEOPROBE UNKNOWN - state dir {st} is in use by another geoprobe")
    assert "geoprobe watch" in line and "after waiting 0.3 s" in line


# --- twenty checks --------------------------------------------------------------------------------


def hook_policy(tmp: Path, *hooks: str) -> Path:
    policy = tmp / "policy.toml"
    policy.write_text(
        '[jurisdiction]\nallow = ["DE"]\n'
        + "".join(f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n' for h in hooks)
    )
    return policy


def logging_hook(tmp: Path, name: str, extra: str = "") -> str:
    h = tmp / name
    h.write_text(f'#!/bin/sh\necho "$GEOPROBE_EVENT_ID" >> {tmp}/{name}.log\n{extra}\n')
    h.chmod(0o755)
    return str(h)


def check_argv(catalogue: Path, policy: Path, state: Path, m: Path) -> list[str]:
    return [*GEOPROBE, "check", "--landmarks", str(catalogue), "--policy", str(policy)] + [
        "--state",
        str(state),
        "--replay",
        str(m),
    ]


def test_twenty_concurrent_checks_after_one_move_give_one_event_and_one_hook_run(
    catalogue: Path, tmp_path: Path
) -> None:
    policy = hook_policy(tmp_path, logging_hook(tmp_path, "hook", "sleep 0.2"))
    state = tmp_path / "state"
    env = env_for(tmp_path)
    home = subprocess.run(
        check_argv(catalogue, policy, state, replay(tmp_path, FRANKFURT, 1)),
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert home.returncode == 0, home.stdout + home.stderr
    away = replay(tmp_path, MADRID, 2)
    procs = [
        subprocess.Popen(
            check_argv(catalogue, policy, state, away),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert all(c == 2 for c in codes), outs  # all CRITICAL: outside DE
    migrated = [o for o, _ in outs if "migrated" in o]
    assert len(migrated) == 1, migrated
    assert len(lines(tmp_path / "hook.log")) == 1
    conn = sqlite3.connect(state / "geoprobe.sqlite")
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM watch_events WHERE type = 'io.geoprobe.migration.confirmed'"
    ).fetchone()
    conn.close()
    assert n == 1


# --- cron mode and kill -9 ----------------------------------------------------------------------


def test_cron_mode_killed_mid_response_resumes_it_and_repeats_nothing(
    catalogue: Path, tmp_path: Path
) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(os.urandom(1024))
    first = logging_hook(tmp_path, "first")
    slow = logging_hook(
        tmp_path, "slow", f"touch {tmp_path}/slow.started; [ -e {tmp_path}/go ] || sleep 60"
    )
    policy = hook_policy(tmp_path, first, slow)
    with policy.open("a") as f:
        f.write(f'[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["{key}"]\n')
    state = tmp_path / "state"
    env = env_for(tmp_path)
    home = check_argv(catalogue, policy, state, replay(tmp_path, FRANKFURT, 1))
    assert (
        subprocess.run(home, check=False, env=env, capture_output=True, timeout=120).returncode == 0
    )
    away = check_argv(catalogue, policy, state, replay(tmp_path, MADRID, 2))
    proc = subprocess.Popen(away, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: (tmp_path / "slow.started").exists() or proc.poll() is not None,
            "the second hook",
            120,
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert key.exists()  # the kill came before the wipe
    (tmp_path / "go").touch()
    again = subprocess.run(away, check=False, env=env, capture_output=True, text=True, timeout=120)
    # The move was reported by the killed run; this one resumes its response, reports no new move.
    assert again.returncode == 2 and "migrated" not in again.stdout, again.stdout
    assert "delivering it again" in again.stderr
    assert "hook (confirmed_crossing): interrupted" in again.stderr
    assert "wipe (confirmed_crossing): ok" in again.stderr
    assert not key.exists()
    assert len(lines(tmp_path / "first.log")) == 1 and len(lines(tmp_path / "slow.log")) == 1
    trail = subprocess.run(
        [*GEOPROBE, "policy", "audit", "--state", str(state), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [
        (r["action_index"], r["status"])
        for r in json.loads(trail.stdout)
        if r["status"] != "skipped"
    ]
    assert rows == [
        (0, "started"),
        (0, "ok"),
        (1, "started"),
        (1, "interrupted"),
        (2, "started"),
        (2, "ok"),
    ]
    # And a third run has nothing left to do.
    third = subprocess.run(away, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 2 and "delivering" not in third.stderr
    assert len(lines(tmp_path / "first.log")) == 1
