"""The memory dirtier: caps (memory, CPU, rate, duration), stop conditions, background action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from geoprobe.defend import clear, respond
from geoprobe.defend.delay import Dirtier, proc_status
from geoprobe.errors import InputError
from geoprobe.events import SUSPECTED, make_event
from geoprobe.policy import load_policy

IN_CHILD = """
import json, sys
from geoprobe.defend.delay import Dirtier
cap, kw = int(sys.argv[1]), json.loads(sys.argv[2])
d = Dirtier(cap)
d.view[:] = 0  # so that the check below sees what run() wrote
s = d.run(**kw)
written = int((d.view != 0).sum())
print(json.dumps({**s.to_json(), "written": written, "n": len(d.view)}))
"""


def run_in_child(cap: int, **kw: object) -> dict[str, Any]:
    """A fresh process, so VmHWM is this run's peak and not pytest's."""
    out = subprocess.run(
        [sys.executable, "-c", IN_CHILD, str(cap), json.dumps(kw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def test_peak_rss_stays_under_cap_and_every_page_is_written() -> None:
    cap = 96 << 20
    s = run_in_child(cap, cpu=1.0, duration=1.0)
    assert s["peak_rss_bytes"] <= cap
    assert s["buffer_bytes"] > 16 << 20
    assert s["passes"] >= 1 and s["written"] == s["n"]
    assert s["pages"] >= s["n"]


def test_rate_cap_is_an_upper_bound() -> None:
    s = run_in_child(64 << 20, cpu=1.0, duration=1.0, rate=5000)
    # token bucket: never more than rate x elapsed, plus the one chunk written before sleeping
    assert s["pages"] <= 5000 * s["elapsed_s"] + 100
    assert s["pages"] > 0


def test_cpu_cap_bounds_the_writers_cpu_time() -> None:
    s = run_in_child(64 << 20, cpu=0.2, duration=1.5)
    assert s["cpu_s"] <= 0.2 * s["elapsed_s"] + 0.05


def test_cap_below_current_rss_is_refused() -> None:
    rss = proc_status()["VmRSS"]
    with pytest.raises(InputError, match="leaves no room"):
        Dirtier(rss)


STOP_IN_CHILD = """
import json, sys, threading
from pathlib import Path
from geoprobe.defend.delay import PAGE, Dirtier, flag_stop
flag = Path(sys.argv[1])
d = Dirtier(64 << 20)
threading.Timer(0.3, flag.touch).start()
s = d.run(cpu=0.5, duration=60, should_stop=flag_stop(flag))
print(json.dumps({**s.to_json(), "aligned": s.buffer_bytes % PAGE == 0}))
"""


def test_stop_flag_file_ends_the_run(tmp_path: Path) -> None:
    # In a child: pytest's own peak RSS may already exceed any small cap, which Dirtier refuses.
    flag = tmp_path / "clear"
    out = subprocess.run(
        [sys.executable, "-c", STOP_IN_CHILD, str(flag)], capture_output=True, text=True, check=True
    ).stdout
    s = json.loads(out)
    assert s["reason"] == "cleared" and s["elapsed_s"] < 60
    assert s["aligned"]


def _wait_pid_gone(pid: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_delay_as_policy_action_runs_in_background_until_cleared(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(
        '[jurisdiction]\nallow = ["DE"]\n'
        '[[on.suspected]]\naction = "delay"\nmemory = "80M"\ncpu = 0.2\nduration = 120\n'
    )
    pol = load_policy(p)
    store = tmp_path / "state" / "geoprobe.sqlite"
    ev = make_event(SUSPECTED, {"signals": ["first_write"]})
    (r,) = respond(ev, pol, store_path=store)
    assert r.status == "ok", r.detail
    pid = int(r.data["pid"])
    try:
        time.sleep(0.5)
        status = proc_status(f"/proc/{pid}/status")
        assert 0 < status["VmHWM"] <= 80 << 20
        assert respond(ev, pol, store_path=store)[0].status == "skipped"
    finally:
        stopped = clear(store)
    assert stopped == 1
    assert _wait_pid_gone(pid)
    log = Path(r.data["log"]).read_text().splitlines()
    summary = json.loads(log[-1])["summary"]
    assert summary["reason"] in ("stopped", "cleared")
    assert summary["peak_rss_bytes"] <= 80 << 20


def test_clear_flag_stops_a_delay_started_by_another_process(tmp_path: Path) -> None:
    """After a daemon restart the new process has no handle on the child: the flag file stops it."""
    store = tmp_path / "geoprobe.sqlite"
    code = "import sys, json; from geoprobe.defend.delay import child_main; sys.exit(child_main())"
    cfg = {
        "memory": 64 << 20,
        "cpu": 0.2,
        "duration": 120,
        "rate": None,
        "until_clear": str(tmp_path / "delay.clear"),
        "parent_pid": None,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["started"]
    clear(store)  # touches delay.clear beside the store; the child is not ours
    out, _ = proc.communicate(timeout=30)
    assert json.loads(out.splitlines()[-1])["summary"]["reason"] == "cleared"
