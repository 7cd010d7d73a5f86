"""`python -m benchmarks.lab [--smoke|--full]`: real QEMU live migrations of a guest running
geoprobe.

Exit status: 0 when the mode's targets are met, 1 when a target is missed (a migration not
confirmed, no counter-measure, a guest fault, a failed run), 2 when the lab cannot run here (not
root, missing tools or data, the guest cannot be built within --budget); with --skip-unavailable the
last case prints why and exits 0 instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import luks, units
from .build import BuildError, build_guest, default_cache, need_tools, snapshot_source
from .netns import remove_stale
from .programs import DEFAULT_WATCH, RUN_SH, SECRET, clock_program, geoprobe_program
from .report import analyse, write
from .scenarios import GuestProgram, Lab, RunPlan, RunRecord
from .sites import WONDERPROXY, Place, distance_km, find_place
from .workloads import HOST_WORKLOADS, WORKLOADS, guest_background

# The watch as an owner runs it: every sensing and signal setting at geoprobe's defaults.
WATCH_AT_DEFAULTS = (
    "python3 -m geoprobe watch --landmarks /lab/catalogue.json --policy /lab/policy.toml "
    "--state /tmp/geoprobe-state -v"
)
DELAY_WRITING = "LAB-DELAY-WRITING"
DEFAULT_DELAY = "python3 -m geoprobe delay --memory 200M --cpu 1.0 --duration {duration} --json"

# Named sets of QEMU arguments, migration capabilities and parameters (docs/lab.md, "Capabilities").
# xbzrle and multifd exclude each other in QEMU; free-page-hint needs an iothread.
PRESETS: dict[str, dict[str, Any]] = {
    "xbzrle": {"capabilities": {"xbzrle": True}},
    "multifd-zstd": {
        "capabilities": {"multifd": True},
        "parameters": {"multifd-compression": "zstd"},
    },
    # Debian's cloud kernel has no vmgenid driver: QMP shows the ID change, the guest cannot.
    "vmgenid": {"qemu": ["-device", "vmgenid,guid=auto"]},
    # A second NIC as a failover pair (virtio-net standby + emulated e1000e primary, one MAC): QEMU
    # unplugs the primary when the migration sets up. The primary must sit on a PCI Express port,
    # hence q35. The lab's own eth0 is left as it is.
    "failover": {
        "machine": "q35",
        "qemu": [
            "-device",
            "pcie-root-port,id=lab-fo-port,chassis=1",
            "-netdev",
            "user,id=lab-fo-standby",
            "-device",
            (
                "virtio-net-pci,netdev=lab-fo-standby,id=lab-fo,mac=52:54:00:fa:11:00,failover=on,"
                "romfile="
            ),
            "-netdev",
            "user,id=lab-fo-primary",
            "-device",
            (
                "e1000e,netdev=lab-fo-primary,id=lab-fo-primary,mac=52:54:00:fa:11:00,"
                "failover_pair_id=lab-fo,bus=lab-fo-port,romfile="
            ),
        ],
    },
    "balloon-hint": {
        "modules": ["virtio_balloon"],
        "qemu": [
            "-object",
            "iothread,id=lab-balloon-io",
            "-device",
            "virtio-balloon-pci,free-page-hint=on,iothread=lab-balloon-io",
        ],
    },
}

# Kinds that stand for several: busy controls, busy cross-border runs, the hold under compression.
BUSY = [*WORKLOADS, *HOST_WORKLOADS]
GROUPS = {
    "busy": [f"control-{w}" for w in BUSY],
    "cross-busy": [f"cross-{w}" for w in BUSY],
    "hold": ["delay-xbzrle", "delay-multifd", "delay-off"],
}
# The hold runs: the delay from boot, auto-converge off, under each way QEMU can shrink its pages.
HOLD_CAPS: dict[str, str | None] = {
    "delay-xbzrle": "xbzrle",
    "delay-multifd": "multifd-zstd",
    "delay-off": None,
}


def _place(spec: str) -> Place:
    server, _, country = spec.partition(":")
    if not country:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected SERVER:CC, e.g. Frankfurt:DE")
    return find_place(server, country)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="one cross-border migration (default)")
    mode.add_argument(
        "--full", action="store_true", help="cross-border, control, same-country and delay runs"
    )
    mode.add_argument("--build-only", action="store_true", help="build the cached guest and stop")
    luks.add_options(ap, mode)
    units.add_options(ap, mode)
    ap.add_argument(
        "--kinds",
        default=None,
        help="comma list among cross, control, cross-W and control-W (W a workload: "
        + ", ".join(BUSY)
        + "), busy (every control-W), cross-busy (every cross-W), same, delay (baseline, "
        "auto-converge off and on), hold (the delay under xbzrle and multifd+zstd), bare (the "
        "guest without geoprobe: its own dirty rate); default: the mode's",
    )
    ap.add_argument(
        "--runs", type=int, default=None, help="runs of cross and control (10 in --full, else 1)"
    )
    ap.add_argument(
        "--busy-runs",
        type=int,
        default=None,
        help="runs of each cross-W and control-W (2 in --full)",
    )
    ap.add_argument("--same-runs", type=int, default=3)
    ap.add_argument(
        "--preset",
        action="append",
        default=[],
        choices=sorted(PRESETS),
        help="named QEMU devices or migration settings (repeatable): "
        + "; ".join(f"{k}: {_describe_preset(v)}" for k, v in PRESETS.items()),
    )
    ap.add_argument(
        "--qemu-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra QEMU argument for both ends (repeatable; e.g. --qemu-arg=-device "
        "--qemu-arg=vmgenid,guid=auto)",
    )
    ap.add_argument(
        "--capability",
        action="append",
        default=[],
        type=_capability,
        metavar="NAME=on|off",
        help="migration capability at both ends (repeatable), e.g. xbzrle=on",
    )
    ap.add_argument(
        "--parameter",
        action="append",
        default=[],
        type=_parameter,
        metavar="NAME=VALUE",
        help="migration parameter at both ends (repeatable), e.g. multifd-compression=zstd, "
        "max-bandwidth=33554432",
    )
    ap.add_argument(
        "--no-dirty-rate",
        action="store_true",
        help="no QMP calc-dirty-rate in runs without a migration (to rule out the measurement "
        "as a cause of what the guest sees)",
    )
    ap.add_argument(
        "--host-burners", type=int, default=1, help="host CPU burners in control-host/cross-host"
    )
    ap.add_argument(
        "--hold-on-suspect",
        action="store_true",
        help="the guest's policy also runs `delay` on suspicion (the hold during pre-copy)",
    )
    ap.add_argument(
        "--no-precopy-target",
        action="store_true",
        help="do not require `suspected` before the switchover in cross-border runs",
    )
    ap.add_argument(
        "--program",
        choices=("geoprobe", "clock"),
        default="geoprobe",
        help="guest program: geoprobe watch, or the lab's clock probe (development)",
    )
    ap.add_argument(
        "--guest-command",
        default=DEFAULT_WATCH,
        help="the geoprobe command the guest runs at boot (its stdout is the console); "
        f"'defaults' stands for `{WATCH_AT_DEFAULTS}`; default: `{DEFAULT_WATCH}`",
    )
    ap.add_argument(
        "--delay-command",
        default=DEFAULT_DELAY,
        help="guest command for the delay runs; {duration} is filled in",
    )
    ap.add_argument("--delay-seconds", type=float, default=60.0)
    # Sites stay SERVER:CC strings until main() has checked that the dataset is there.
    ap.add_argument("--a", default="Frankfurt:DE", help="site A, SERVER:CC")
    ap.add_argument("--b", default="Madrid:ES", help="site B across the border")
    ap.add_argument("--same", default="Hamburg:DE", help="site B in A's country")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds at A after the baseline")
    ap.add_argument(
        "--after",
        type=float,
        default=25.0,
        help="seconds to wait for a confirmation (a control run idles this long)",
    )
    ap.add_argument(
        "--landmarks",
        type=int,
        default=90,
        help="landmarks in the guest's catalogue: the nearest to site A (0: all)",
    )
    ap.add_argument("--memory", type=int, default=512, help="guest MiB")
    ap.add_argument("--accel", default="tcg", help="tcg (default here) or kvm")
    ap.add_argument(
        "--machine", default=None, help="QEMU machine type (default pc; the failover preset: q35)"
    )
    ap.add_argument(
        "--cache", type=Path, default=None, help="guest image cache (~/.cache/geoprobe-lab)"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/lab/results"))
    ap.add_argument("--keep-work", action="store_true", help="keep per-run logs and serial files")
    ap.add_argument(
        "--functional",
        action="store_true",
        help="check only what must work (confirmed, counter-measures, no faults), not the "
        "5 s timing target: for CI on a shared, TCG-only machine",
    )
    ap.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="exit 0 with a reason when the lab cannot run on this machine",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds the whole lab may take (default: 540 for --smoke, none otherwise): "
        "a guest build that would not leave time for the runs is stopped and the lab "
        "reported unavailable; a run never waits past the budget",
    )
    args = ap.parse_args(argv)
    if not (args.full or args.build_only or args.kinds) and not any(
        name == "max-bandwidth" for name, _ in args.parameter
    ):
        # The smoke's one migration: an idle 512 MiB guest copies in 1.5-4 s at QEMU's 128 MiB/s,
        # too short to show a pre-copy detector; a multi-GiB VM at full speed takes longer.
        args.parameter.append(("max-bandwidth", SMOKE_BANDWIDTH))
    if args.guest_command == "defaults":
        args.guest_command = WATCH_AT_DEFAULTS
    if args.runs is None:
        args.runs = 10 if args.full else 1
    if args.busy_runs is None:
        args.busy_runs = 2 if args.full else 1
    if args.budget is None and args.units:
        args.budget = UNITS_BUDGET_S
    if args.budget is None and not args.full and not args.build_only:
        args.budget = SMOKE_BUDGET_S
    return args


def _describe_preset(p: dict[str, Any]) -> str:
    parts = [" ".join(p.get("qemu", []))]
    parts += [f"{k}=on" for k in p.get("capabilities", {})]
    parts += [f"{k}={v}" for k, v in p.get("parameters", {}).items()]
    return ", ".join(x for x in parts if x)


def _capability(spec: str) -> tuple[str, bool]:
    name, _, state = spec.partition("=")
    if not name or state not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=on or NAME=off")
    return name, state == "on"


def _parameter(spec: str) -> tuple[str, Any]:
    name, sep, value = spec.partition("=")
    if not name or not sep or not value:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=VALUE")
    if value.isdigit():
        return name, int(value)
    if value in ("on", "off", "true", "false"):
        return name, value in ("on", "true")
    return name, value


def migration_settings(
    presets: list[str], capabilities: list[tuple[str, bool]], parameters: list[tuple[str, Any]]
) -> tuple[list[str], dict[str, bool], dict[str, Any]]:
    """QEMU arguments, capabilities and parameters: presets first, explicit options override
    them."""
    qemu: list[str] = []
    caps: dict[str, bool] = {}
    params: dict[str, Any] = {}
    for name in presets:
        p = PRESETS[name]
        qemu += p.get("qemu", [])
        caps.update(p.get("capabilities", {}))
        params.update(p.get("parameters", {}))
    caps.update(capabilities)
    params.update(parameters)
    return qemu, caps, params


def expand_kinds(spec: str) -> list[str]:
    """The comma list of --kinds with the group names replaced by their members."""
    out: list[str] = []
    for k in (x.strip() for x in spec.split(",") if x.strip()):
        for kind in GROUPS.get(k, [k]):
            base, _, workload = kind.partition("-")
            known = kind in ("same", "delay", "bare", *HOLD_CAPS) or (
                base in ("cross", "control") and (not workload or workload in BUSY)
            )
            if not known:
                raise ValueError(f"--kinds: unknown kind {kind!r}")
            if kind not in out:
                out.append(kind)
    return out


# Boot to the first fix under TCG on a loaded host; a later run is not started without this left.
MIN_BOOT_S = 60.0
# The smoke's link: pre-copy of the idle guest lasts about 8 s instead of 1.5-4 s.
SMOKE_BANDWIDTH = 32 << 20
# The units scenario: systemd's boot under TCG, the watch's first round twice, one check.
UNITS_BUDGET_S = 900.0
# CI's limit for the smoke is 10 minutes; leave a minute for QEMU's and the namespaces' teardown.
SMOKE_BUDGET_S = 540.0
# What one smoke run needs after the build: boot to the first fix (~45-95 s under TCG here), settle,
# migration, confirmation; a build that leaves less than this is stopped.
RUN_RESERVE_S = 180.0


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = need_tools()
    if missing:
        return (
            "missing "
            + ", ".join(missing)
            + ": apt-get install qemu-system-x86 debootstrap e2fsprogs cpio iproute2"
        )
    if not WONDERPROXY.is_dir():
        return f"../shared/data not present: {WONDERPROXY} is needed"
    return None


def plans(args: argparse.Namespace) -> list[tuple[RunPlan, str]]:
    """The runs of the chosen mode, each with the program variant it needs ("" or "delay")."""
    kinds = expand_kinds(
        args.kinds
        if args.kinds
        else "cross,control,busy,cross-busy,same,delay,hold"
        if args.full
        else "cross"
    )
    _, caps, params = migration_settings(args.preset, args.capability, args.parameter)
    out: list[tuple[RunPlan, str]] = []
    common: dict[str, Any] = {
        "settle_s": args.settle,
        "after_s": args.after,
        "capabilities": caps,
        "parameters": params,
        "host_burners": args.host_burners,
    }
    # Interleaved, so host load drifting over a long run falls on every kind alike.
    for i in range(max(args.runs, args.busy_runs)):
        for kind in kinds:
            base, _, workload = kind.partition("-")
            if base not in ("cross", "control"):
                continue
            if i >= (args.busy_runs if workload else args.runs):
                continue
            out.append(
                (
                    RunPlan(
                        kind,
                        args.a,
                        args.b,
                        migrate=base == "cross",
                        workload=workload,
                        **common,
                    ),
                    "",
                )
            )
    if "same" in kinds:
        out += [
            (RunPlan("same", args.a, args.same, **common), "")
            for _ in range(args.same_runs if args.full else 1)
        ]
    if "bare" in kinds:  # the guest without geoprobe: its own dirty rate, for the controls
        out.append((RunPlan("bare", args.a, args.b, migrate=False, **common), "bare"))
    hold = [k for k in kinds if k in HOLD_CAPS]
    if "delay" in kinds or hold:
        # Same fixed bandwidth for all three so the totals compare; the delay holds for
        # delay_seconds.
        dparams = {"max-bandwidth": 128 << 20, "downtime-limit": 300}
        timeout = args.delay_seconds + 90.0
        d: dict[str, Any] = {
            "settle_s": 10.0,
            "after_s": 5.0,
            "parameters": dparams,
            "migration_timeout_s": timeout,
        }
        if "delay" in kinds:
            out += [
                (RunPlan("delay-baseline", args.a, args.b, **d), "delay-baseline"),
                (RunPlan("delay-off", args.a, args.b, **d), "delay"),
                (RunPlan("delay-on", args.a, args.b, auto_converge=True, **d), "delay"),
            ]
        for kind in hold:
            if kind == "delay-off" and "delay" in kinds:
                continue  # already in the trio
            preset = HOLD_CAPS[kind]
            _, hcaps, hparams = migration_settings([preset] if preset else [], [], [])
            out.append(
                (
                    RunPlan(
                        kind,
                        args.a,
                        args.b,
                        settle_s=10.0,
                        after_s=5.0,
                        parameters={**dparams, **hparams},
                        capabilities=hcaps,
                        migration_timeout_s=timeout,
                    ),
                    "delay",
                )
            )
    return out


def program_for(args: argparse.Namespace, variant: str, plan: RunPlan) -> GuestProgram:
    background = ""
    if variant == "delay":
        cmd = args.delay_command.replace("{duration}", str(int(args.delay_seconds)))
        # The run waits for the delay's first progress line: under a loaded TCG host its start-up
        # (imports, the buffer) took over 15 s, and a migration before it measures nothing.
        background = (
            f"(echo LAB-DELAY-START; {cmd} 2>&1 | (if read -r first; then "
            f'echo "{DELAY_WRITING} $first" >&3; echo "$first"; fi; cat) 3>&1 > /tmp/delay.log; '
            f"echo LAB-DELAY-END; tail -c 1500 /tmp/delay.log) &"
        )
    # The guest has no udev: the drivers the presets' devices need are loaded at boot.
    modules = [m for p in args.preset for m in PRESETS[p].get("modules", [])]
    if modules:
        mods = " ".join(modules)
        background += f"\nmodprobe -a {mods} && echo LAB-MODULES {mods} || echo LAB-MODULES-FAILED"
    background = "\n".join(x for x in (background, guest_background(plan.workload)) if x)
    if variant == "bare":
        run_sh = RUN_SH.format(secret=SECRET, extra=background, command="exec sleep infinity")
        return GuestProgram(name="bare", run_sh=run_sh)
    if variant == "delay":
        return dataclasses.replace(
            clock_program(background), ready=lambda line: line.text.startswith(DELAY_WRITING)
        )
    if variant.startswith("delay") or args.program == "clock":
        return clock_program(background)  # delay runs measure QEMU's convergence, not detection
    return geoprobe_program(
        [plan.a.country],
        command=args.guest_command,
        background=background,
        delay_on_suspect=args.hold_on_suspect,
    )


# Targets (docs/lab.md): share of cross-border runs with `suspected` before the switchover, the
# median confirmation after it, and geoprobe's own dirty rate in idle controls.
PRECOPY_SHARE = 0.9
CONFIRM_S = 5.0
PROBE_DIRTY_MB_S = 10.0


def probe_dirty_rate(summary: dict[str, Any]) -> float | None:
    """geoprobe's own dirty rate: the idle controls' (worst run median) less the bare guest's
    (its best run median), or the idle controls' whole-guest figure when no bare run was made."""
    ctl = (summary.get("control") or {}).get("max_run_median_dirty_rate_mb_s")
    bare = (summary.get("bare") or {}).get("min_run_median_dirty_rate_mb_s")
    if ctl is None:
        return None
    return round(ctl - bare, 2) if bare is not None else float(ctl)


def targets(summary: dict[str, Any], timing: bool = True, precopy: bool = True) -> list[str]:
    """The lab's targets (docs/lab.md); returns what was missed."""
    missed: list[str] = []
    cross_runs = cross_early = 0
    for kind, cross in summary.items():
        if kind.partition("-")[0] != "cross":
            continue
        cross_runs += cross["runs"]
        cross_early += cross.get("suspected_before_switchover", 0)
        if (
            cross["confirmed_crossing"] < cross["runs"]
        ):  # a confirmed move that is no crossing fails
            missed.append(
                f"{kind}: {cross['confirmed_crossing']}/{cross['runs']} crossings confirmed in "
                f"the guest ({cross['with_confirmed']} migrations confirmed)"
            )
        med = cross["median_switchover_to_confirmed_s"]
        if timing and (med is None or med > CONFIRM_S):
            missed.append(f"{kind}: median switchover->confirmed {med} s > {CONFIRM_S:g} s")
        if cross["countermeasures_fired"] < cross["runs"]:
            missed.append(
                f"{kind}: counter-measures fired in {cross['countermeasures_fired']} runs"
            )
    if precopy and cross_runs and cross_early < PRECOPY_SHARE * cross_runs:
        missed.append(
            f"cross: suspected before the switchover in {cross_early}/{cross_runs} runs "
            f"(< {PRECOPY_SHARE:.0%})"
        )
    for kind, s in summary.items():
        if s.get("guest_faults"):
            missed.append(f"{kind}: the guest faulted after migration in {s['guest_faults']} runs")
        if s.get("errors"):
            missed.append(f"{kind}: {s['errors']} runs failed")
        if kind.partition("-")[0] == "control" and (s["with_suspected"] or s["with_confirmed"]):
            missed.append(
                f"{kind}: {s['with_suspected']} of {s['runs']} runs suspected, "
                f"{s['with_confirmed']} confirmed"
            )
        held = kind.startswith("delay-") and kind not in ("delay-on", "delay-baseline")
        if held and any(s.get("converged_while_delay_ran") or []):
            missed.append(f"{kind}: the migration converged while the delay ran")
    rate = probe_dirty_rate(summary)
    if rate is not None and rate > PROBE_DIRTY_MB_S:
        missed.append(
            f"control: geoprobe dirtied {rate:g} MB/s (QMP calc-dirty-rate, idle controls"
            + (" less the bare guest" if "bare" in summary else ", the whole guest")
            + f") > {PROBE_DIRTY_MB_S:g} MB/s"
        )
    same = summary.get("same")
    if same and same["confirmed_crossing"]:
        missed.append(f"same-country: {same['confirmed_crossing']} crossings confirmed")
    return missed


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every run's finally stops its QEMUs and deletes its
    # namespaces.
    signal.signal(signal.SIGTERM, _interrupt)
    why = unavailable()
    if why:
        print(f"lab skipped: {why}", file=sys.stderr)
        return 0 if args.skip_unavailable else 2
    try:
        args.a, args.b, args.same = (_place(x) for x in (args.a, args.b, args.same))
        todo = plans(args)
    except (argparse.ArgumentTypeError, LookupError, ValueError) as exc:
        print(f"python -m benchmarks.lab: error: {exc}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"[lab {dt.datetime.now(dt.UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    t0 = time.time()
    start = time.monotonic()
    deadline = None if args.budget is None else start + args.budget
    for name in remove_stale("geoprobe-lab-"):
        log(f"removed namespace {name} left by a killed run")
    log("guest image: building or reusing the cache (first build: debootstrap, several minutes)")
    try:
        build_deadline = None if deadline is None or args.build_only else deadline - RUN_RESERVE_S
        image = build_guest(args.cache or default_cache(), deadline=build_deadline)
    except BuildError as exc:
        print(f"lab skipped: {exc}", file=sys.stderr)
        return 0 if args.skip_unavailable else 2
    log(f"guest image ready after {time.monotonic() - start:.0f} s: {image.root}")
    if args.build_only:
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="geoprobe-lab-"))
    digest = snapshot_source(Path(__file__).resolve().parents[2], workdir / "src")
    log(f"geoprobe snapshot {digest} in {workdir / 'src'} (every run uses this copy)")
    qemu_args, _, _ = migration_settings(args.preset, [], [])
    qemu_args += args.qemu_arg
    machine = args.machine or next(
        (m for p in args.preset if (m := PRESETS[p].get("machine"))), "pc"
    )
    lab = Lab(
        image,
        workdir,
        memory_mb=args.memory,
        accel=args.accel,
        log=log,
        guest_landmarks=args.landmarks,
        source=workdir / "src",
        qemu_args=tuple(qemu_args),
        machine=machine,
        measure_dirty_rate=not args.no_dirty_rate,
    )
    if args.luks or args.units:
        rc = (luks if args.luks else units).run(args, lab, log, digest)
        if not args.keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
        return rc
    records: list[RunRecord] = []
    loads: list[float] = []  # the host's 1-minute load average at each run's end: 2 shared cores
    not_started = 0
    for i, (plan, variant) in enumerate(todo, 1):
        if deadline is not None and i > 1:
            need = plan.settle_s + plan.after_s + MIN_BOOT_S
            if deadline - time.monotonic() < need:  # the first run always starts
                not_started = len(todo) - i + 1
                log(f"budget spent: {not_started} of {len(todo)} runs not started")
                break
        km = distance_km(plan.a, plan.b)
        log(
            f"run {i}/{len(todo)}: {plan.kind} {plan.a.server} -> {plan.b.server} ({km:.0f} km)"
            + ("" if plan.migrate else " [no migration]")
        )
        if deadline is not None:
            # Never wait past the budget for a guest that is not ready: that run then fails (exit
            # 1).
            left = deadline - time.monotonic() - plan.settle_s - plan.after_s - 20.0
            plan = dataclasses.replace(
                plan, ready_timeout_s=max(30.0, min(plan.ready_timeout_s, left))
            )
        rec = lab.run(plan, program_for(args, variant, plan))
        records.append(rec)
        if (load := _loadavg()) is not None:
            loads.append(load[0])
        row = analyse(rec)
        log(
            f"  suspected {row['suspected']}, confirmed {row['confirmed']}, "
            f"switchover->confirmed {row['switchover_to_confirmed_s']} s, "
            f"hooks {len(row['hooks'])}, webhooks {len(row['webhooks'])}"
        )
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    )
    meta = {
        "mode": "full" if args.full else "smoke",
        "program": args.program,
        "guest_command": args.guest_command,
        "guest_landmarks": args.landmarks,
        "qemu_args": qemu_args,
        "machine": machine,
        "presets": args.preset,
        "accel": args.accel,
        "memory_mb": args.memory,
        "qemu": qemu.stdout.split("\n")[0].replace("QEMU emulator version ", ""),
        "geoprobe_snapshot": digest,
        "cpus": os.cpu_count(),
        "load_average_1min": {
            "min": min(loads),
            "median": statistics.median(loads),
            "max": max(loads),
        }
        if loads
        else None,
        "started_utc": dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0),
        "runs_planned": len(todo),
        "runs_not_started": not_started,
        "workdir": str(workdir),
    }
    j, md = write(args.out, records, meta)
    summary = json.loads(j.read_text())["summary"]
    print(md.read_text())
    missed = targets(summary, timing=not args.functional, precopy=not args.no_precopy_target)
    for m in missed:
        log(f"target missed: {m}")
    log(f"report: {j} and {md}")
    if not args.keep_work:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
