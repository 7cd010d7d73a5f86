"""`geoprobe policy check|fire|audit` end to end through the real CLI (click) and a subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.events import CONFIRMED, make_event

GOOD = """\
[jurisdiction]
allow = ["DE", "AT"]

[[on.confirmed_crossing]]
action = "wipe"
paths = ["{key}"]

[[on.confirmed_crossing]]
action = "hook"
command = ["{hook}"]
timeout = 5
"""


def run(argv: list[str], tmp_path: Path) -> tuple[int, str]:
    out = io.StringIO()
    env = Environment(stdout=out, stderr=io.StringIO(), state_dir=tmp_path / "state")
    return main(argv, env=env), out.getvalue()


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    key = tmp_path / "secret.key"
    key.write_bytes(b"s" * 64)
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat > {tmp_path}/hook.got\n")
    hook.chmod(0o755)
    pol = tmp_path / "policy.toml"
    pol.write_text(GOOD.format(key=key, hook=hook))
    ev = tmp_path / "event.json"
    ev.write_text(json.dumps(make_event(CONFIRMED, {"crossing": True, "from": "DE", "to": "FR"})))
    return {"key": key, "hook": hook, "policy": pol, "event": ev}


def test_check_prints_summary(setup: dict[str, Path], tmp_path: Path) -> None:
    code, out = run(["policy", "check", str(setup["policy"])], tmp_path)
    assert code == 0
    assert "valid" in out and "allow: AT, DE" in out
    assert "on confirmed_crossing: 2 action(s)" in out and "timeout=5s" in out


def test_check_json(setup: dict[str, Path], tmp_path: Path) -> None:
    code, out = run(["policy", "check", "--json", str(setup["policy"])], tmp_path)
    doc = json.loads(out)
    assert code == 0 and doc["allow"] == ["AT", "DE"]
    assert [a["action"] for a in doc["actions"]["confirmed_crossing"]] == ["wipe", "hook"]


def test_malformed_policy_one_line_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text(
        '[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["/k"]\n'
        '[[on.confirmed_crossing]]\naction = "hook"\ncommand = "/bin/true"\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "geoprobe", "policy", "check", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 3
    assert res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert (
        f"{bad}: entry on.confirmed_crossing[1]: field 'command': must be a list of strings" in line
    )
    assert "Traceback" not in res.stderr


def test_fire_dry_run_then_fire_then_again(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["policy", "fire", str(setup["policy"]), "--event", str(setup["event"])]
    code, out = run([*args, "--dry-run"], tmp_path)
    assert code == 0 and "[0] wipe: dry-run" in out and "[1] hook: dry-run" in out
    assert setup["key"].exists() and not (tmp_path / "state").exists()

    code, out = run([*args, "--json"], tmp_path)
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["ok", "ok"]
    assert not setup["key"].exists()
    assert json.loads((tmp_path / "hook.got").read_text())["type"] == CONFIRMED

    code, out = run([*args, "--json"], tmp_path)
    assert [r["status"] for r in json.loads(out)] == ["skipped", "skipped"]

    code, out = run(["policy", "audit", "--json"], tmp_path)
    trail = json.loads(out)
    assert [(r["action"], r["status"]) for r in trail] == [
        ("wipe", "started"),
        ("wipe", "ok"),
        ("hook", "started"),
        ("hook", "ok"),
        ("wipe", "skipped"),
        ("hook", "skipped"),
    ]


def test_fire_reports_failure_with_exit_1(tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text(f'[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{tmp_path}/nope"]\n')
    ev = tmp_path / "e.json"
    ev.write_text(json.dumps(make_event(CONFIRMED, {"crossing": True})))
    code, out = run(["policy", "fire", str(pol), "--event", str(ev)], tmp_path)
    assert code == 1 and "[0] hook: failed: cannot run" in out
