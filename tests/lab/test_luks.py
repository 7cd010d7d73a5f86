"""The LUKS scenario's pieces that run without QEMU: configs, policies, the timeline and targets."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks.lab.build import PACKAGES, build_run_disk, missing_packages
from benchmarks.lab.luks import (
    KeyServer,
    analyse,
    policy_toml,
    resume_toml,
    targets,
)
from benchmarks.lab.scenarios import RunPlan, RunRecord
from benchmarks.lab.sites import Place
from geoprobe.keyrelease import config
from geoprobe.policy import parse_policy

REPO = Path(__file__).resolve().parents[2]
FRA = Place("Frankfurt", "DE", 50.11, 8.68)
MAD = Place("Madrid", "ES", 40.42, -3.70)


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def test_guest_policy_suspends_on_suspicion_and_resumes_through_the_key_server() -> None:
    pol = parse_policy(_toml(policy_toml(["DE"])))
    (suspend,) = pol.actions_for("suspected")
    assert suspend.action == "luks_suspend" and suspend.options["luks"] == ["vault"]
    assert [a.action for a in pol.actions_for("confirmed_crossing")] == ["hook"]
    (back,) = pol.actions_for("cleared")
    assert back.action == "luks_resume" and back.options["luks"] == ["vault"]
    assert back.options["config"] == "/lab/unlock.toml"
    fire = parse_policy(_toml(resume_toml(["DE"])))
    (resume,) = fire.actions_for("unknown")
    assert resume.action == "luks_resume"
    assert resume.options["secret"] == "vault" and resume.options["config"] == "/lab/unlock.toml"


def test_key_server_config_carries_the_bound_and_the_guest_config_points_at_it(
    tmp_path: Path,
) -> None:
    ks = KeyServer(tmp_path, REPO, bound_km=500)
    ks.prepare()
    srv = config.load_server(tmp_path / "keyserver" / "keyserver.toml")
    (client,) = srv.clients.values()
    assert client.bound_ns == 5_000_000 and client.bound_written == "5 ms (500 km)"
    files = ks.guest_files()
    path = tmp_path / "unlock.toml"
    path.write_text(str(files["unlock.toml"]))
    cli = config.load_client(path)
    assert cli.client_id == client.id
    (ref,) = cli.servers.values()
    assert (ref.host, ref.port) == ("10.0.2.2", srv.port)
    assert cli.sign_key_path == Path("/lab/keys/client.key")
    assert files["keys/client.key"] == (tmp_path / "keyserver/client/client.key").read_bytes()


def _record(kind: str, console: list[tuple[float, dict[str, Any]]]) -> RunRecord:
    plan = RunPlan(kind, FRA, MAD)
    rec = RunRecord(plan=plan, program="luks", started=900.0, ended=1100.0)
    rec.src_events = [{"event": "STOP", "data": {}, "qemu_time": 1000.0, "received": 1000.01}]
    rec.final = {"status": "completed"}
    rec.console = [(t, "LAB-LUKS " + json.dumps(ev)) for t, ev in console]
    return rec


MOUNTED = {"step": "mounted", "read_back": True}


def test_timeline_is_read_from_the_switchover_and_the_server_log_by_site() -> None:
    rec = _record(
        "luks-same",
        [
            (950.0, {"step": "release", "rtts_ms": [4.1, 4.3], "errors": []}),
            (951.0, MOUNTED),
            (1001.5, {"step": "state", "suspended": True}),
            (1003.0, {"step": "resume_attempt", "kind": "fallback", "rc": 0}),
            (1004.25, {"step": "state", "suspended": False}),
            (1004.5, {"step": "readable", "ok": True}),
        ],
    )
    rec.console.insert(3, (1002.0, json.dumps({"type": "io.geoprobe.migration.suspected"})))
    log = [
        {"ts": 950.0, "event": "release", "peer": "10.214.1.2:5000", "rtt_ms": 4.1},
        {"ts": 1003.0, "event": "release", "peer": "10.214.2.2:5000", "rtt_ms": 4.6},
        {"ts": 1200.0, "event": "refuse", "peer": "10.214.2.2:5000", "rtt_ms": 24.0},  # later run
    ]
    row = analyse(rec, log)
    assert (row["suspended_s"], row["resumed_s"], row["readable_s"]) == (1.5, 4.25, 4.5)
    assert row["watch_events_s"] == [(2.0, "suspected", None)]
    assert row["server_log"] == {
        "10.214.1.2": {"released": [4.1], "refused": []},
        "10.214.2.2": {"released": [4.6], "refused": []},
    }
    assert targets([row]) == []
    assert targets([row | {"kind": "luks-cross"}]) == [
        "luks-cross: the volume came back after the cross-border move",
        "luks-cross: no refused resume attempt after the move",
    ]


def test_a_harmless_move_without_resume_misses_its_target() -> None:
    rec = _record("luks-same", [(951.0, MOUNTED), (1001.0, {"step": "state", "suspended": True})])
    assert targets([analyse(rec, [])]) == [
        "luks-same: the volume was not resumed and read after the harmless move"
    ]
    cross = _record(
        "luks-cross",
        [
            (951.0, MOUNTED),
            (1001.0, {"step": "state", "suspended": True}),
            (1005.0, {"step": "resume_attempt", "kind": "forced", "rc": 1}),
        ],
    )
    assert targets([analyse(cross, [])]) == []


def test_a_root_from_an_older_recipe_lacks_exactly_the_new_packages() -> None:
    old = " ".join(p for p in PACKAGES if p not in ("cryptsetup-bin", "clevis")) + "\n"
    assert missing_packages(old) == ["cryptsetup-bin", "clevis"]
    assert missing_packages(" ".join(PACKAGES)) == []


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs not installed")
def test_run_disk_gives_keys_mode_0600_and_bin_mode_0755(tmp_path: Path) -> None:
    img = build_run_disk(
        tmp_path / "run.ext4",
        REPO,
        {"keys/client.key": b"k", "bin/geoprobe": "#!/bin/sh\n", "unlock.toml": "x"},
        "#!/bin/sh\n",
    )

    def mode(name: str) -> str:
        out = subprocess.run(
            ["debugfs", "-R", f"stat /{name}", str(img)], capture_output=True, text=True, check=True
        ).stdout
        return out.split("Mode:", 1)[1].split()[0]

    assert (mode("keys/client.key"), mode("bin/geoprobe"), mode("unlock.toml")) == (
        "0600",
        "0755",
        "0644",
    )


def test_luks_is_a_mode_of_the_lab_cli_with_its_own_knobs() -> None:
    from benchmarks.lab.__main__ import parse_args

    args = parse_args(["--luks", "--luks-kinds", "cross", "--luks-bound-km", "500"])
    assert args.luks and not args.smoke and args.luks_kinds == "cross"
    assert (args.luks_near_ms, args.luks_far_ms, args.luks_bound_km) == (2.0, 20.0, 500.0)
    assert args.luks_clevis and args.luks_harmless is None
    with pytest.raises(SystemExit):
        parse_args(["--luks", "--smoke"])
