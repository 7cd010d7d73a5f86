"""wipe: real files on the real filesystem, checked through names and descriptors kept aside."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from geoprobe.defend import wipe
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Deadline

from .conftest import spec

SECRET = b"-----BEGIN PRIVATE KEY-----\n" + bytes(range(256)) * 40


def _mostly_different(a: bytes, b: bytes) -> bool:
    """Random bytes match a fixed pattern at ~1/256 of positions; a failed overwrite at all."""
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b, strict=True)) < len(a) * 0.02


def test_overwrites_before_unlink_seen_through_hard_link_and_open_fd(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(SECRET)
    link = tmp_path / "backup-name"
    os.link(key, link)
    fd = os.open(key, os.O_RDONLY)
    try:
        out = wipe.run(spec("wipe", paths=[str(key)]), ctx())
        assert not key.exists()
        through_fd = os.pread(fd, len(SECRET) + 10, 0)
    finally:
        os.close(fd)
    assert len(through_fd) == len(SECRET)
    assert _mostly_different(through_fd, SECRET)
    assert link.read_bytes() == through_fd  # same inode, other name survives: overwritten content
    assert any("hard link" in w for w in out.warnings)
    (f,) = out.data["files"]
    assert f["removed"] and f["bytes"] == len(SECRET) and f["passes"] == 1


def test_multiple_passes_and_absent_files(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    a = tmp_path / "a.key"
    a.write_bytes(b"x" * 5000)
    out = wipe.run(spec("wipe", paths=[str(a), str(tmp_path / "gone.key")], passes=3), ctx())
    files = {Path(f["path"]).name: f for f in out.data["files"]}
    assert files["a.key"]["passes"] == 3 and files["a.key"]["removed"]
    assert files["gone.key"]["absent"] and "already absent" in out.detail
    assert not a.exists()


def test_expired_deadline_never_unlinks_unwiped_file(tmp_path: Path) -> None:
    key = tmp_path / "big.key"
    key.write_bytes(SECRET)
    with pytest.raises(ActionTimeout):
        wipe.wipe_file(key, Deadline.after(0.0))
    assert key.read_bytes() == SECRET  # still there: better kept than "deleted" unwiped


def test_recursive_wipe_does_not_follow_symlinks_out(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    keys = tmp_path / "keys"
    (keys / "sub").mkdir(parents=True)
    (keys / "one").write_bytes(b"1" * 100)
    (keys / "sub" / "two").write_bytes(b"2" * 100)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    (keys / "escape").symlink_to(outside)
    out = wipe.run(spec("wipe", paths=[str(keys)], recursive=True), ctx())
    assert not keys.exists()
    assert outside.read_bytes() == b"keep me"
    assert out.detail.startswith("wiped 3 file(s)")


def test_directory_without_recursive_and_fifo_fail_but_other_paths_are_wiped(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    good = tmp_path / "good.key"
    good.write_bytes(b"k" * 10)
    with pytest.raises(ActionFailed) as exc:
        wipe.run(spec("wipe", paths=[str(d), str(fifo), str(good)]), ctx())
    assert "is a directory" in str(exc.value) and "not a regular file" in str(exc.value)
    assert not good.exists() and fifo.exists() and d.exists()


def test_named_symlink_wipes_target_and_both_names(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    target = tmp_path / "real.key"
    target.write_bytes(SECRET)
    link = tmp_path / "current.key"
    link.symlink_to(target)
    wipe.run(spec("wipe", paths=[str(link)]), ctx())
    assert not link.is_symlink() and not target.exists()


MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,data=journal
30 22 0:40 / /srv rw,relatime shared:2 - btrfs /dev/sdb1 rw,space_cache
31 22 0:41 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u
32 22 0:42 / /run/keys rw,nosuid - tmpfs tmpfs rw,size=1024k
33 30 0:43 / /srv/with\\040space rw - xfs /dev/sdc rw
"""


def test_caveats_from_mount_table(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    table = wipe.mounts(str(mi))
    assert [m.fstype for m in table] == ["ext4", "btrfs", "overlay", "tmpfs", "xfs"]
    assert table[4].mountpoint == "/srv/with space"
    assert wipe.mount_of("/srv/a/b.key", table).fstype == "btrfs"  # type: ignore[union-attr]
    assert wipe.mount_of("/srv/with space/k", table).fstype == "xfs"  # type: ignore[union-attr]
    assert wipe.mount_of("/srvx/k", table).fstype == "ext4"  # type: ignore[union-attr]

    def joined(path: str, nlink: int = 1) -> str:
        return " | ".join(wipe.caveats(path, nlink, table))

    assert "copy-on-write" in joined("/srv/k")
    assert "overlayfs" in joined("/var/lib/docker/overlay2/x/merged/etc/k")
    assert "data=journal" in joined("/etc/k")
    assert "reflink" in joined("/srv/with space/k")
    assert "copy-on-write" not in joined("/run/keys/k") and "journal" not in joined("/run/keys/k")
    assert "2 other hard link" in joined("/run/keys/k", nlink=3)
