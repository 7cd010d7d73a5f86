"""Real users are often not root: locate, check and watch work as an ordinary user, with their
state under the user's own directories, and ICMP falls back or says why it cannot.

As root, a child process loads geoprobe (the interpreter may live under /root, which an ordinary
user cannot read), runs every command once to load its modules, then drops to uid/gid 65534 and
runs them again with HOME pointing at a fresh directory. As non-root the suite is already
unprivileged and the child simply runs the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534

CHILD = r"""
import io, json, os, sys
from geoprobe.cli import main
from geoprobe.cli.env import Environment

cat, home, scratch = sys.argv[1], sys.argv[2], sys.argv[3]

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, is_root=os.geteuid() == 0)
    return {"code": main(list(argv), env=env), "out": out.getvalue(), "err": err.getvalue()}

def commands(state):
    return {
        "locate": run("locate", "--landmarks", cat, "--format", "json", "--samples", "2"),
        "check": run("check", "--landmarks", cat, "--allow", "DE,AT", "--samples", "2"),
        "check_cron": run("check", "--landmarks", cat, "--allow", "EU", "--state", state, "--samples", "2"),
        "watch": run("watch", "--landmarks", cat, "--allow", "DE", "--rounds", "1", "--warmup", "1",
                     "--samples", "2", "--interval", "0.1", "--events", os.path.join(scratch, "ev.jsonl"))
        if state is None else None,
        "icmp": run("locate", "--landmarks", cat, "--method", "icmp", "--format", "json", "--samples", "1",
                    "--timeout", "0.5"),
    }

if os.geteuid() == 0:
    commands(os.path.join(scratch, "warm-state"))  # load every module while /root is readable
    os.environ["GEOPROBE_STATE_DIR"] = os.path.join(scratch, "warm-watch")
    run("watch", "--landmarks", cat, "--allow", "DE", "--rounds", "1", "--warmup", "1", "--samples", "2",
        "--interval", "0.1", "--events", os.path.join(scratch, "warm.jsonl"))
    del os.environ["GEOPROBE_STATE_DIR"]
    os.setgroups([])
    os.setgid(%(uid)d)
    os.setuid(%(uid)d)
results = commands(os.path.join(home, "cron-state"))
results["watch"] = run("watch", "--landmarks", cat, "--allow", "DE", "--rounds", "1", "--warmup", "1",
                       "--samples", "2", "--interval", "0.1", "--events", os.path.join(home, "ev.jsonl"))
results["euid"] = os.geteuid()
print(json.dumps(results))
""" % {"uid": NOBODY}  # noqa: UP031  (the child code is full of braces)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Path]]:
    """A 30-landmark built-in world at Frankfurt, in a directory any user may read."""
    base = Path(tempfile.mkdtemp(prefix="geoprobe-unpriv-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, NOBODY, NOBODY)
    cat = base / "world.json"
    env = dict(os.environ, GEOPROBE_RUNTIME_DIR=str(base / "run"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "testbed",
            "run",
            "--at-server",
            "Frankfurt",
            "--landmarks",
            "30",
            "--catalogue",
            str(cat),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 60
        while not cat.exists():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"testbed did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        cat.chmod(0o644)
        yield {"catalogue": cat, "home": home, "scratch": base}
    finally:
        proc.terminate()
        proc.wait(15)
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture(scope="module")
def results(world: dict[str, Path]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOPROBE_", "XDG_"))}
    env["HOME"] = str(world["home"])
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(world["catalogue"]),
            str(world["home"]),
            str(world["scratch"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=world["scratch"],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def test_runs_as_an_ordinary_user(results: dict[str, Any]) -> None:
    assert results["euid"] != 0


def test_locate_over_signed_udp(results: dict[str, Any]) -> None:
    r = results["locate"]
    assert r["code"] == 0, r["err"]
    rec = json.loads(r["out"])
    assert (
        rec["probe_method"] == "udp" and rec["countries"][0]["code"] == "DE" and not rec["failures"]
    )


def test_check_and_cron_state_in_the_users_dirs(
    results: dict[str, Any], world: dict[str, Path]
) -> None:
    assert results["check"]["code"] == 0 and results["check"]["out"].startswith("GEOPROBE OK")
    assert results["check_cron"]["code"] == 0, results["check_cron"]["err"]
    assert any((world["home"] / "cron-state").iterdir())


def test_watch_keeps_state_under_home(results: dict[str, Any], world: dict[str, Path]) -> None:
    r = results["watch"]
    assert r["code"] == 0, r["err"]
    stores = list(world["home"].glob(".local/state/geoprobe/*.sqlite"))
    assert stores, sorted(str(p) for p in world["home"].rglob("*"))
    assert (world["home"] / "ev.jsonl").read_text().strip()


def test_icmp_falls_back_or_says_why(results: dict[str, Any]) -> None:
    r = results["icmp"]
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    gid = NOBODY if os.geteuid() == 0 else os.getgid()
    if lo <= gid <= hi:  # the kernel lets this group open ICMP datagram sockets
        assert r["code"] == 0, r["err"]
        assert json.loads(r["out"])["probe_method"] == "icmp"
    else:
        assert r["code"] == 3 and r["err"].count("\n") == 1 and "ping_group_range" in r["err"], r
