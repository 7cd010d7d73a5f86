"""`geoprobe watch` end to end: a real testbed on loopback, real probing, real processes.

The testbed (built-in world, no dataset needed) places the VM at Frankfurt; the watch runs with
--allow DE and 1 s rounds. The full-length acceptance run with timings is
benchmarks/watch_acceptance.py; here the phases are short and the waits generous.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from geoprobe import events
from geoprobe.cli import main
from geoprobe.cli.env import Environment

from .conftest import HookPolicy


def geoprobe(*args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "geoprobe", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"did not exit on SIGTERM within {timeout} s: {err}") from None
    return proc.returncode, err


@contextlib.contextmanager
def running_testbed(tmp_path: Path, at: str) -> Iterator[tuple[Path, dict[str, str]]]:
    env = dict(
        os.environ,
        GEOPROBE_RUNTIME_DIR=str(tmp_path / "run"),
        GEOPROBE_STATE_DIR=str(tmp_path / "st"),
        GEOPROBE_CACHE_DIR=str(tmp_path / "cache"),
    )
    cat = tmp_path / "catalogue.json"
    tb = geoprobe(
        "testbed",
        "run",
        "--at-server",
        at,
        "--catalogue",
        str(cat),
        "--name",
        "watch-test",
        env=env,
    )
    try:
        wait_for(cat.exists, 60, "the testbed's catalogue")
        yield cat, env
    finally:
        stop(tb)


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    with running_testbed(tmp_path, "Frankfurt") as tb:
        yield tb


def move(env: dict[str, str], to: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "testbed",
            "move",
            "--to-server",
            to,
            "--name",
            "watch-test",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.slow
def test_watch_sees_no_move_then_a_same_country_move_then_a_crossing(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path, hook_policy: HookPolicy
) -> None:
    cat, env = testbed
    ev = tmp_path / "events.jsonl"
    prom = tmp_path / "geoprobe.prom"
    got, policy = hook_policy.got, hook_policy.policy
    watch = geoprobe(
        "watch",
        "--landmarks",
        str(cat),
        "--policy",
        str(policy),
        "--events",
        str(ev),
        "--state",
        str(tmp_path / "state"),
        "--interval",
        "1",
        "--warmup",
        "4",
        "--signals",
        "none",
        "--metrics",
        str(prom),
        env=env,
    )
    try:
        wait_for(
            lambda: prom.exists() and "geoprobe_watch_rounds_total 8.0" in prom.read_text(),
            120,
            "8 rounds of the watch",
        )
        assert {e["type"] for e in read_events(ev)} == {events.FIX}, "no move, no migration event"

        move(env, "Munich")  # ~300 km, same country
        wait_for(
            lambda: any(e["type"] == events.CONFIRMED for e in read_events(ev)),
            60,
            "the Munich move",
        )
        same = [e["data"] for e in read_events(ev) if e["type"] == events.CONFIRMED]
        assert [d["crossing"] for d in same] == [False] and same[0]["from"] == "DE"

        wait_for(
            lambda: 'geoprobe_watch_state{state="settled"} 1.0' in prom.read_text(),
            60,
            "settling in Munich",
        )
        moved_at = time.monotonic()
        move(env, "Madrid")  # ~1,500 km, Spain
        wait_for(
            lambda: sum(e["type"] == events.CONFIRMED for e in read_events(ev)) == 2,
            60,
            "the Madrid move",
        )
        took = time.monotonic() - moved_at
        crossing = [e["data"] for e in read_events(ev) if e["type"] == events.CONFIRMED][-1]
        assert crossing["crossing"] is True
        assert crossing["from"] == "DE" and crossing["to"] in ("ES", None)
        assert crossing["distance_km"] > 500
        print(f"crossing confirmed {took:.1f} s after the move")
        # The policy's hook got the confirmed crossing (and nothing for the move within Germany).
        crossing_id = [e["id"] for e in read_events(ev) if e["type"] == events.CONFIRMED][-1]
        wait_for(lambda: got.exists() and crossing_id in got.read_text(), 30, "the policy hook")
        hooked = [json.loads(x) for x in got.read_text().splitlines() if x.strip()]
        assert [h["id"] for h in hooked] == [crossing_id]
    finally:
        code, err = stop(watch)
    assert code == 0, err
    assert "Traceback" not in err
    types = [e["type"] for e in read_events(ev)]
    assert types.count(events.SUSPECTED) == 2 and types.count(events.CONFIRMED) == 2


def test_watch_bad_input_is_one_line_and_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> tuple[int, str]:
        env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), state_dir=tmp_path)
        code = main(["watch", *args], env=env)
        # our errors go to the injected stream, click's usage errors to the process's stderr
        return code, env.stderr.getvalue() + capsys.readouterr().err  # type: ignore[attr-defined]

    code, err = run("--landmarks", str(tmp_path / "nope.json"), "--allow", "DE")
    assert code == 3 and err.count("\n") == 1 and "nope.json" in err
    (tmp_path / "cat.json").write_text('{"format": "geoprobe-catalogue/1", "landmarks": []}')
    code, err = run("--landmarks", str(tmp_path / "cat.json"))
    assert code == 3 and "--allow" in err
    code, err = run(
        "--landmarks", str(tmp_path / "cat.json"), "--allow", "DE", "--signals", "telepathy"
    )
    assert code == 3 and "telepathy" in err


@pytest.mark.slow
def test_kill_9_leaves_a_whole_store_and_a_restart_sees_the_move_made_while_down(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import sqlite3

    from geoprobe.store import default_path
    from geoprobe.watch.state import WatchStore

    cat, env = testbed
    ev, prom, state = tmp_path / "events.jsonl", tmp_path / "geoprobe.prom", tmp_path / "state"
    args = [
        "watch",
        "--landmarks",
        str(cat),
        "--allow",
        "DE",
        "--events",
        str(ev),
        "--state",
        str(state),
    ]
    args += ["--interval", "0.5", "--warmup", "3", "--signals", "none", "--metrics", str(prom)]
    watch = geoprobe(*args, env=env)
    try:
        wait_for(
            lambda: prom.exists() and "geoprobe_watch_rounds_total 6.0" in prom.read_text(),
            120,
            "6 rounds",
        )
    finally:
        watch.kill()  # SIGKILL, mid-round or mid-write: no clean shutdown
        watch.communicate(timeout=20)
    db = default_path(state)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    orphans = conn.execute(
        "SELECT COUNT(*) FROM watch_fixes f LEFT JOIN watch_fingerprints p ON p.fix_id = f.id "
        "WHERE p.fix_id IS NULL"
    ).fetchone()[0]
    conn.close()
    assert orphans == 0
    with WatchStore(db) as st:
        last = st.last_fix("watch")
        assert last is not None and last.certified in ("DE", None) and len(last.rtts) > 20
        assert st.load_baseline("rtt") is not None
        stored = [e["id"] for e in st.events()]
    assert stored == [e["id"] for e in read_events(ev)], (
        "every event written was recorded, and only those"
    )

    move(env, "Madrid")  # while the watch is down
    restart = geoprobe(*args, "--rounds", "4", env=env)
    code = restart.wait(120)
    assert code == 0, restart.communicate()[1]
    conf = [e["data"] for e in read_events(ev) if e["type"] == events.CONFIRMED]
    assert len(conf) == 1 and conf[0]["crossing"] is True and conf[0]["from"] == "DE"


def test_ntp_servers_come_from_config_and_feed_a_clock_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from geoprobe.errors import InputError
    from geoprobe.watch.service import build_signals, config_ntp_servers
    from geoprobe.watch.signals.ntp import SntpServer

    monkeypatch.setenv("GEOPROBE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with SntpServer() as server:
        (tmp_path / "config.toml").write_text(f'[watch]\nntp = ["{server.address}"]\n')
        assert config_ntp_servers() == [server.address]
        sources = build_signals(
            ["clock"], logging.getLogger("test"), ntp_servers=config_ntp_servers()
        )
        assert sorted(s.name for s in sources) == ["clock_landmarks", "clock_ntp"]
        ntp = next(s for s in sources if s.name == "clock_ntp")
        assert ntp.poll([], 0.0) == [] and server.answered >= 1  # asked, and no step yet
        # Without the clock signal, NTP servers add nothing.
        assert build_signals(["steal"], logging.getLogger("test"), ntp_servers=[server.address])[
            0
        ].name
    (tmp_path / "config.toml").write_text("[watch]\nntp = 5\n")
    with pytest.raises(InputError, match="watch.ntp"):
        config_ntp_servers()


def test_metrics_into_a_missing_directory_is_bad_input(tmp_path: Path) -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), state_dir=tmp_path)
    missing = tmp_path / "nope" / "g.prom"
    code = main(
        [
            "watch",
            "--landmarks",
            str(tmp_path / "c.json"),
            "--allow",
            "DE",
            "--metrics",
            str(missing),
        ],
        env=env,
    )
    err = env.stderr.getvalue()
    assert code == 3 and err.count("\n") == 1 and "nope" in err and "--metrics" in err


def watch_args(cat: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "watch",
        "--landmarks",
        str(cat),
        "--events",
        str(tmp_path / "events.jsonl"),
        "--state",
        str(tmp_path / "state"),
        "--interval",
        "1",
        "--warmup",
        "3",
        "--signals",
        "none",
        *extra,
    ]


@pytest.mark.slow
def test_a_watch_started_outside_the_allowed_set_raises_a_crossing_the_policy_acts_on(
    tmp_path: Path, hook_policy: HookPolicy
) -> None:
    """Started in Madrid with DE allowed: never quiet, never a home there."""
    with running_testbed(tmp_path, "Madrid") as (cat, env):
        ev = tmp_path / "events.jsonl"
        watch = geoprobe(*watch_args(cat, tmp_path, "--policy", str(hook_policy.policy)), env=env)
        try:
            wait_for(lambda: bool(hook_policy.events()), 90, "the policy's hook")
        finally:
            code, err = stop(watch)
    assert code == 0 and "Traceback" not in err, err
    (hooked,) = [json.loads(x) for x in hook_policy.events()]
    assert hooked["type"] == events.CONFIRMED
    d = hooked["data"]
    assert d["crossing"] is True and d["from"] is None and d["to"] == "ES" and d["proof"] is True
    assert [e["id"] for e in read_events(ev) if e["type"] == events.CONFIRMED] == [hooked["id"]]
    from geoprobe.store import default_path
    from geoprobe.watch.state import WatchStore

    with WatchStore(default_path(tmp_path / "state")) as st:
        states = [t[1] for t in st.transitions()]
    assert states[-1] == "outside" and "normal" not in states and "settled" not in states


@pytest.mark.slow
def test_a_move_right_after_start_is_a_move(tmp_path: Path, hook_policy: HookPolicy) -> None:
    """The tour's order pasted at once: the VM moves 0.2 s after the watch starts."""
    with running_testbed(tmp_path, "Frankfurt") as (cat, env):
        ev = tmp_path / "events.jsonl"
        watch = geoprobe(*watch_args(cat, tmp_path, "--policy", str(hook_policy.policy)), env=env)
        try:
            time.sleep(0.2)
            move(env, "Madrid")
            wait_for(lambda: bool(hook_policy.events()), 90, "the policy's hook")
        finally:
            code, err = stop(watch)
    assert code == 0 and "Traceback" not in err, err
    (c,) = [e["data"] for e in read_events(ev) if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["to"] == "ES" and c["from"] in (None, "DE")
    from geoprobe.store import default_path
    from geoprobe.watch.state import WatchStore

    with WatchStore(default_path(tmp_path / "state")) as st:
        assert st.transitions()[-1][1] == "outside"  # no home was taken in Madrid


def test_max_landmarks_caps_what_a_round_probes(
    testbed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    cat, env = testbed
    args = ["watch", "--landmarks", str(cat), "--allow", "DE", "--state", str(tmp_path / "st")]
    args += ["--interval", "0.2", "--warmup", "2", "--warmup-interval", "0", "--signals", "none"]
    args += ["--sentinels", "0", "--max-landmarks", "20", "--rounds", "4", "-v"]
    watch = geoprobe(*args, env=env)
    code = watch.wait(120)
    _out, err = watch.communicate()
    assert code == 0, err
    total = len(json.loads(cat.read_text())["landmarks"])
    assert f"probing 20 of {total} landmarks" in err
    rounds = [line for line in err.splitlines() if ": round " in line]
    assert f"of {total} landmarks answered" in rounds[0]  # the first round places the VM
    assert all("of 20 landmarks answered" in line for line in rounds[1:]) and len(rounds) == 4
