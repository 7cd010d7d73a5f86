"""respond(): order, timeouts, failures, once-per-event across restarts and crashes, dry-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from geoprobe.defend import respond, verdict_of
from geoprobe.errors import InputError
from geoprobe.events import CONFIRMED, FIX, SUSPECTED, make_event
from geoprobe.policy import Policy, load_policy

from .conftest import crossing_event
from .receiver import receiver


def counting_hook(tmp_path: Path, name: str, extra: str = "") -> Path:
    """A hook that appends its event id to tmp_path/<name>.log, then runs `extra`."""
    h = tmp_path / f"{name}.sh"
    h.write_text(
        f'#!/bin/sh\nread -r line\necho "$GEOPROBE_EVENT_ID" >> {tmp_path}/{name}.log\n{extra}\n'
    )
    h.chmod(0o755)
    return h


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def policy(tmp_path: Path, body: str) -> Policy:
    p = tmp_path / "policy.toml"
    p.write_text('[jurisdiction]\nallow = ["DE"]\n' + body)
    return load_policy(p)


def audit_rows(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM defend_audit ORDER BY id")]


def test_verdict_mapping(tmp_path: Path) -> None:
    pol = policy(tmp_path, "[confidence]\nmin_probability = 0.9\nmin_landmarks = 4\n")
    assert verdict_of(make_event(SUSPECTED, {}), pol) == "suspected"
    assert verdict_of(crossing_event(), pol) == "confirmed_crossing"
    assert verdict_of(make_event(CONFIRMED, {"crossing": False}), pol) is None
    assert verdict_of(make_event(CONFIRMED, {"crossing": None}), pol) == "unknown"
    # Not a proof: how sure the crossing is, 1 - p_allowed, must reach min_probability.
    assert verdict_of(crossing_event(p_allowed=0.5), pol) == "unknown"
    assert verdict_of(crossing_event(p_allowed=0.05, landmarks=["a", "b"]), pol) == "unknown"
    assert verdict_of(crossing_event(p_allowed=0.05, landmarks=6), pol) == "confirmed_crossing"
    # A proof is sure whatever the calibrated probability says.
    proof = {"verdict": "outside", "rule": "sound", "p_allowed": 0.5}
    assert verdict_of(crossing_event(jurisdiction=proof), pol) == "confirmed_crossing"
    assert verdict_of(make_event(FIX, {"verdict": "unknown"}), pol) == "unknown"
    assert verdict_of(make_event(FIX, {}), pol) is None


def test_actions_run_in_order_failures_and_timeouts_do_not_stop_the_rest(tmp_path: Path) -> None:
    order = tmp_path / "order"
    first = counting_hook(tmp_path, "first", f"echo first >> {order}")
    slow = counting_hook(tmp_path, "slow", "sleep 30")
    last = counting_hook(tmp_path, "last", f"echo last >> {order}")
    pol = policy(
        tmp_path,
        f"""
[[on.confirmed_crossing]]
action = "hook"
command = ["{first}"]
[[on.confirmed_crossing]]
action = "hook"
command = ["{tmp_path}/missing-hook"]
[[on.confirmed_crossing]]
action = "hook"
command = ["{slow}"]
timeout = 0.5
[[on.confirmed_crossing]]
action = "hook"
command = ["{last}"]
""",
    )
    store = tmp_path / "state" / "geoprobe.sqlite"
    results = respond(crossing_event(), pol, store_path=store)
    assert [r.status for r in results] == ["ok", "failed", "timeout", "ok"]
    assert lines(order) == ["first", "last"]
    rows = audit_rows(store)
    assert [(r["action_index"], r["status"]) for r in rows] == [
        (0, "started"),
        (0, "ok"),
        (1, "started"),
        (1, "failed"),
        (2, "started"),
        (2, "timeout"),
        (3, "started"),
        (3, "ok"),
    ]


def test_same_event_fires_once_new_event_fires_again(tmp_path: Path) -> None:
    h = counting_hook(tmp_path, "h")
    pol = policy(tmp_path, f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n')
    store = tmp_path / "geoprobe.sqlite"
    ev = crossing_event()
    assert [r.status for r in respond(ev, pol, store_path=store)] == ["ok"]
    again = respond(json.loads(json.dumps(ev)), pol, store_path=store)
    assert [r.status for r in again] == ["skipped"] and "done:ok" in again[0].detail
    assert lines(tmp_path / "h.log") == [ev["id"]]
    other = crossing_event()
    respond(other, pol, store_path=store)
    assert lines(tmp_path / "h.log") == [ev["id"], other["id"]]
    statuses = [r["status"] for r in audit_rows(store)]
    assert statuses == ["started", "ok", "skipped", "started", "ok"]


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(b"k" * 100)
    h = counting_hook(tmp_path, "h")
    store = tmp_path / "state" / "geoprobe.sqlite"
    with receiver() as rx:
        pol = policy(
            tmp_path,
            f"""
[[on.confirmed_crossing]]
action = "wipe"
paths = ["{key}"]
[[on.confirmed_crossing]]
action = "hook"
command = ["{h}"]
[[on.confirmed_crossing]]
action = "webhook"
url = "{rx.url}"
[[on.confirmed_crossing]]
action = "poweroff"
""",
        )
        logged: list[str] = []
        results = respond(crossing_event(), pol, store_path=store, dry_run=True, log=logged.append)
        assert rx.requests == []
    assert [r.status for r in results] == ["dry-run"] * 4
    assert "100 bytes" in results[0].detail and rx.url in results[2].detail
    assert "systemctl poweroff" in results[3].detail
    assert key.read_bytes() == b"k" * 100 and not (tmp_path / "h.log").exists()
    assert not store.parent.exists()
    assert len(logged) == 4


def test_dry_run_after_firing_shows_skips_and_writes_nothing(tmp_path: Path) -> None:
    h = counting_hook(tmp_path, "h")
    pol = policy(tmp_path, f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n')
    store = tmp_path / "geoprobe.sqlite"
    ev = crossing_event()
    respond(ev, pol, store_path=store)
    before = len(audit_rows(store))
    (r,) = respond(ev, pol, store_path=store, dry_run=True)
    assert r.status == "skipped"
    assert len(audit_rows(store)) == before


def test_thresholds_route_weak_crossing_to_unknown(tmp_path: Path) -> None:
    strong = counting_hook(tmp_path, "strong")
    weak = counting_hook(tmp_path, "weak")
    pol = policy(
        tmp_path,
        f"""
[confidence]
min_probability = 0.9
[[on.confirmed_crossing]]
action = "hook"
command = ["{strong}"]
[[on.unknown]]
action = "hook"
command = ["{weak}"]
""",
    )
    store = tmp_path / "geoprobe.sqlite"
    respond(crossing_event(p_allowed=0.4), pol, store_path=store)
    assert lines(tmp_path / "weak.log") and not lines(tmp_path / "strong.log")


def test_event_without_id_is_rejected(tmp_path: Path) -> None:
    pol = policy(tmp_path, "")
    with pytest.raises(InputError, match="needs 'id'"):
        respond({"type": CONFIRMED, "data": {"crossing": True}}, pol, store_path=tmp_path / "s")


# --- real second processes ---------------------------------------------------------------------

DRIVER = """
import json, sys
from geoprobe.defend import respond
from geoprobe.policy import load_policy
pol = load_policy(sys.argv[1]); ev = json.load(open(sys.argv[2]))
res = respond(ev, pol, store_path=sys.argv[3])
print(json.dumps([r.status for r in res]))
"""


def driver(tmp_path: Path, ev: dict[str, Any]) -> list[str]:
    evf = tmp_path / "event.json"
    evf.write_text(json.dumps(ev))
    return [
        sys.executable,
        "-c",
        DRIVER,
        str(tmp_path / "policy.toml"),
        str(evf),
        str(tmp_path / "geoprobe.sqlite"),
    ]


def test_restart_in_a_new_process_fires_nothing_again(tmp_path: Path) -> None:
    h = counting_hook(tmp_path, "h")
    policy(tmp_path, f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n')
    argv = driver(tmp_path, crossing_event())
    first = subprocess.run(argv, capture_output=True, text=True, check=True)
    second = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert json.loads(first.stdout) == ["ok"] and json.loads(second.stdout) == ["skipped"]
    assert len(lines(tmp_path / "h.log")) == 1


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)


def test_kill_9_mid_hook_reports_it_interrupted_and_runs_the_rest(tmp_path: Path) -> None:
    started = tmp_path / "started"
    a = counting_hook(tmp_path, "a")
    b = counting_hook(
        tmp_path, "b", f"[ -e {tmp_path}/b.done ] || {{ touch {started}; sleep 60; }}"
    )
    c = counting_hook(tmp_path, "c")
    policy(
        tmp_path,
        "".join(
            f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{x}"]\n' for x in (a, b, c)
        ),
    )
    argv = driver(tmp_path, crossing_event())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(started)
        os.killpg(proc.pid, signal.SIGKILL)  # the daemon and its hook die mid-action
    finally:
        proc.wait()
    assert (len(lines(tmp_path / "a.log")), len(lines(tmp_path / "c.log"))) == (1, 0)
    (tmp_path / "b.done").touch()
    second = subprocess.run(argv, capture_output=True, text=True, check=True)
    # A hook may have done its work before the kill: it is reported, never run a second time.
    assert json.loads(second.stdout) == ["skipped", "interrupted", "ok"]
    assert [len(lines(tmp_path / f"{n}.log")) for n in "abc"] == [1, 1, 1]
    third = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert json.loads(third.stdout) == ["skipped", "skipped", "skipped"]
    rows = [
        (r["action_index"], r["status"])
        for r in audit_rows(tmp_path / "geoprobe.sqlite")
        if r["status"] != "skipped"
    ]
    assert rows[:5] == [
        (0, "started"),
        (0, "ok"),
        (1, "started"),
        (1, "interrupted"),
        (2, "started"),
    ]
    assert rows[5] == (2, "ok")


def fake_systemctl(tmp_path: Path) -> dict[str, str]:
    """PATH with a `systemctl` that logs each call and, until `<tmp>/go` exists, waits."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "systemctl"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/systemctl.log\n'
        f"touch {tmp_path}/systemctl.started\n"
        f"i=0; while [ ! -e {tmp_path}/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        f'echo "$*" >> {tmp_path}/systemctl.done\n'
    )
    tool.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


def test_kill_9_mid_idempotent_action_runs_it_again(tmp_path: Path) -> None:
    env = fake_systemctl(tmp_path)
    a = counting_hook(tmp_path, "a")
    policy(
        tmp_path,
        f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{a}"]\n'
        '[[on.confirmed_crossing]]\naction = "stop_units"\nunits = ["vault.service"]\n',
    )
    argv = driver(tmp_path, crossing_event())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, env=env)
    try:
        _wait_for(tmp_path / "systemctl.started")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (tmp_path / "systemctl.done").exists()
    (tmp_path / "go").touch()
    second = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    assert json.loads(second.stdout) == ["skipped", "ok"]
    # Two calls: the interrupted attempt's (its child outlives the kill) and the re-run's.
    assert lines(tmp_path / "systemctl.log") == ["stop -- vault.service"] * 2
    assert len(lines(tmp_path / "a.log")) == 1
    rows = [
        (r["action_index"], r["status"])
        for r in audit_rows(tmp_path / "geoprobe.sqlite")
        if r["status"] != "skipped"
    ]
    assert rows == [
        (0, "started"),
        (0, "ok"),
        (1, "started"),
        (1, "interrupted"),
        (1, "started"),
        (1, "ok"),
    ]


def test_two_processes_racing_on_one_event_fire_each_action_once(tmp_path: Path) -> None:
    hooks = [counting_hook(tmp_path, n, "sleep 0.3") for n in ("x", "y")]
    policy(
        tmp_path,
        "".join(f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n' for h in hooks),
    )
    argv = driver(tmp_path, crossing_event())
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [len(lines(tmp_path / f"{n}.log")) for n in "xy"] == [1, 1]
    for i in range(2):
        assert sorted(o[i] for o in outs) == ["ok", "skipped"]


def test_unusable_store_still_runs_actions_and_says_so(tmp_path: Path) -> None:
    h = counting_hook(tmp_path, "h")
    pol = policy(tmp_path, f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{h}"]\n')
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    (r,) = respond(crossing_event(), pol, store_path=blocker / "geoprobe.sqlite")
    assert r.status == "ok" and "may fire again" in r.warnings[-1]
    assert len(lines(tmp_path / "h.log")) == 1
