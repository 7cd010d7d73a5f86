"""unmount (real loop mount when root), stop_units, poweroff.

systemd does not run here and cryptsetup is not installed, so ``systemctl`` and ``cryptsetup``
are fake executables first in PATH that record their arguments — which also guarantees that no
test can power the machine off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geoprobe.defend import system
from geoprobe.defend.base import ActionContext, ActionFailed

from .conftest import spec


@pytest.fixture
def shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A bin dir first in PATH with recording fakes of systemctl and cryptsetup."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("systemctl", "cryptsetup"):
        fake = bin_dir / tool
        fake.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
            'if [ -n "$FAKE_FAIL" ]; then echo "Failed: $FAKE_FAIL" >&2; exit 1; fi\n'
        )
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("systemctl") == str(bin_dir / "systemctl")
    yield log


def test_stop_units_calls_systemctl_stop(shims: Path, ctx: Callable[..., ActionContext]) -> None:
    system.run_stop_units(spec("stop_units", units=["db.service", "app@1.service"]), ctx())
    assert shims.read_text().splitlines() == ["systemctl stop -- db.service app@1.service"]


def test_stop_units_failure_carries_stderr(
    shims: Path, ctx: Callable[..., ActionContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "Unit db.service not loaded.")
    with pytest.raises(ActionFailed, match="exited 1: Failed: Unit db.service not loaded."):
        system.run_stop_units(spec("stop_units", units=["db.service"]), ctx())


def test_poweroff_through_fake_systemctl(shims: Path, ctx: Callable[..., ActionContext]) -> None:
    system.run_poweroff(spec("poweroff", force=True), ctx())
    assert shims.read_text().splitlines() == ["systemctl poweroff --force"]


def test_luks_close_after_unmount_and_unmounted_path_is_fine(
    shims: Path, tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    out = system.run_unmount(spec("unmount", paths=[str(tmp_path)], luks=["secret"]), ctx())
    assert shims.read_text().splitlines() == ["cryptsetup close secret"]
    assert "was not mounted" in out.detail


def test_missing_tool_is_reported(
    tmp_path: Path, ctx: Callable[..., ActionContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ActionFailed, match="systemctl not found"):
        system.run_stop_units(spec("stop_units", units=["x.service"]), ctx())


@pytest.fixture
def loop_mount(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a loop mount needs root and mkfs.ext4")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        pytest.skip(f"loop mount not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if system._is_mounted(str(mnt)):
            subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


def test_unmount_real_loop_mount(loop_mount: Path, ctx: Callable[..., ActionContext]) -> None:
    (loop_mount / "data").write_text("secret")
    assert system._is_mounted(str(loop_mount))
    out = system.run_unmount(spec("unmount", paths=[str(loop_mount)]), ctx())
    assert not system._is_mounted(str(loop_mount))
    assert not (loop_mount / "data").exists()
    assert out.data["steps"][0]["returncode"] == 0


def test_unmount_busy_mount_fails_and_says_why(
    loop_mount: Path, ctx: Callable[..., ActionContext]
) -> None:
    with open(loop_mount / "held", "w"):  # an open file keeps the mount busy
        with pytest.raises(ActionFailed, match="umount"):
            system.run_unmount(spec("unmount", paths=[str(loop_mount)]), ctx())
        assert system._is_mounted(str(loop_mount))
