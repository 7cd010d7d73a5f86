"""The README's tour is safe to paste: a harmless policy, commands that wait for what they need."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from geoprobe import events
from geoprobe.migration import Migration
from geoprobe.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "contrib" / "policy.demo.toml"
HARMLESS = {"hook", "syslog"}


def tour() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return block


def commands(block: str) -> list[list[str]]:
    """Each command of the block as argv (continuations joined, comments and `&` dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[-1] == "&":
            words = words[:-1]
        if words:
            out.append(words)
    return out


def test_every_policy_the_tour_runs_is_the_harmless_one_or_a_dry_run() -> None:
    runs = [c for c in commands(tour()) if c[:2] in (["geoprobe", "watch"], ["geoprobe", "check"])]
    assert any("--policy" in c for c in runs), "the tour shows the policy at work"
    for c in runs:
        if "--policy" in c:
            policy = c[c.index("--policy") + 1]
            assert policy == "contrib/policy.demo.toml" or "--dry-run" in c, c


def test_the_tour_waits_for_the_catalogue_and_the_warm_up() -> None:
    lines = [ln.split("#", 1)[0] for ln in tour().splitlines()]
    text = "\n".join(lines)
    testbed = text.index("geoprobe testbed run")
    wait_cat = text.index('until [ -s "$tour/world.json" ]')
    first_use = text.index("--landmarks")
    assert testbed < wait_cat < first_use
    watch = text.index("geoprobe watch")
    warm = text.index("geoprobe_watch_warming_up 0")
    move = text.index("geoprobe testbed move")
    assert watch < warm < move


def test_the_demo_policy_only_prints(tmp_path: Path) -> None:
    from geoprobe import defend

    policy = load_policy(DEMO)
    for verdict in ("suspected", "confirmed_crossing", "unknown"):
        specs = policy.actions_for(verdict)
        assert specs, verdict
        for spec in specs:
            assert spec.action in HARMLESS, spec
            if spec.action == "hook":
                command = list(spec.options["command"])
                assert command[:2] == ["sh", "-c"] and command[2].startswith("echo "), command
    # Run for real: the crossing's hook prints its line, and nothing else happens.
    migration = Migration(
        crossing=True,
        frm=None,
        to="ES",
        jurisdiction={"verdict": "outside", "rule": "certified", "p_allowed": 0.0},
        landmarks=40,
        source="watch",
        signals=("jurisdiction",),
    )
    assert policy.allow == {"DE"}
    ev = migration.to_event()
    (r,) = defend.respond(ev, policy, store_path=tmp_path / "geoprobe.sqlite")
    assert r.status == "ok", r
    assert r.data["runs"][0]["stdout"].strip() == "geoprobe demo: crossing never inside -> ES"
    assert (
        sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("geoprobe.sqlite")) == []
    )


@pytest.mark.slow
def test_the_watch_part_of_the_tour_runs_as_pasted(tmp_path: Path) -> None:
    """From the testbed to `kill`: the pasted commands confirm the crossing, and the audit shows
    the demo policy's hook ran."""
    block = tour()
    start, end = block.index("tour=$(mktemp -d)"), block.index("kill %2 %1")
    keep = [
        ln
        for ln in block[start:end].splitlines(keepends=True)
        if not ln.startswith(("geoprobe locate", "geoprobe verify", "geoprobe check"))
    ]
    script = "set -e\n" + "".join(keep) + 'kill %2 %1\nwait\necho "TOUR=$tour"\n'
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        GEOPROBE_RUNTIME_DIR=str(tmp_path / "run"),
        GEOPROBE_CACHE_DIR=str(tmp_path / "cache"),
        TMPDIR=str(tmp_path),
    )
    p = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert "confirmed_crossing [0] hook: ok" in p.stdout, (p.stdout, p.stderr)  # policy audit
    tour_dir = Path(p.stdout.split("TOUR=")[1].strip())
    assert tour_dir.parent == tmp_path
    evs = [ln for ln in (tour_dir / "events.jsonl").read_text().splitlines() if ln.strip()]
    assert sum(events.CONFIRMED in ln for ln in evs) == 1
