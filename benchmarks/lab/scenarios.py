"""One lab run: boot the guest at site A, optionally migrate it live to site B, record both
timelines.

The host's record (QMP events and query-migrate samples, stamped with host time) is the ground
truth; the guest's record (its serial console, stamped with the host time each line was read) is
what geoprobe claimed. The report compares the two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import GuestImage, build_run_disk
from .console import ConsoleLine, GuestConsole
from .hostlog import HostLoad, HostMonitor
from .qmp import QMPError
from .sites import REPO, Place, Site, distance_km, wait_for_file
from .vm import MachineSpec, QemuProcess

SUSPECTED = "io.geoprobe.migration.suspected"
CONFIRMED = "io.geoprobe.migration.confirmed"
TERMINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class GuestProgram:
    """What the guest runs at boot, and how the lab reads its output.

    `run_sh` is the body of /lab/run.sh; `files` go on the run disk too. `ready` says when the guest
    has its baseline (the lab starts counting then). `confirmed` recognises the guest's "I crossed"
    line.
    """

    name: str
    run_sh: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    needs_testbed: bool = False
    ready: Callable[[ConsoleLine], bool] = lambda line: "LAB-READY" in line.text
    confirmed: Callable[[ConsoleLine], bool] = lambda line: False
    suspected: Callable[[ConsoleLine], bool] = lambda line: False
    countermeasure: Callable[[ConsoleLine], bool] = lambda line: "LAB-HOOK" in line.text
    # Called once both sites are up, before the guest boots: a scenario's own services there.
    on_sites: Callable[[list[Site]], None] | None = None


@dataclass(frozen=True)
class RunPlan:
    kind: str  # "cross", "same", "control", "delay-baseline", "delay-off", "delay-on"
    a: Place
    b: Place
    migrate: bool = True
    settle_s: float = 20.0  # time at A after the guest is ready, before the migration starts
    after_s: float = 30.0  # how long to wait after the switchover for the guest to confirm
    migration_timeout_s: float = 120.0  # cancel a migration that has not completed by then
    auto_converge: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)  # migrate-set-parameters
    # migrate-set-capabilities at both ends (multifd must be on at the destination too)
    capabilities: dict[str, bool] = field(default_factory=dict)
    workload: str = ""  # a busy guest ("cpu", "mem", "disk") or a loaded host ("host")
    host_burners: int = 1  # CPU burners on the host when workload is "host"
    ready_timeout_s: float = 240.0


@dataclass
class RunRecord:
    plan: RunPlan
    program: str
    started: float = 0.0
    guest_ready: float | None = None
    migrate_cmd: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # query-migrate every ~100 ms
    src_events: list[dict[str, Any]] = field(default_factory=list)
    dst_events: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # last query-migrate
    console: list[tuple[float, str]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)  # HostMonitor.to_json()
    error: str | None = None
    ended: float = 0.0

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "kind": p.kind,
            "program": self.program,
            "a": vars(p.a),
            "b": vars(p.b),
            "distance_km": round(distance_km(p.a, p.b), 1),
            "plan": {
                "migrate": p.migrate,
                "settle_s": p.settle_s,
                "after_s": p.after_s,
                "auto_converge": p.auto_converge,
                "parameters": p.parameters,
                "capabilities": p.capabilities,
                "workload": p.workload,
                "migration_timeout_s": p.migration_timeout_s,
            },
            "started": self.started,
            "guest_ready": self.guest_ready,
            "migrate_cmd": self.migrate_cmd,
            "samples": self.samples,
            "src_events": self.src_events,
            "dst_events": self.dst_events,
            "final": self.final,
            "console": self.console,
            "webhooks": self.webhooks,
            "host": self.host,
            "error": self.error,
            "ended": self.ended,
        }


@dataclass
class Lab:
    """Shared pieces of every run: the cached guest image, the work dir, the landmark keys."""

    image: GuestImage
    workdir: Path
    memory_mb: int = 512
    accel: str = "tcg"
    log: Callable[[str], None] = print
    guest_landmarks: int = 60  # 0: every landmark both sites serve
    source: Path = REPO  # holds the geoprobe package the guest and the testbeds run (a snapshot)
    qemu_args: tuple[str, ...] = ()  # extra QEMU arguments, the same at both ends
    machine: str = "pc"
    measure_dirty_rate: bool = True  # calc-dirty-rate in runs without a migration
    kernel_args: str = ""  # appended to the kernel command line (the units scenario's init=)
    _fitted: set[str] = field(
        default_factory=set, init=False, repr=False
    )  # guest catalogues already in the cache
    _monitor: HostMonitor = field(default_factory=HostMonitor, init=False, repr=False)
    _vms: list[QemuProcess | None] = field(default_factory=list, init=False, repr=False)

    def run(self, plan: RunPlan, program: GuestProgram) -> RunRecord:
        rec = RunRecord(plan=plan, program=program.name, started=time.time())
        wd = self.workdir / f"run-{int(rec.started * 1000)}-{plan.kind}"
        wd.mkdir(parents=True)
        keys = self.workdir / "keys"
        keys.mkdir(exist_ok=True)
        sites = [Site("A", plan.a, wd, self.source), Site("B", plan.b, wd, self.source)]
        src: QemuProcess | None = None
        dst: QemuProcess | None = None
        console = GuestConsole()
        self._monitor = HostMonitor()
        self._vms = []
        load = HostLoad(plan.host_burners if plan.workload == "host" else 0)
        try:
            catalogue = wd / "catalogue-A.json"
            for s in sites:
                s.start(testbed=program.needs_testbed, keys=keys)
                if program.needs_testbed:  # sequential: B reuses the keys A generated
                    wait_for_file(wd / f"catalogue-{s.label}.json", 120.0, s)
            if program.on_sites is not None:
                program.on_sites(sites)
            files = dict(program.files)
            if program.needs_testbed:
                guest = json.dumps(
                    guest_catalogue(
                        json.loads(catalogue.read_text()),
                        json.loads((wd / "catalogue-B.json").read_text()),
                        self.guest_landmarks,
                        exclude={plan.a.server, plan.b.server},
                        near=plan.a,
                    )
                )
                files["catalogue.json"] = guest
                (wd / "catalogue-guest.json").write_text(guest)
                files.update(self.host_cache(wd / "catalogue-guest.json"))
            run_disk = build_run_disk(wd / "run.ext4", self.source, files, program.run_sh)
            spec = MachineSpec(
                self.image,
                run_disk,
                memory_mb=self.memory_mb,
                accel=self.accel,
                extra=self.qemu_args,
                machine=self.machine,
                append=f"{MachineSpec.append} {self.kernel_args}".strip(),
            )
            src = QemuProcess("src", spec, sites[0].ns, wd).start()
            self._vms = [src]
            console.add(src.serial)
            ready = console.wait_for(program.ready, plan.ready_timeout_s, alive=src.alive)
            if ready is None:
                raise RuntimeError(
                    f"guest not ready within {plan.ready_timeout_s} s:\n" + console.text()[-3000:]
                )
            rec.guest_ready = ready.received
            self.log(f"  guest ready after {ready.received - src.started:.1f} s")
            load.start()
            measure = self.measure_dirty_rate and not plan.migrate
            self._idle(console, plan.settle_s, sites, measure_dirty=measure)
            if plan.migrate:
                dst = QemuProcess("dst", spec, sites[1].ns, wd, incoming=True).start()
                self._vms = [src, dst]
                self._monitor.stop_measuring()
                console.add(dst.serial)
                self._migrate(rec, src, dst, console, wd / "migration.sock", sites)
                self._await_confirmation(rec, console, program, plan.after_s, dst, sites)
            else:
                self._idle(console, plan.after_s, sites, measure_dirty=measure)
        except Exception as exc:  # noqa: BLE001 (a failed run is recorded, never silently dropped
            rec.error = f"{type(exc).__name__}: {exc}"
            self.log(f"  run failed: {rec.error[:500]}")
        finally:
            load.stop()
            rec.host = self._monitor.to_json()
            for vm in (dst, src):
                if vm is not None:
                    if vm.qmp is not None:
                        vm.qmp.poll_events(0.0)
                        (rec.src_events if vm is src else rec.dst_events).extend(
                            e.to_json() for e in vm.qmp.events
                        )
                    vm.stop()
            console.read()
            rec.console = [(line.received, line.text) for line in console.lines]
            for s in sites:
                s.stop()
                if s.webhook_log.exists():
                    rec.webhooks += [json.loads(x) for x in s.webhook_log.read_text().splitlines()]
            rec.ended = time.time()
            (wd / "record.json").write_text(json.dumps(rec.to_json(), indent=1))
            (wd / "run.ext4").unlink(missing_ok=True)
        return rec

    def host_cache(self, catalogue: Path) -> dict[str, str | bytes]:
        """geoprobe's cache built on the host, where it takes seconds, not the minutes it takes
        under TCG: the country index, and the guest catalogue's calibration fit (both keyed by
        content, so the guest finds them). The guest copies them into its own cache dir at boot."""
        d = self.workdir / "geoprobe-cache"
        d.mkdir(exist_ok=True)
        content = catalogue.read_text()
        if content not in self._fitted:  # the cross and control runs share one guest catalogue
            self._fitted.add(content)
            env = dict(os.environ, GEOPROBE_CACHE_DIR=str(d), PYTHONPATH=str(self.source))
            code = (
                "import sys; from geoprobe.landmarks import load_catalogue; "
                "from geoprobe.locate import fit_catalogue; fit_catalogue(load_catalogue(sys.argv[1]))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code, str(catalogue)],
                env=env,
                check=False,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:  # the guest then fits it itself, only slower
                self.log(
                    f"  host-side calibration fit failed: {done.stderr.strip().splitlines()[-1:]}"
                )
        return {f"cache/{p.relative_to(d)}": p.read_bytes() for p in d.rglob("*") if p.is_file()}

    def _idle(
        self,
        console: GuestConsole,
        seconds: float,
        sites: list[Site],
        measure_dirty: bool = False,
    ) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            console.read()
            for s in sites:
                s.check_alive()
            self._monitor.sample(self._vms, measure_dirty=measure_dirty)
            time.sleep(0.05)

    def _migrate(
        self,
        rec: RunRecord,
        src: QemuProcess,
        dst: QemuProcess,
        console: GuestConsole,
        sock: Path,
        sites: list[Site],
    ) -> None:
        assert src.qmp is not None and dst.qmp is not None
        plan = rec.plan
        caps = {"auto-converge": plan.auto_converge, **plan.capabilities}
        src.qmp.set_capabilities(**caps)
        dst.qmp.set_capabilities(**caps)
        if plan.parameters:
            src.qmp.set_parameters(**plan.parameters)
            dst.qmp.set_parameters(**plan.parameters)
        genid = {"src": _generation_id(src)}
        dst.qmp.migrate_incoming(f"unix:{sock}")
        rec.migrate_cmd = time.time()
        src.qmp.migrate(f"unix:{sock}")
        deadline = time.monotonic() + plan.migration_timeout_s
        status = "setup"
        while status not in TERMINAL:
            info = src.qmp.query_migrate()
            status = info.get("status", "none")
            rec.samples.append({"t": time.time(), **info})
            src.qmp.poll_events(0.0)
            dst.qmp.poll_events(0.0)
            console.read()
            self._monitor.sample(self._vms)
            if time.monotonic() > deadline and status not in TERMINAL:
                self.log(
                    f"  migration still {status} after {plan.migration_timeout_s} s: cancelling"
                )
                src.qmp.execute("migrate_cancel")
                deadline = float("inf")
            time.sleep(0.1)
        rec.final = src.qmp.query_migrate()
        if genid["src"] is not None:  # with -device vmgenid: the destination's differs
            genid["dst"] = _generation_id(dst)
            self._monitor.vmgenid = genid
        ram = rec.final.get("ram", {})
        self.log(
            f"  migration {status}: total {rec.final.get('total-time')} ms, downtime "
            f"{rec.final.get('downtime')} ms, dirty syncs {ram.get('dirty-sync-count')}"
        )

    def _await_confirmation(
        self,
        rec: RunRecord,
        console: GuestConsole,
        program: GuestProgram,
        seconds: float,
        dst: QemuProcess,
        sites: list[Site],
    ) -> None:
        if rec.final.get("status") != "completed":
            return
        assert dst.qmp is not None
        dst.qmp.wait_event("RESUME", timeout=10.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            new = console.read()
            if any(program.confirmed(line) for line in new):
                # linger briefly so the counter-measures' own output is recorded too
                self._idle(console, min(5.0, max(0.0, deadline - time.monotonic())), sites)
                return
            dst.qmp.poll_events(0.0)
            self._monitor.sample(self._vms)
            time.sleep(0.05)


def _generation_id(vm: QemuProcess) -> str | None:
    """The VM generation ID QEMU gives the guest, or None without a vmgenid device."""
    if vm.qmp is None:
        return None
    try:
        return str(vm.qmp.execute("query-vm-generation-id").get("guid"))
    except QMPError:
        return None


def guest_catalogue(
    cat_a: dict[str, Any], cat_b: dict[str, Any], count: int, exclude: set[str], near: Place
) -> dict[str, Any]:
    """The catalogue the guest carries: landmarks both sites serve, the `count` nearest to `near`.

    Each site's testbed leaves out the server it stands at, so A's catalogue lists B's city and B's
    lists A's; the guest gets only landmarks that answer at both sites. An owner deploys landmarks
    around the jurisdiction it allows, so the guest keeps those nearest to site A; under TCG a
    smaller set also keeps each probing round short. Calibration RTTs are kept for the chosen
    landmarks only.
    """
    in_b = {lm["id"] for lm in cat_b["landmarks"]}
    cands = [lm for lm in cat_a["landmarks"] if lm["id"] in in_b and lm["id"] not in exclude]
    if 0 < count < len(cands):
        cands.sort(key=lambda lm: distance_km(near, Place(lm["id"], "", lm["lat"], lm["lon"])))
        cands = cands[:count]
    keep = {lm["id"] for lm in cands}
    out = dict(cat_a)
    out["landmarks"] = [lm for lm in cat_a["landmarks"] if lm["id"] in keep]
    cal = cat_a.get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("rtts"), list):
        out["calibration"] = {
            **cal,
            "rtts": [r for r in cal["rtts"] if r[0] in keep and r[1] in keep],
        }
    return out


def cleanup_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
