"""Build the lab's guest once (Debian bookworm from Debian's packages) and cache it.

The guest is three files: the Debian cloud kernel, a tiny initramfs assembled here (busybox plus the
virtio and ext4 modules, so TCG boots to userspace in about two seconds), and a read-only ext4 root
image. Both QEMU processes of a migration open the same image path; nothing writes it, so sharing it
needs no storage migration. What changes per run (the geoprobe working tree, the catalogue, the
policy, the guest command) goes on a small second "run disk" rebuilt for every run, so code changes
never need a rebuild of the root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SUITE = "bookworm"
MIRROR = os.environ.get("GEOPROBE_LAB_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "python3",
    "python3-numpy",
    "python3-scipy",
    "python3-click",
    "python3-shapely",
    "python3-cryptography",
    "python3-rich",
    "python3-platformdirs",
    "python3-scapy",
    "python3-tomli-w",
    "linux-image-cloud-amd64",
    "busybox-static",
    "iproute2",
    "kmod",
    "procps",
    # The LUKS scenario (benchmarks/lab/luks.py): cryptsetup and dmsetup drive dm-crypt on a loop
    # file; clevis and clevis-luks bind the volume through geoprobe's clevis pin.
    "cryptsetup-bin",
    "dmsetup",
    "clevis",
    "clevis-luks",
    # The units scenario (benchmarks/lab/units.py) boots systemd as PID 1 to start the shipped
    # units (init=/sbin/lab-systemd-init); every other scenario keeps /sbin/lab-init.
    "systemd",
)
# What bookworm lacks at the version geoprobe needs: shapely 1.8 (geoprobe uses the 2.x API),
# maxminddb 2.2 (geoprobe needs the decoding limits of 3.2), geoip2 4.6 and prometheus_client 0.16.
# Installed from PyPI wheels into the guest's /usr/local, which precedes Debian's dist-packages.
# geoip2's web-service extras (aiohttp, requests) are left out: geoprobe reads local files only.
PYPI_WHEELS = (
    "shapely>=2.0,<2.1",
    "maxminddb>=3.2",
    "geoip2>=4.8",
    "prometheus_client>=0.20",
)
# Load order for the cloud kernel, which builds virtio, virtio-blk and ext4 as modules.
# Dependencies are resolved from modules.dep; these are the roots.
MODULE_ROOTS = ("virtio_pci", "virtio_net", "virtio_blk", "ext4")

INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 -o ro /dev/vda /newroot || { echo "LAB-PANIC: cannot mount /dev/vda"; poweroff -f; }
init=/sbin/lab-init
for arg in $(cat /proc/cmdline); do case "$arg" in init=*) init="${arg#init=}";; esac; done
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""

# PID 1 inside the guest. The root stays read-only; everything writable is tmpfs.
LAB_INIT = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp/home LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
for d in /tmp /run /var/tmp /var/lib /var/log; do mount -t tmpfs -o mode=1777 tmpfs $d; done
mkdir -p /tmp/home
mount -t ext4 -o ro /dev/vdb /lab 2>/dev/null || echo "LAB-WARN: no run disk"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "LAB-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -x /lab/run.sh ]; then /lab/run.sh; rc=$?; else echo "LAB-WARN: no /lab/run.sh"; rc=127; fi
echo "LAB-EXIT rc=$rc"
sync
busybox poweroff -f
"""


# PID 1 of the units scenario (kernel append init=/sbin/lab-systemd-init): prepares what systemd
# needs on the read-only root, then becomes systemd. /etc and /var become tmpfs copies of the root's
# (systemctl enable, daemon-reload, StateDirectory= and CacheDirectory= write there), the run disk
# goes on /lab and eth0 is configured as lab-init does it. lab-run.service runs /lab/run.sh on the
# console once multi-user.target is reached; the gettys and the first-boot prompt are masked.
LAB_SYSTEMD_INIT = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for d in /etc /var; do
    mount -t tmpfs -o mode=0755 tmpfs /mnt && cp -a "$d/." /mnt/ && mount -n --move /mnt "$d"
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t ext4 -o ro /dev/vdb /lab 2>/dev/null || echo "LAB-WARN: no run disk"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
u=/etc/systemd/system
for m in serial-getty@ttyS0 getty@tty1 console-getty systemd-firstboot; do
    ln -sf /dev/null "$u/$m.service"
done
printf '%s\n' '[Unit]' 'Description=geoprobe lab: /lab/run.sh on the console' \
    'After=multi-user.target' '[Service]' 'Type=simple' 'ExecStart=/lab/run.sh' \
    'StandardOutput=tty' 'StandardError=tty' > "$u/lab-run.service"
mkdir -p "$u/multi-user.target.wants"
ln -sf "$u/lab-run.service" "$u/multi-user.target.wants/lab-run.service"
echo "LAB-SYSTEMD-EXEC uptime=$(cut -d' ' -f1 /proc/uptime)"
exec /lib/systemd/systemd
"""


class BuildError(RuntimeError):
    """The guest could not be built here (no mirror, no PyPI, or not within the time allowed)."""


def _timeout(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (time.monotonic), for subprocess.run; None: no limit."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise subprocess.TimeoutExpired("guest build", 0)
    return left


def _run(cmd: list[str], deadline: float | None, **kw: object) -> None:
    """subprocess.run(check=True) bounded by `deadline`; on time-out the command's whole process
    group is killed (debootstrap and apt leave wget and dpkg children behind otherwise)."""
    timeout = _timeout(deadline)  # raises before anything starts when the time is already up
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if rc:
        raise subprocess.CalledProcessError(rc, cmd)


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    root: Path

    def exists(self) -> bool:
        return self.kernel.is_file() and self.initrd.is_file() and self.root.is_file()


def default_cache() -> Path:
    env = os.environ.get("GEOPROBE_LAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "geoprobe-lab"


def _key() -> str:
    """Changes whenever what goes into the image changes, so a stale cache is never reused."""
    h = hashlib.sha256(
        "\n".join(
            (SUITE, *PACKAGES, *PYPI_WHEELS, INITRAMFS_INIT, LAB_INIT, LAB_SYSTEMD_INIT)
        ).encode()
    )
    return h.hexdigest()[:12]


def image_paths(cache: Path) -> GuestImage:
    d = cache / f"guest-{_key()}"
    return GuestImage(kernel=d / "vmlinuz", initrd=d / "initrd.cpio", root=d / "root.ext4")


def need_tools() -> list[str]:
    """Host tools the build and the runs need; the lab says which are missing instead of failing
    later."""
    tools = ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "cpio", "ip")
    return [t for t in tools if shutil.which(t) is None]


def mounts_under(path: Path, mounts: str | None = None) -> list[Path]:
    """Mount points inside `path` (from /proc/mounts), deepest first: the order to unmount them."""
    if mounts is None:
        mounts = Path("/proc/mounts").read_text()
    root = path.resolve()
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def discard_tree(path: Path) -> None:
    """Remove a (partial) root tree, unmounting first what an interrupted debootstrap or chroot left
    mounted in it (/proc, /sys, /dev): rmtree through a live mount would reach the host's own
    files."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    left = mounts_under(path)
    if left:
        raise BuildError(f"{path}: cannot unmount {', '.join(map(str, left))}; remove it by hand")
    shutil.rmtree(path, ignore_errors=True)


def missing_packages(installed: str) -> list[str]:
    """PACKAGES not in a root's `.lab-complete` list (the packages it was built with)."""
    have = set(installed.split())
    return [p for p in PACKAGES if p not in have]


def _apt_install(
    root: Path, packages: Sequence[str], out: IO[bytes], deadline: float | None
) -> None:
    """apt-get install inside the chroot (with /proc mounted), then drop apt's lists and caches:
    they are half the tree and the guest never installs anything."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", INITRD="No")
    (root / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *packages],
            ["apt-get", "clean"],
        ):
            _run(
                ["chroot", str(root), *cmd], deadline, stdout=out, stderr=subprocess.STDOUT, env=env
            )
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)


def debootstrap(cache: Path, log: Path, deadline: float | None = None) -> Path:
    """Debootstrap the root once; a partial tree from an interrupted run is discarded."""
    rootfs = cache / "rootfs"
    marker = rootfs / ".lab-complete"
    if (rootfs / "usr" / "bin" / "python3").exists() and marker.exists():
        missing = missing_packages(marker.read_text())
        if missing:  # a root from an older recipe: add what it lacks instead of starting over
            with log.open("wb") as out:
                _apt_install(rootfs, missing, out, deadline)
            marker.write_text(" ".join(PACKAGES) + "\n")
        return rootfs
    partial = cache / "rootfs.partial"
    discard_tree(partial)
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", INITRD="No")
    with log.open("wb") as out:
        # debootstrap alone does not resolve virtual packages (python3-cryptography needs one),
        # so it lays the minimal base and apt inside the chroot installs the rest.
        _run(
            ["debootstrap", "--variant=minbase", SUITE, str(partial), MIRROR],
            deadline,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        (partial / "etc" / "apt" / "sources.list").write_text(f"deb {MIRROR} {SUITE} main\n")
        _apt_install(partial, PACKAGES, out, deadline)
    for point in mounts_under(partial):  # debootstrap's own, if it was stopped before unmounting
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    (partial / ".lab-complete").write_text(" ".join(PACKAGES) + "\n")
    discard_tree(rootfs)
    partial.rename(rootfs)
    return rootfs


def add_wheels(rootfs: Path, log: Path, deadline: float | None = None) -> None:
    """Install PYPI_WHEELS (binary wheels for the guest's CPython 3.11) into the guest root,
    once."""
    marker = rootfs / ".lab-wheels"
    if marker.exists() and marker.read_text() == "\n".join(PYPI_WHEELS):
        return
    target = rootfs / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    with tempfile.TemporaryDirectory() as tmp, log.open("ab") as out:
        common = [
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux2014_x86_64",
            "--no-deps",
        ]
        _run(
            [sys.executable, "-m", "pip", "download", "-q", *common, "-d", tmp, *PYPI_WHEELS],
            deadline,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                *common,
                "--upgrade",
                "--target",
                str(target),
                *sorted(str(p) for p in Path(tmp).glob("*.whl")),
            ],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(target)], check=False, capture_output=True
    )
    marker.write_text("\n".join(PYPI_WHEELS))


def _kernel_version(rootfs: Path) -> str:
    versions = sorted(p.name for p in (rootfs / "lib" / "modules").iterdir() if p.is_dir())
    if not versions:
        raise RuntimeError(f"{rootfs}: no kernel installed (linux-image-cloud-amd64 missing?)")
    return versions[-1]


def module_order(modules_dep: str, roots: tuple[str, ...]) -> list[str]:
    """Modules (paths relative to the version dir) in dependency order for insmod, each once."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        name = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[name] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(deps.get(mod, [])):  # modules.dep lists the deepest dependency last
            visit(dep)
        order.append(mod)

    for root in roots:
        if root in by_name:  # absent when built into the kernel
            visit(by_name[root])
    return order


def build_initramfs(rootfs: Path, out: Path) -> None:
    version = _kernel_version(rootfs)
    moddir = rootfs / "lib" / "modules" / version
    order = module_order((moddir / "modules.dep").read_text(), MODULE_ROOTS)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "bin").mkdir()
        shutil.copy2(rootfs / "bin" / "busybox", t / "bin" / "busybox")
        for mod in order:
            dest = t / "lib" / "modules" / mod
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = moddir / mod
            if src.suffix == ".xz":
                subprocess.run(
                    ["xz", "-dc", str(src)], check=True, stdout=dest.with_suffix("").open("wb")
                )
                mod = mod[:-3]
            else:
                shutil.copy2(src, dest)
        (t / "modules.order").write_text("\n".join(m.removesuffix(".xz") for m in order) + "\n")
        (t / "init").write_text(INITRAMFS_INIT)
        (t / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=t, check=True, capture_output=True).stdout
        with out.open("wb") as f:
            subprocess.run(
                ["cpio", "-o", "-H", "newc", "--quiet"], cwd=t, input=files, stdout=f, check=True
            )


def make_ext4(src: Path, out: Path, size_mb: int | None = None, label: str = "lab") -> None:
    """An ext4 image holding `src`, sized to fit it (mkfs.ext4 -d needs no loop mount or root)."""
    if size_mb is None:
        used = int(
            subprocess.run(
                ["du", "-sm", str(src)], check=True, capture_output=True, text=True
            ).stdout.split()[0]
        )
        size_mb = int(used * 1.25) + 64
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-O", "^has_journal", "-d", str(src), str(out)],
        check=True,
        capture_output=True,
    )


def build_guest(
    cache: Path | None = None, rebuild: bool = False, deadline: float | None = None
) -> GuestImage:
    """The cached guest image, built on first use (debootstrap takes minutes, the rest seconds).

    `deadline` (time.monotonic) bounds the downloads, so CI can skip instead of hanging on a slow
    mirror; a failed or late build raises BuildError naming the log. An interrupted build resumes
    cleanly: debootstrap restarts from scratch, the rest is redone.
    """
    cache = cache or default_cache()
    img = image_paths(cache)
    if img.exists() and not rebuild:
        return img
    missing = need_tools()
    if missing:
        raise BuildError(
            "missing host tools: "
            + ", ".join(missing)
            + " (apt-get install qemu-system-x86 debootstrap e2fsprogs cpio iproute2)"
        )
    log = cache / "debootstrap.log"
    try:
        rootfs = debootstrap(cache, log, deadline)
        add_wheels(rootfs, log, deadline)
    except subprocess.TimeoutExpired as exc:
        for point in mounts_under(cache):  # a killed debootstrap leaves /proc mounted in its target
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
        cmd = " ".join(map(str, exc.cmd)) if isinstance(exc.cmd, list) else str(exc.cmd)
        raise BuildError(
            f"guest build did not finish in the time allowed (stopped in: {cmd[:60]}); "
            f"`benchmarks/lab/run --build-only` (no time limit) fills the cache; see {log}"
        ) from exc
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise BuildError(
            f"guest build failed: {' '.join(map(str, exc.cmd))[:80]} exited "
            f"{exc.returncode}; see {log}: " + " / ".join(tail)
        ) from exc
    (rootfs / "sbin" / "lab-init").write_text(LAB_INIT)
    (rootfs / "sbin" / "lab-init").chmod(0o755)
    (rootfs / "sbin" / "lab-systemd-init").write_text(LAB_SYSTEMD_INIT)
    (rootfs / "sbin" / "lab-systemd-init").chmod(0o755)
    (rootfs / "etc" / "hostname").write_text("geoprobe-guest\n")
    (rootfs / "lab").mkdir(exist_ok=True)  # the run disk's mount point (the root is read-only)
    for old in cache.glob("guest-*"):  # images of an older recipe: 2 GB each
        if old != img.kernel.parent:
            shutil.rmtree(old)
    img.kernel.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(rootfs / "boot" / f"vmlinuz-{_kernel_version(rootfs)}", img.kernel)
    build_initramfs(rootfs, img.initrd)
    make_ext4(rootfs, img.root, label="labroot")
    return img


def snapshot_source(repo: Path, dest: Path) -> str:
    """Copy the geoprobe package once per lab session; return a digest of what was copied.

    Every run's guest and both sites' testbeds use this copy, so a full run (40 minutes) measures
    one version of the code even while the working tree is being edited.
    """
    shutil.copytree(
        repo / "geoprobe", dest / "geoprobe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    h = hashlib.sha256()
    for f in sorted(p for p in (dest / "geoprobe").rglob("*") if p.is_file()):
        h.update(str(f.relative_to(dest)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def build_run_disk(out: Path, repo: Path, files: dict[str, str | bytes], run_sh: str) -> Path:
    """The per-run disk: the geoprobe package from the working tree, extra files, and
    /lab/run.sh."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shutil.copytree(
            repo / "geoprobe", t / "geoprobe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        for name, content in files.items():
            p = t / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            if name.endswith((".sh", ".py")) or name.startswith("bin/"):
                p.chmod(0o755)
            elif name.startswith("keys/"):  # private keys: geoprobe refuses them readable by others
                p.chmod(0o600)
        # The guest's root is read-only: compile here (same Python 3.11) so imports don't recompile.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(t)], check=False, capture_output=True
        )
        (t / "run.sh").write_text(run_sh)
        (t / "run.sh").chmod(0o755)
        make_ext4(t, out, label="labrun")
    return out
