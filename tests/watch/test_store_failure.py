"""The watch keeps watching and acting when its state store fails.

A real `geoprobe watch` guards DE against the loopback testbed with a policy whose hook logs the
event. Its store is corrupt or read-only from the start, or fills up (a small tmpfs we mount and
then fill) after the baseline. Then the VM moves to Madrid: the crossing must still be confirmed,
written to the event file and acted on; the store failure is said once on stderr and once as an
event; nothing already in the store is changed or lost. Mounting needs root.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GEOPROBE = [sys.executable, "-m", "geoprobe"]
FAILED = "watching and acting on without recording"


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    if os.geteuid() != 0:
        pytest.skip("the failing stores are mounts (tmpfs, read-only bind), which need root")
    base = tmp_path_factory.mktemp("store-testbed")
    env = dict(
        os.environ,
        GEOPROBE_RUNTIME_DIR=str(base / "run"),
        GEOPROBE_STATE_DIR=str(base / "st"),
        GEOPROBE_CACHE_DIR=str(base / "cache"),
    )
    cat = base / "catalogue.json"
    argv = [*GEOPROBE, "testbed", "run", "--at-server", "Frankfurt", "--catalogue", str(cat)]
    tb = subprocess.Popen(
        [*argv, "--name", "store-test"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: cat.exists() or tb.poll() is not None, "the testbed's catalogue", 60)
        assert tb.poll() is None
        yield cat, env
    finally:
        tb.send_signal(signal.SIGTERM)
        try:
            tb.wait(30)
        except subprocess.TimeoutExpired:
            tb.kill()
            tb.wait()


def move(env: dict[str, str], to: str) -> None:
    subprocess.run(
        [*GEOPROBE, "testbed", "move", "--to-server", to, "--name", "store-test"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def fill(directory: Path) -> None:
    """Write until the filesystem says it is full."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def seed_store(state: Path, cat: Path, env: dict[str, str], tmp: Path) -> None:
    """A store holding fixes, from a watch run at home."""
    subprocess.run(
        [*GEOPROBE, "watch", "--landmarks", str(cat), "--allow", "DE", "--state", str(state)]
        + ["--events", str(tmp / "seed.jsonl"), "--interval", "0.2", "--warmup", "2"]
        + ["--signals", "none", "--rounds", "3"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("failure", ["corrupt", "read-only", "full"])
def test_a_failing_store_does_not_stop_the_watch_or_its_defence(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path, failure: str
) -> None:
    cat, env = testbed
    move(env, "Frankfurt")
    state = tmp_path / "state"
    state.mkdir()
    db = state / "geoprobe.sqlite"
    mounted = False
    if failure == "full":
        mount("-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(state))
        mounted = True
    try:
        seed_store(state, cat, env, tmp_path)
        if failure == "corrupt":
            data = bytearray(db.read_bytes())
            data[:16] = b"not a database!!"
            db.write_bytes(bytes(data))
        elif failure == "read-only":
            mount("--bind", str(state), str(state))
            mounted = True
            mount("-o", "remount,bind,ro", str(state))
        fixes_before = None
        if failure == "full":
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
                fixes_before = conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0]
        before = hashlib.sha256(db.read_bytes()).hexdigest()

        got = tmp_path / "hook.log"
        hook = tmp_path / "hook"
        hook.write_text(f"#!/bin/sh\ncat >> {got}\necho >> {got}\n")
        hook.chmod(0o755)
        policy = tmp_path / "policy.toml"
        policy.write_text(
            '[jurisdiction]\nallow = ["DE"]\n'
            f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{hook}"]\n'
        )
        ev, prom, err = tmp_path / "events.jsonl", tmp_path / "geoprobe.prom", tmp_path / "w.err"
        argv = [*GEOPROBE, "watch", "--landmarks", str(cat), "--policy", str(policy)]
        argv += ["--state", str(state), "--events", str(ev), "--metrics", str(prom)]
        argv += ["--interval", "0.5", "--warmup", "3", "--signals", "none"]
        with err.open("wb") as errf:
            watch = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errf)
        try:
            wait_for(
                lambda: (
                    "geoprobe_watch_rounds_total 6" in (prom.read_text() if prom.exists() else "")
                    or watch.poll() is not None
                ),
                "six rounds at home",
            )
            assert watch.poll() is None, err.read_text()
            if failure == "full":
                fill(state)
            move(env, "Madrid")
            wait_for(lambda: got.exists() or watch.poll() is not None, "the hook after the move")
            time.sleep(2.0)  # more rounds with the store still failing
            assert watch.poll() is None, err.read_text()
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.wait(30)
        text = err.read_text()
        assert "Traceback" not in text, text
        assert text.count(FAILED) == 1, text
        (said,) = [line for line in text.splitlines() if FAILED in line]
        assert str(db) in said
        kinds = [e["type"] for e in events(ev)]
        assert kinds.count("io.geoprobe.store.failed") == 1
        crossings = [
            e
            for e in events(ev)
            if e["type"] == "io.geoprobe.migration.confirmed" and e["data"].get("crossing") is True
        ]
        assert len(crossings) == 1, (kinds, text[-3000:])
        (fired,) = [json.loads(x) for x in got.read_text().splitlines() if x.strip()]
        assert fired["type"] == "io.geoprobe.migration.confirmed"
        assert fired["data"]["crossing"] is True
        if failure in ("corrupt", "read-only"):
            assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        if fixes_before is not None:
            (state / "filler").unlink(missing_ok=True)
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                after = conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0]
            assert after >= fixes_before
    finally:
        if mounted:  # lazily if something still holds it open: never leave a mount behind
            subprocess.run(["umount", "-l", str(state)], check=False, capture_output=True)
