"""The lab's units scenario: the shipped systemd units start under a real systemd.

systemd is not PID 1 where the tests run, so the lab's Debian guest boots it (kernel append
``init=/sbin/lab-systemd-init``, which gives systemd a writable /etc and /var on the read-only root
and then execs it). The guest script (``units_guest.sh``, run by systemd once multi-user.target is
reached) installs contrib/systemd's units, a harmless policy (contrib/policy.demo.toml allowing site
A's country), geoprobe in /usr/local/bin and the landmark catalogue where ``geoprobe landmarks
sync`` run as root writes it, the catalogue of the site testbeds the guest reaches at 10.0.2.2.
Then it starts the watch and waits for its first round, runs the check service once, enables the
timer, and restarts the watch with the report-only drop-in (a dynamic user in a tight sandbox). Each
check is one ``LAB-UNITS PASS|FAIL NAME detail`` line on the console; this side parses them.

    python -m benchmarks.lab --units [--a Frankfurt:DE]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .console import ConsoleLine
from .scenarios import GuestProgram, Lab, RunPlan
from .sites import REPO

HERE = Path(__file__).resolve().parent
KERNEL_ARGS = "init=/sbin/lab-systemd-init systemd.show_status=error"
# What the guest must report, in its order; one missing counts as failed (the script stopped).
CHECKS = (
    "systemd-pid1",
    "install",
    "policy-check",
    "catalogue-path",
    "units-verify",
    "watch-active",
    "watch-round",
    "watch-dirs",
    "watch-metrics",
    "watch-stop",
    "check-run",
    "timer-enabled",
    "report-only-active",
    "report-only-round",
    "report-only-catalogue",
    "report-only-metrics",
    "watch-journal",
)
UNIT_FILES = (
    "geoprobe-watch.service",
    "geoprobe-check.service",
    "geoprobe-check.timer",
    "geoprobe-watch-report-only.conf",
)
# `pip install .` leaves such a console script in /usr/local/bin; this one runs the lab's snapshot.
# PYTHONPATH too: the processes it starts (the gap sampler: `python3 -m geoprobe.watch...`) must
# find the package as they would in site-packages.
GEOPROBE_SCRIPT = """#!/usr/bin/python3
import os
import sys

os.environ["PYTHONPATH"] = "/lab"
sys.path.insert(0, "/lab")
from geoprobe.cli import main

sys.exit(main())
"""
RESULT = re.compile(r"LAB-UNITS (PASS|FAIL) (\S+)(?: (.*))?$")
FIGURE = re.compile(r"LAB-UNITS FIGURE (\S+) (\S+)")
DONE = re.compile(r"LAB-UNITS DONE rc=(\d+)")


def add_options(ap: argparse.ArgumentParser, mode: Any) -> None:
    mode.add_argument(
        "--units",
        action="store_true",
        help="the systemd units scenario: boot systemd in the guest, start contrib/systemd's "
        "watch and check units (and the report-only drop-in), check they run",
    )


@dataclass
class UnitsResult:
    """What the guest reported: each check's verdict and detail, its figures, its exit line."""

    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    done: int | None = None
    log: list[str] = field(default_factory=list)  # LAB-UNITS-LOG lines (status, journals)

    def missing(self) -> list[str]:
        return [c for c in CHECKS if c not in self.checks]

    def failed(self) -> list[str]:
        return [name for name, (ok, _) in self.checks.items() if not ok]

    def ok(self) -> bool:
        return self.done == 0 and not self.failed() and not self.missing()


def parse_console(lines: Iterable[str]) -> UnitsResult:
    """The guest's LAB-UNITS lines (anywhere in a line: the kernel may have written first)."""
    res = UnitsResult()
    for text in lines:
        if "LAB-UNITS-LOG " in text:
            res.log.append(text.split("LAB-UNITS-LOG ", 1)[1])
        elif m := RESULT.search(text):
            res.checks[m.group(2)] = (m.group(1) == "PASS", (m.group(3) or "").strip())
        elif m := FIGURE.search(text):
            try:
                res.figures[m.group(1)] = float(m.group(2))
            except ValueError:
                continue
        elif m := DONE.search(text):
            res.done = int(m.group(1))
    return res


def report_lines(res: UnitsResult) -> list[str]:
    """PASS/FAIL lines for the host's output, every expected check included."""
    out = []
    for name in [*CHECKS, *(c for c in res.checks if c not in CHECKS)]:
        if name in res.checks:
            ok, detail = res.checks[name]
            out.append(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
        else:
            out.append(f"FAIL {name}: not reached")
    if res.done is None:
        out.append("FAIL done: the guest script did not finish")
    return out


def policy_toml(allow: str) -> str:
    """contrib/policy.demo.toml (hooks that only print) allowing `allow`."""
    text = (REPO / "contrib" / "policy.demo.toml").read_text()
    return re.sub(r"(?m)^allow = .*$", f"allow = [{json.dumps(allow)}]", text, count=1)


def _done(line: ConsoleLine) -> bool:
    return DONE.search(line.text) is not None


def units_program(allow: str) -> GuestProgram:
    files: dict[str, str | bytes] = {
        f"contrib/systemd/{name}": (REPO / "contrib" / "systemd" / name).read_text()
        for name in UNIT_FILES
    }
    files["policy.toml"] = policy_toml(allow)
    files["bin/geoprobe"] = GEOPROBE_SCRIPT
    return GuestProgram(
        name="units",
        run_sh=(HERE / "units_guest.sh").read_text(),
        files=files,
        needs_testbed=True,
        ready=_done,
    )


def markdown(res: UnitsResult, meta: dict[str, Any]) -> str:
    out = [
        "# Units lab run",
        "",
        (
            f"{meta['started_utc']}, {meta['seconds']} s, QEMU {meta['qemu']}, "
            f"snapshot {meta['geoprobe_snapshot']}, site {meta['site']}"
        ),
        "",
        *(f"- {line}" for line in report_lines(res)),
        "",
        "| figure | seconds |",
        "|---|---|",
        *(f"| {k} | {v:g} |" for k, v in res.figures.items()),
    ]
    if meta.get("error"):
        out += ["", f"Run error: {meta['error']}"]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace, lab: Lab, log: Callable[[str], None], digest: str) -> int:
    """The --units mode: one boot of the guest under systemd; exit 0 when every check passed."""
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    )
    t0 = time.time()
    lab.kernel_args = KERNEL_ARGS
    lab.measure_dirty_rate = False
    timeout = 900.0 if args.budget is None else max(120.0, args.budget - 60.0)
    plan = RunPlan(
        "units", args.a, args.b, migrate=False, settle_s=0.0, after_s=0.0, ready_timeout_s=timeout
    )
    log(f"units run: systemd in the guest at {args.a.server} ({args.a.country})")
    rec = lab.run(plan, units_program(args.a.country))
    res = parse_console(text for _, text in rec.console)
    meta: dict[str, Any] = {
        "qemu": qemu.stdout.split("\n")[0].replace("QEMU emulator version ", ""),
        "geoprobe_snapshot": digest,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)),
        "seconds": round(time.time() - t0),
        "site": f"{args.a.server}:{args.a.country}",
        "guest_landmarks": args.landmarks,
        "error": rec.error,
    }
    lines = report_lines(res)
    if not res.ok():
        for text in res.log:
            print(f"  | {text}")
        if res.done is None:  # the guest did not finish: its console's end says where it stopped
            for _, text in rec.console[-80:]:
                print(f"  console| {text}")
    for line in lines:
        print(line)
    for name, value in res.figures.items():
        print(f"figure {name}: {value:g} s")
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": meta,
        "checks": {k: {"pass": ok, "detail": d} for k, (ok, d) in res.checks.items()},
        "figures": res.figures,
        "done": res.done,
        "log": res.log,
    }
    (args.out / "lab-units.json").write_text(json.dumps(data, indent=1))
    (args.out / "lab-units.md").write_text(markdown(res, meta))
    if rec.error:
        log(f"run error: {rec.error[:300]}")
    log(f"report: {args.out / 'lab-units.md'}")
    return 0 if res.ok() else 1
