"""The units scenario's pieces that run without QEMU: the console parser, the guest's files."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from benchmarks.lab.build import INITRAMFS_INIT, LAB_SYSTEMD_INIT, PACKAGES
from benchmarks.lab.units import (
    CHECKS,
    KERNEL_ARGS,
    parse_console,
    policy_toml,
    report_lines,
    units_program,
)
from geoprobe.policy import parse_policy

REPO = Path(__file__).resolve().parents[2]


def _sh_syntax_ok(script: str) -> bool:
    return subprocess.run(["sh", "-n"], input=script.encode(), check=False).returncode == 0


def _all_pass() -> list[str]:
    return [f"LAB-UNITS PASS {c} fine" for c in CHECKS] + ["LAB-UNITS DONE rc=0"]


def test_every_check_passed_and_the_script_finished_is_ok() -> None:
    res = parse_console(_all_pass())
    assert res.ok()
    assert report_lines(res)[0] == "PASS systemd-pid1: fine"


def test_a_line_prefixed_by_kernel_output_still_counts() -> None:
    lines = _all_pass()
    lines[0] = "[   12.3] random: crng init done LAB-UNITS PASS systemd-pid1 system running"
    res = parse_console(lines)
    assert res.checks["systemd-pid1"] == (True, "system running")


def test_a_failed_check_fails_the_run_and_says_which() -> None:
    lines = _all_pass()
    lines[6] = "LAB-UNITS FAIL watch-round no round: timeout 300.0"
    res = parse_console(lines)
    assert not res.ok()
    assert res.failed() == ["watch-round"]
    assert "FAIL watch-round: no round: timeout 300.0" in report_lines(res)


def test_a_check_not_reached_or_no_done_line_fails() -> None:
    res = parse_console(_all_pass()[:3])
    assert not res.ok()
    assert res.done is None
    lines = report_lines(res)
    assert f"FAIL {CHECKS[3]}: not reached" in lines
    assert lines[-1] == "FAIL done: the guest script did not finish"
    assert not parse_console([*_all_pass()[:-1], "LAB-UNITS DONE rc=1"]).ok()


def test_figures_and_logs_are_kept() -> None:
    res = parse_console(
        [
            "LAB-UNITS FIGURE watch_first_round_s 41.5",
            "LAB-UNITS FIGURE broken x",
            "LAB-UNITS-LOG ● geoprobe-watch.service - geoprobe: watch this VM",
        ]
    )
    assert res.figures == {"watch_first_round_s": 41.5}
    assert res.log == ["● geoprobe-watch.service - geoprobe: watch this VM"]
    assert not res.checks


def test_the_guest_policy_is_the_demo_policy_for_site_a() -> None:
    pol = parse_policy(tomllib.loads(policy_toml("ES")))
    assert pol.allow == {"ES"}
    for stage in ("suspected", "confirmed_crossing", "unknown"):
        assert all(a.action == "hook" for a in pol.actions_for(stage))


def test_the_guest_gets_the_shipped_units_verbatim() -> None:
    prog = units_program("DE")
    for name in ("geoprobe-watch.service", "geoprobe-check.service", "geoprobe-check.timer"):
        shipped = (REPO / "contrib" / "systemd" / name).read_text()
        assert prog.files[f"contrib/systemd/{name}"] == shipped
    assert "LAB-UNITS DONE" in prog.run_sh
    assert _sh_syntax_ok(prog.run_sh)


def test_systemd_boots_only_when_asked() -> None:
    assert "systemd" in PACKAGES
    assert "init=/sbin/lab-init\n" in INITRAMFS_INIT  # every other scenario's PID 1
    assert "init=/sbin/lab-systemd-init" in KERNEL_ARGS
    assert LAB_SYSTEMD_INIT.rstrip().endswith("exec /lib/systemd/systemd")
    assert _sh_syntax_ok(LAB_SYSTEMD_INIT)
