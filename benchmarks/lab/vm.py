"""One QEMU process of the lab: a source guest, or an incoming one waiting for a migration.

Both ends of a migration must have the same machine and devices; only the host-side backends (which
namespace, which serial file, which QMP socket) differ, so one function builds both command lines.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import GuestImage
from .netns import Namespace
from .qmp import QMPClient, QMPError

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class MachineSpec:
    image: GuestImage
    run_disk: Path
    memory_mb: int = 512
    smp: int = 1
    machine: str = "pc"  # q35 for devices that need PCI Express (a failover primary)
    accel: str = "tcg"  # KVM hangs early in boot on this machine; keep it selectable for others
    # no_timer_check: on a loaded host the emulated 8254 can miss the kernel's early IO-APIC check,
    # which then panics ("IO-APIC + timer doesn't work!", seen at load ~11 under TCG)
    append: str = "console=ttyS0 quiet panic=-1 no_timer_check"
    # Extra QEMU arguments (devices such as vmgenid or a balloon), the same at both ends: a
    # migration needs identical devices on the source and the destination.
    extra: tuple[str, ...] = ()

    def argv(self, qmp: Path, serial: Path, incoming: bool) -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        argv = [
            QEMU,
            "-machine",
            self.machine,
            "-accel",
            self.accel,
            "-cpu",
            cpu,
            "-m",
            str(self.memory_mb),
            "-smp",
            str(self.smp),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            # threads named after their role ("CPU 0/TCG"), so the host log finds the vCPU's
            "-name",
            "geoprobe-lab,debug-threads=on",
            "-no-reboot",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            self.append,
            "-drive",
            f"file={self.image.root},format=raw,if=virtio,readonly=on",
            "-drive",
            f"file={self.run_disk},format=raw,if=virtio,readonly=on",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
            "-chardev",
            f"file,id=ser0,path={serial}",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
        ]
        argv += list(self.extra)
        if incoming:
            argv += ["-incoming", "defer"]
        return argv


@dataclass
class QemuProcess:
    """A QEMU running inside a site's namespace, with its QMP connection."""

    name: str
    spec: MachineSpec
    ns: Namespace
    workdir: Path
    incoming: bool = False
    proc: subprocess.Popen[bytes] | None = None
    qmp: QMPClient | None = None
    started: float = 0.0
    argv: list[str] = field(default_factory=list)

    @property
    def serial(self) -> Path:
        return self.workdir / f"serial-{self.name}.log"

    @property
    def qmp_path(self) -> Path:
        return self.workdir / f"qmp-{self.name}.sock"

    def start(self) -> QemuProcess:
        self.serial.unlink(missing_ok=True)
        self.serial.touch()
        self.qmp_path.unlink(missing_ok=True)
        self.argv = self.spec.argv(self.qmp_path, self.serial, self.incoming)
        log = (self.workdir / f"qemu-{self.name}.log").open("wb")
        self.started = time.time()
        self.proc = self.ns.popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self.qmp = QMPClient(self.qmp_path).connect(wait=15.0)
        except (QMPError, OSError):
            self.stop()
            raise RuntimeError(
                f"QEMU {self.name} did not start: "
                + (self.workdir / f"qemu-{self.name}.log").read_text()[-2000:]
            )
        self.qmp.set_capabilities(events=True)
        return self

    def vcpu_threads(self) -> list[int]:
        """Thread ids of the vCPUs (QEMU names them "CPU 0/TCG", "CPU 0/KVM", ...)."""
        if self.proc is None:
            return []
        tids = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").glob("*")):
            try:
                if (task / "comm").read_text().startswith("CPU "):
                    tids.append(int(task.name))
            except (OSError, ValueError):
                continue
        return tids

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Quit over QMP, then terminate, then kill: always by this process's own pid."""
        if self.qmp is not None:
            with contextlib.suppress(QMPError, OSError):  # it may be gone already
                self.qmp.execute("quit")
            self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.qmp_path.unlink(missing_ok=True)
