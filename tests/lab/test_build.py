"""Guest-image pieces that run in seconds: module ordering and the per-run disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.lab.build import build_run_disk, module_order, snapshot_source

REPO = Path(__file__).resolve().parents[2]

# The shape of the Debian cloud kernel's modules.dep (deepest dependency last on each line).
MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
""".replace("\\\n", "")


def test_module_order_loads_every_dependency_first_and_once() -> None:
    order = module_order(MODULES_DEP, ("virtio_pci", "virtio_net", "virtio_blk", "ext4"))
    names = [Path(m).stem for m in order]
    assert len(names) == len(set(names)) == 9  # ext4 is built in: silently absent
    pos = {n: i for i, n in enumerate(names)}
    for line in MODULES_DEP.splitlines():
        mod, deps = line.split(":")
        for dep in deps.split():
            assert pos[Path(dep).stem] < pos[Path(mod).stem], (dep, mod)


@pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
    reason="e2fsprogs not installed",
)
def test_run_disk_holds_the_working_tree_and_an_executable_run_sh(tmp_path: Path) -> None:
    img = build_run_disk(
        tmp_path / "run.ext4",
        REPO,
        {"policy.toml": "[jurisdiction]\n", "hook.sh": "#!/bin/sh\n"},
        "#!/bin/sh\necho hi\n",
    )

    def debugfs(req: str) -> str:
        return subprocess.run(
            ["debugfs", "-R", req, str(img)], capture_output=True, text=True, check=True
        ).stdout

    assert debugfs("cat /run.sh") == "#!/bin/sh\necho hi\n"
    assert debugfs("cat /policy.toml") == "[jurisdiction]\n"
    assert "Mode:  0755" in debugfs("stat /hook.sh")
    assert debugfs("cat /geoprobe/__init__.py") == (REPO / "geoprobe" / "__init__.py").read_text()
    assert "__pycache__" in debugfs(
        "ls /geoprobe"
    )  # compiled on the host: the guest's root is read-only


def test_source_snapshot_leaves_out_bytecode_and_its_digest_follows_the_code(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "geoprobe" / "__pycache__").mkdir(parents=True)
    (repo / "geoprobe" / "__init__.py").write_text("X = 1\n")
    (repo / "geoprobe" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    first = snapshot_source(repo, tmp_path / "one")
    assert (tmp_path / "one" / "geoprobe" / "__init__.py").read_text() == "X = 1\n"
    assert not (tmp_path / "one" / "geoprobe" / "__pycache__").exists()
    (repo / "geoprobe" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"other junk")
    assert snapshot_source(repo, tmp_path / "two") == first  # bytecode is not the code
    (repo / "geoprobe" / "__init__.py").write_text("X = 2\n")
    assert snapshot_source(repo, tmp_path / "three") != first


def test_a_build_past_its_deadline_is_a_build_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from benchmarks.lab import build

    monkeypatch.setattr(build, "need_tools", list)
    with pytest.raises(build.BuildError, match="did not finish in the time allowed"):
        build.build_guest(tmp_path / "cache", deadline=time.monotonic() - 1.0)
    assert not (tmp_path / "cache" / "rootfs").exists()  # nothing half-built is taken for a guest


def test_a_timed_out_command_is_killed_with_its_children(tmp_path: Path) -> None:
    import time

    from benchmarks.lab.build import _run

    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        _run(["sh", "-c", script], time.monotonic() + 0.5)
    child = Path(f"/proc/{int(pidfile.read_text())}/stat")
    time.sleep(0.2)
    # the grandchild went with the group: gone, or a zombie until init reaps it
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    with pytest.raises(subprocess.CalledProcessError):
        _run(["sh", "-c", "exit 3"], None)


def test_mounts_under_a_tree_are_found_deepest_first(tmp_path: Path) -> None:
    from benchmarks.lab.build import mounts_under

    root = tmp_path / "rootfs.partial"
    mounts = (
        f"proc {root}/proc proc rw 0 0\n"
        f"sysfs {root}/proc/sys/fs/binfmt_misc binfmt_misc rw 0 0\n"
        f"tmpfs {tmp_path}/rootfs.partial2 tmpfs rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    assert mounts_under(root, mounts) == [root / "proc/sys/fs/binfmt_misc", root / "proc"]
