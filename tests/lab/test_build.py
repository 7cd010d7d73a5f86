"""Guest-image pieces that run in seconds: module ordering and the per-run disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.lab.build import build_run_disk, module_order

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



@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                    reason="e2fsprogs not installed")
def test_run_disk_holds_the_working_tree_and_an_executable_run_sh(tmp_path: Path) -> None:
    img = build_run_disk(tmp_path / "run.ext4", REPO, {"policy.toml": "[jurisdiction]\n",
                                                       "hook.sh": "#!/bin/sh\n"}, "#!/bin/sh\necho hi\n")

    def debugfs(req: str) -> str:
        return subprocess.run(["debugfs", "-R", req, str(img)], capture_output=True, text=True,
                              check=True).stdout

    assert debugfs("cat /run.sh") == "#!/bin/sh\necho hi\n"
    assert debugfs("cat /policy.toml") == "[jurisdiction]\n"
    assert "Mode:  0755" in debugfs("stat /hook.sh")
    assert debugfs("cat /geoprobe/__init__.py") == (REPO / "geoprobe" / "__init__.py").read_text()
    assert "__pycache__" in debugfs("ls /geoprobe")  # compiled on the host: the guest's root is read-only
