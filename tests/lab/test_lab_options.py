"""The lab's options: presets, capabilities, parameters, kinds, busy workloads, the vmstat log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from benchmarks.lab.__main__ import expand_kinds, migration_settings, parse_args, plans, program_for
from benchmarks.lab.build import GuestImage
from benchmarks.lab.sites import Place
from benchmarks.lab.vm import MachineSpec
from benchmarks.lab.workloads import VMSTAT_LOG, guest_background, parse_vmstat

A = Place("Frankfurt", "DE", 50.1167, 8.6833)
B = Place("Madrid", "ES", 40.4, -3.6833)


def _args(*argv: str) -> object:
    args = parse_args(list(argv))
    args.a, args.b, args.same = A, B, A
    return args


def test_presets_then_explicit_options_make_the_settings_of_both_ends() -> None:
    qemu, caps, params = migration_settings(
        ["multifd-zstd", "vmgenid"], [("multifd", False)], [("max-bandwidth", 1 << 20)]
    )
    assert qemu == ["-device", "vmgenid,guid=auto"]
    assert caps == {"multifd": False}  # the explicit option overrides the preset
    assert params == {"multifd-compression": "zstd", "max-bandwidth": 1 << 20}
    args = parse_args(["--full", "--capability", "xbzrle=on", "--parameter", "multifd-channels=4"])
    assert args.capability == [("xbzrle", True)] and args.parameter == [("multifd-channels", 4)]
    for bad in (["--capability", "xbzrle"], ["--capability", "xbzrle=yes"], ["--parameter", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_kinds_expand_groups_and_reject_unknown_ones() -> None:
    assert expand_kinds("busy") == ["control-cpu", "control-mem", "control-disk", "control-host"]
    assert expand_kinds("cross,hold,cross") == [
        "cross",
        "delay-xbzrle",
        "delay-multifd",
        "delay-off",
    ]
    for bad in ("control-gpu", "crossing", "delay-xyz"):
        with pytest.raises(ValueError, match="unknown kind"):
            expand_kinds(bad)


def test_plans_carry_workloads_capabilities_and_hold_settings() -> None:
    args = _args(
        "--kinds", "cross,control-cpu,hold", "--runs", "2", "--busy-runs", "1",
        "--preset", "xbzrle",
    )  # fmt: skip
    todo = plans(args)  # type: ignore[arg-type]
    kinds = [p.kind for p, _ in todo]
    assert kinds == ["cross", "control-cpu", "cross", "delay-xbzrle", "delay-multifd", "delay-off"]
    by = {p.kind: p for p, _ in todo}
    assert by["cross"].capabilities == {"xbzrle": True} and by["cross"].migrate
    assert by["control-cpu"].workload == "cpu" and not by["control-cpu"].migrate
    hold = by["delay-multifd"]
    assert hold.capabilities == {"multifd": True} and not hold.auto_converge
    assert hold.parameters["multifd-compression"] == "zstd"
    assert by["delay-off"].capabilities == {} and [v for _, v in todo][-1] == "delay"


def test_extra_qemu_arguments_reach_both_ends_before_incoming(tmp_path: Path) -> None:
    img = GuestImage(tmp_path / "k", tmp_path / "i", tmp_path / "r")
    spec = MachineSpec(img, tmp_path / "run", extra=("-device", "vmgenid,guid=auto"))
    src = spec.argv(tmp_path / "q", tmp_path / "s", incoming=False)
    dst = spec.argv(tmp_path / "q", tmp_path / "s", incoming=True)
    assert src[-2:] == ["-device", "vmgenid,guid=auto"]
    assert dst[-4:] == ["-device", "vmgenid,guid=auto", "-incoming", "defer"]


def test_guest_background_starts_the_log_and_the_workload() -> None:
    assert guest_background("") == VMSTAT_LOG
    assert "dd if=/dev/vda" in guest_background("disk")
    assert guest_background("host") == VMSTAT_LOG  # the host is loaded, not the guest
    with pytest.raises(ValueError, match="unknown workload"):
        guest_background("gpu")


def test_the_vmstat_log_runs_in_a_shell_and_parses_back(tmp_path: Path) -> None:
    sh = "/bin/sh"
    if not Path(sh).exists():
        pytest.skip("no /bin/sh")
    # one pass of the loop body: the shell script the guest runs, against the host's /proc/vmstat
    body = VMSTAT_LOG.removeprefix("(while :; do ").split("; sleep 1; done)")[0]
    done = subprocess.run([sh, "-c", body], capture_output=True, text=True, timeout=10, check=True)
    out = done.stdout
    parsed = parse_vmstat(out.strip())
    assert parsed is not None and parsed["uptime_cs"] > 0
    assert {"pgfault", "nr_dirtied", "nr_written"} <= parsed.keys()


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.text(max_size=200))
def test_vmstat_parser_never_raises(text: str) -> None:
    out = parse_vmstat(text)
    assert out is None or (text.startswith("LAB-VMSTAT ") and "uptime_cs" in out)
    parse_vmstat("LAB-VMSTAT " + text)


def test_the_smoke_slows_the_link_unless_told_otherwise() -> None:
    assert parse_args([]).parameter == [("max-bandwidth", 32 << 20)]
    assert parse_args(["--parameter", "max-bandwidth=1000"]).parameter == [("max-bandwidth", 1000)]
    assert parse_args(["--full"]).parameter == []
    assert parse_args(["--kinds", "cross"]).parameter == []


def test_a_delay_run_is_ready_once_the_delay_writes(tmp_path: Path) -> None:
    from benchmarks.lab.console import ConsoleLine

    args = _args("--kinds", "delay-off", "--delay-command", "FAKE")
    plan, variant = plans(args)[0]  # type: ignore[arg-type]
    prog = program_for(args, variant, plan)  # type: ignore[arg-type]
    assert prog.ready(ConsoleLine(0.0, "LAB-DELAY-WRITING {}"))
    assert not prog.ready(ConsoleLine(0.0, "LAB-READY uptime=3"))
    line = next(x for x in prog.run_sh.splitlines() if "LAB-DELAY-START" in x)
    log = tmp_path / "delay.log"
    script = line.replace("/tmp/delay.log", str(log)).removesuffix(" &")
    fake = script.replace("FAKE", "sh -c 'echo first; echo second'")
    out = subprocess.run(["sh", "-c", fake], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[:2] == ["LAB-DELAY-START", "LAB-DELAY-WRITING first"]
    assert log.read_text() == "first\nsecond\n"  # the log keeps every line
    silent = script.replace("FAKE", "true")  # a delay that prints nothing never reads as ready
    out = subprocess.run(["sh", "-c", silent], capture_output=True, text=True, check=True).stdout
    assert "LAB-DELAY-WRITING" not in out
