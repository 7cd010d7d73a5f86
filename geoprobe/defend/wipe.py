"""wipe: overwrite a file's bytes with random data, fsync, then unlink it.

An overwrite in place only destroys the data where the filesystem writes it back to the same
blocks and the device does the same with its cells. Where that does not hold, the action still
overwrites and unlinks but says what it could not guarantee: copy-on-write and log-structured
filesystems (btrfs, zfs, bcachefs, f2fs, nilfs2), overlayfs lower layers, ext3/ext4 with
``data=journal``, flash wear levelling, virtual disks whose image the host may snapshot, swap
for tmpfs, and other hard links to the same inode. The one reliable erase is destroying the key
of encrypted storage (LUKS) — which ``unmount`` with ``luks`` plus wiping the key file gives.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Deadline, Outcome
from geoprobe.policy import ActionSpec

CHUNK = 1 << 20
COPY_ON_WRITE = {"btrfs", "zfs", "bcachefs", "nilfs2", "f2fs"}
MEMORY_FS = {"tmpfs", "ramfs"}


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: frozenset[str]


def _unescape(s: str) -> str:
    return (
        s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    )


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Parsed mount table; mountinfo has per-mount and superblock options (data=journal lives there)."""
    out: list[Mount] = []
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if len(a) < 6 or len(b) < 2:
            continue
        opts = set(a[5].split(","))
        if len(b) >= 3:
            opts |= set(b[2].split(","))
        out.append(Mount(_unescape(a[4]), b[0], _unescape(b[1]), frozenset(opts)))
    return out


def mount_of(path: str | Path, table: list[Mount] | None = None) -> Mount | None:
    """The mount holding ``path``: the longest mount point that prefixes its real path (last wins)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in table if table is not None else mounts():
        mp = m.mountpoint.rstrip("/") or "/"
        inside = real == mp or real.startswith(mp + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")):
            best = m
    return best


def _block_device(source: str) -> Path | None:
    if not source.startswith("/dev/"):
        return None
    try:
        name = Path(os.path.realpath(source)).name
    except OSError:
        return None
    sys_dev = Path("/sys/class/block") / name
    if not sys_dev.exists():
        return None
    # A partition's queue/ lives on its parent disk.
    return sys_dev if (sys_dev / "queue").exists() else sys_dev.resolve().parent


def _swap_active() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def caveats(path: str | Path, nlink: int = 1, table: list[Mount] | None = None) -> list[str]:
    """What an in-place overwrite of ``path`` cannot guarantee on this system."""
    notes = []
    if nlink > 1:
        notes.append(
            f"{nlink - 1} other hard link(s) keep the inode: its bytes are overwritten "
            "but those names remain"
        )
    m = mount_of(path, table)
    if m is None:
        notes.append("filesystem unknown (no mount table): cannot tell copy-on-write or journaling")
        return notes
    fs = m.fstype
    if fs in COPY_ON_WRITE:
        notes.append(
            f"{fs} is copy-on-write/log-structured: the overwrite goes to new blocks and "
            "the old ones (and any snapshot) may keep the data"
        )
    elif fs == "overlay":
        notes.append(
            "overlayfs: if the file came from a lower layer, the overwrite copies it up "
            "and the lower layer keeps the original"
        )
    elif fs == "xfs":
        notes.append(
            "xfs: extents shared by a reflink copy are copied on write, so such a copy "
            "would keep the data"
        )
    if fs in ("ext3", "ext4") and "data=journal" in m.options:
        notes.append(f"{fs} mounted data=journal: the journal may still hold the file's data")
    if fs in MEMORY_FS:
        if _swap_active():
            notes.append(f"{fs} with swap active: pages may have been swapped out and remain there")
        return notes
    dev = _block_device(m.source)
    if dev is not None:
        rot = dev / "queue" / "rotational"
        try:
            if rot.read_text().strip() == "0":
                notes.append(
                    f"{dev.name} is flash storage: wear levelling remaps writes, so old "
                    "cells may keep the data (destroy the key of encrypted storage instead)"
                )
        except OSError:
            pass
        if dev.name.startswith(("vd", "xvd")) or "virtio" in os.path.realpath(dev / "device"):
            notes.append(
                f"{dev.name} is a virtual disk: the host's image, snapshots or caches may "
                "keep copies the guest cannot reach"
            )
    return notes


@dataclass
class FileWipe:
    path: str
    size: int = 0
    passes: int = 0
    removed: bool = False
    absent: bool = False
    fstype: str | None = None
    caveats: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.size,
            "passes": self.passes,
            "removed": self.removed,
            "absent": self.absent,
            "fstype": self.fstype,
            "caveats": self.caveats,
        }


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wipe_file(
    path: str | Path, deadline: Deadline, passes: int = 1, *, follow_symlinks: bool = True
) -> FileWipe:
    """Overwrite every byte with random data ``passes`` times, fsync each pass, unlink, fsync dir.

    A named symlink's target is wiped and both names are removed; inside a recursive wipe a
    symlink is only unlinked (it could point anywhere). A non-regular file is refused.
    """
    p = str(path)
    report = FileWipe(p)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        report.absent = True
        return report
    target = p
    if stat.S_ISLNK(st.st_mode) and not follow_symlinks:
        os.unlink(p)
        report.removed = True
        return report
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(p)
        try:
            st = os.stat(target)
        except FileNotFoundError:  # dangling link: nothing to overwrite, remove the name
            os.unlink(p)
            report.removed = True
            return report
    if not stat.S_ISREG(st.st_mode):
        raise ActionFailed(f"{p}: not a regular file, refusing to wipe it")
    m = mount_of(target)
    report.fstype = m.fstype if m else None
    report.caveats = caveats(target, st.st_nlink)
    report.size = st.st_size
    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for _ in range(max(1, passes)):
            offset = 0
            while offset < report.size:
                deadline.check(f"overwriting {target} at byte {offset}")
                n = min(CHUNK, report.size - offset)
                written = os.pwrite(fd, os.urandom(n), offset)
                offset += written
            os.fsync(fd)
            report.passes += 1
    finally:
        os.close(fd)
    for name in dict.fromkeys([target, p]):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        _fsync_dir(os.path.dirname(name) or ".")
    report.removed = True
    return report


def _expand(path: str, recursive: bool) -> list[str]:
    if recursive and os.path.isdir(path) and not os.path.islink(path):
        files: list[str] = []
        for root, _dirs, names in os.walk(path):
            files.extend(os.path.join(root, n) for n in sorted(names))
        return files
    return [path]


def _remove_dirs(path: str) -> None:
    for root, dirs, _names in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def plan(spec: ActionSpec, ctx: ActionContext) -> str:
    parts = []
    for path in spec.options["paths"]:
        for f in _expand(path, bool(spec.options.get("recursive", False))):
            try:
                parts.append(f"{f} ({os.stat(f).st_size} bytes)")
            except OSError:
                parts.append(f"{f} (absent)")
    passes = int(spec.options.get("passes", 1))
    return f"overwrite with random data x{passes}, fsync and unlink: {', '.join(parts)}"


def run(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    passes = int(spec.options.get("passes", 1))
    recursive = bool(spec.options.get("recursive", False))
    reports: list[FileWipe] = []
    errors: list[str] = []
    for path in spec.options["paths"]:
        if os.path.isdir(path) and not os.path.islink(path) and not recursive:
            errors.append(f"{path}: is a directory (set recursive = true to wipe its files)")
            continue
        for f in _expand(path, recursive):
            try:
                reports.append(wipe_file(f, ctx.deadline, passes, follow_symlinks=f == path))
            except ActionTimeout as exc:
                exc.data["files"] = [r.to_json() for r in reports]
                raise
            except ActionFailed as exc:
                errors.append(str(exc))
            except OSError as exc:
                errors.append(f"{f}: {exc.strerror or exc}")
        if recursive and os.path.isdir(path):
            _remove_dirs(path)
    warnings = list(dict.fromkeys(f"{r.path}: {c}" for r in reports for c in r.caveats))
    data = {"files": [r.to_json() for r in reports]}
    if errors:
        raise ActionFailed("; ".join(errors), data=data, warnings=warnings)
    done = [r for r in reports if r.removed]
    absent = [r.path for r in reports if r.absent]
    detail = f"wiped {len(done)} file(s), {sum(r.size for r in done)} bytes"
    if absent:
        detail += f"; already absent: {', '.join(absent)}"
    return Outcome(detail, warnings=warnings, data=data)
