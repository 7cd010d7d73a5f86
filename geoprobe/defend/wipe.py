"""wipe: overwrite a file's bytes with random data, fsync, then unlink it.

Root runs this on trees other users may write to, so every step goes through descriptors: the
tree is walked with directory fds (``openat``/``unlinkat`` with ``O_NOFOLLOW``), each file is
overwritten through an fd whose inode is the one the walk saw, and nothing is ever looked up by
its full path again. A symlink inside the tree is removed, never followed; a directory swapped
for something else mid-walk, a mount point and a planted hard link are skipped and reported, and
any skip makes the action fail. A named path follows the rules of ``safepath.resolve``.

An overwrite in place only destroys the data where the filesystem writes it back to the same
blocks and the device does the same with its cells. Where that does not hold, the action still
overwrites and unlinks but says what it could not guarantee: copy-on-write and log-structured
filesystems (btrfs, zfs, bcachefs, f2fs, nilfs2), overlayfs lower layers, ext3/ext4 with
``data=journal``, flash wear levelling, virtual disks whose image the host may snapshot, swap
for tmpfs, and other hard links to the same inode. The one reliable erase is destroying the key
of encrypted storage (LUKS) — which ``unmount`` with ``luks`` plus wiping the key file gives.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Deadline, Outcome
from geoprobe.defend.safepath import (
    DIR_FLAGS,
    PathRefused,
    Resolved,
    checked_path,
    resolve,
    same_file,
    trusted_owners,
    unsafe_because,
)
from geoprobe.policy import ActionSpec

CHUNK = 1 << 20
COPY_ON_WRITE = {"btrfs", "zfs", "bcachefs", "nilfs2", "f2fs"}
MEMORY_FS = {"tmpfs", "ramfs"}
MAX_DEPTH = 64  # deeper trees are reported, not descended: no key store nests this deep
SHOWN_SKIPS = 5  # skipped entries spelt out in the one-line detail (all are in the data)
FILE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: frozenset[str]
    mount_id: int = -1
    dev: int = -1


def _unescape(s: str) -> str:
    return (
        s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    )


def _dev(major_minor: str) -> int:
    major, _, minor = major_minor.partition(":")
    try:
        return os.makedev(int(major), int(minor))
    except (ValueError, OverflowError):
        return -1


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Parsed mount table; mountinfo has per-mount and superblock options (data=journal lives
    there)."""
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
        mid = int(a[0]) if a[0].isdigit() else -1
        out.append(Mount(_unescape(a[4]), b[0], _unescape(b[1]), frozenset(opts), mid, _dev(a[2])))
    return out


def mount_of(path: str | Path, table: list[Mount] | None = None) -> Mount | None:
    """The mount holding ``path``: the longest mount point that prefixes its real path (last
    wins)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in table if table is not None else mounts():
        mp = m.mountpoint.rstrip("/") or "/"
        inside = real == mp or real.startswith(mp + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")):
            best = m
    return best


def mount_id(fd: int) -> int | None:
    """The mount an open fd lives on (``/proc/self/fdinfo``): tells a bind mount from its parent."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


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
    return mount_caveats(mount_of(path, table), nlink)


def mount_caveats(m: Mount | None, nlink: int = 1) -> list[str]:
    """What an in-place overwrite of a file with ``nlink`` names on mount ``m`` cannot guarantee."""
    notes = []
    if nlink > 1:
        notes.append(
            f"{nlink - 1} other hard link(s) keep the inode: its bytes are overwritten "
            "but those names remain"
        )
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


def _protected_hardlinks() -> bool:
    """With fs.protected_hardlinks, nobody can link a file they could not write themselves."""
    try:
        return Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1"
    except OSError:
        return False


@dataclass
class FileWipe:
    path: str
    target: str | None = None  # the resolved file when a named symlink was followed
    size: int = 0
    passes: int = 0
    removed: bool = False
    absent: bool = False
    fstype: str | None = None
    caveats: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "bytes": self.size,
            "passes": self.passes,
            "removed": self.removed,
            "absent": self.absent,
            "fstype": self.fstype,
            "caveats": self.caveats,
        }
        if self.target is not None:
            out["target"] = self.target
        return out


@dataclass(frozen=True)
class Skipped:
    """An entry left untouched, and why: the result is never plain ok when there is one."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "special file"


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass


class Wiper:
    """One wipe action's walk: what it wiped, removed and skipped, for the audit.

    With ``dry_run`` it walks the same way (read-only) and records what it would do.
    """

    def __init__(self, deadline: Deadline, passes: int = 1, *, dry_run: bool = False) -> None:
        self.deadline = deadline
        self.passes = max(1, passes)
        self.dry_run = dry_run
        self.files: list[FileWipe] = []
        self.symlinks: list[str] = []
        self.skipped: list[Skipped] = []
        self.errors: list[str] = []
        self.followed: dict[str, str] = {}
        self.owners = trusted_owners()
        self.table = mounts()
        self.protected_hardlinks = _protected_hardlinks()
        self._root: tuple[int, int | None] | None = None  # (st_dev, mount id) of the tree

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skipped(path, reason))

    # --- named paths ---------------------------------------------------------------------

    def wipe_path(self, path: str, *, recursive: bool = False) -> None:
        try:
            named = checked_path(path)
        except PathRefused as exc:
            self.errors.append(str(exc))
            return
        try:
            res = resolve(named, self.owners)
        except PathRefused as exc:
            self.skip(named, str(exc))
            return
        except OSError as exc:
            self.skip(named, f"cannot resolve: {exc.strerror or exc}")
            return
        try:
            self._named(res, recursive)
        finally:
            res.close()

    def _named(self, res: Resolved, recursive: bool) -> None:
        target = res.path if res.links else None
        if target is not None:
            self.followed[res.named] = target
        st = res.st
        if st is None:
            if res.link is not None:  # a dangling link: nothing to overwrite, remove the name
                self._remove_named_link(res)
            else:
                self.files.append(FileWipe(res.named, target, absent=True))
            return
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                self.errors.append(
                    f"{res.named}: is a directory (set recursive = true to wipe its files)"
                )
                return
            if self._tree(res) and res.link is not None:
                self._remove_named_link(res)
        elif stat.S_ISREG(st.st_mode):
            wiped = self._file(res.parent_fd, res.name, st, res.named, target, res.parent_safe)
            if wiped and res.link is not None:
                self._remove_named_link(res)
        else:
            self.errors.append(
                f"{res.named}: not a regular file ({_kind(st.st_mode)}), refusing to wipe it"
            )

    def _remove_named_link(self, res: Resolved) -> None:
        assert res.link is not None
        dfd, name, path = res.link
        if self.dry_run:
            self.symlinks.append(path)
            return
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dfd)
                _fsync(dfd)
                self.symlinks.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.skip(path, f"symlink not removed: {exc.strerror or exc}")

    # --- a tree, by descriptors only -----------------------------------------------------

    def _tree(self, res: Resolved) -> bool:
        assert res.st is not None
        try:
            fd = os.open(res.name, DIR_FLAGS, dir_fd=res.parent_fd)
        except OSError as exc:
            self.skip(res.path, self._open_failure(exc, "directory"))
            return False
        try:
            fst = os.fstat(fd)
            if not same_file(fst, res.st):
                self.skip(res.path, "replaced during the wipe by another directory: not entered")
                return False
            if same_file(fst, os.stat("/")):
                self.errors.append(f"{res.named}: resolves to the root directory; refusing")
                return False
            self._root = (fst.st_dev, mount_id(fd))
            before = len(self.skipped)
            self._walk(fd, res.path, 1)
        finally:
            self._root = None
            os.close(fd)
        return self._rmdir(res.parent_fd, res.name, res.path, before)

    def _walk(self, dfd: int, dpath: str, depth: int) -> None:
        try:
            with os.scandir(dfd) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            self.skip(dpath, f"cannot list: {exc.strerror or exc}")
            return
        safe = unsafe_because(os.fstat(dfd), self.owners) is None
        for name in names:
            self.deadline.check(f"wiping {dpath}")
            here = _join(dpath, name)
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                self.skip(here, "vanished during the wipe (renamed or removed by someone else)")
                continue
            except OSError as exc:
                self.skip(here, exc.strerror or str(exc))
                continue
            if stat.S_ISLNK(st.st_mode):
                self._unlink_symlink(dfd, name, here)
            elif stat.S_ISDIR(st.st_mode):
                self._subdir(dfd, name, st, here, depth)
            elif stat.S_ISREG(st.st_mode):
                self._file(dfd, name, st, here, None, safe)
            else:
                self.skip(here, f"not a regular file ({_kind(st.st_mode)}): left in place")

    def _subdir(self, dfd: int, name: str, st: os.stat_result, here: str, depth: int) -> None:
        assert self._root is not None
        if st.st_dev != self._root[0]:
            self.skip(here, "a mount point (another filesystem): not crossed")
            return
        if depth >= MAX_DEPTH:
            self.skip(here, f"deeper than {MAX_DEPTH} levels: not descended")
            return
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            self.skip(here, self._open_failure(exc, "directory"))
            return
        try:
            fst = os.fstat(fd)
            if not same_file(fst, st):
                self.skip(here, "replaced during the wipe by another directory: not entered")
                return
            mnt = mount_id(fd)
            if mnt is not None and self._root[1] is not None and mnt != self._root[1]:
                self.skip(here, "a mount point (bind mount): not crossed")
                return
            before = len(self.skipped)
            self._walk(fd, here, depth + 1)
        finally:
            os.close(fd)
        self._rmdir(dfd, name, here, before)

    def _rmdir(self, dfd: int, name: str, here: str, skips_before: int) -> bool:
        if self.dry_run:
            return True
        try:
            os.rmdir(name, dir_fd=dfd)
        except OSError as exc:
            if len(self.skipped) == skips_before:  # otherwise the skips inside say why
                why = "replaced during the wipe" if exc.errno == errno.ENOTDIR else exc.strerror
                self.skip(here, f"directory kept: {why}")
            return False
        _fsync(dfd)
        return True

    def _unlink_symlink(self, dfd: int, name: str, here: str) -> None:
        if self.dry_run:
            self.symlinks.append(here)
            return
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            self.skip(here, "vanished during the wipe (renamed or removed by someone else)")
            return
        except OSError as exc:  # EISDIR: swapped for a directory since it was seen
            self.skip(here, f"symlink not removed: {exc.strerror or exc}")
            return
        self.symlinks.append(here)

    @staticmethod
    def _open_failure(exc: OSError, kind: str) -> str:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return f"replaced during the wipe: no longer a {kind}, not followed"
        if exc.errno == errno.ENOENT:
            return "vanished during the wipe (renamed or removed by someone else)"
        return exc.strerror or str(exc)

    # --- one file ------------------------------------------------------------------------

    def _file(
        self,
        dfd: int,
        name: str,
        st: os.stat_result,
        here: str,
        target: str | None,
        parent_safe: bool,
    ) -> bool:
        """Overwrite the inode the walk saw, through an fd, then unlink its name in ``dfd``."""
        report = FileWipe(here, target, size=st.st_size)
        if self.dry_run:
            self.files.append(report)
            return True
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            self.skip(here, self._open_failure(exc, "regular file"))
            return False
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or not same_file(fst, st):
                self.skip(here, "replaced during the wipe: not overwritten")
                return False
            if fst.st_nlink > 1 and not parent_safe and not self.protected_hardlinks:
                self.skip(
                    here,
                    f"{fst.st_nlink} names share this inode in a directory others can write "
                    "to: it may be a hard link planted to another file; not overwritten",
                )
                return False
            mnt = mount_id(fd)
            if self._root is not None and None not in (mnt, self._root[1]) and mnt != self._root[1]:
                self.skip(here, "a bind-mounted file: not crossed")
                return False
            m = self._mount(mnt, fst.st_dev, target or here)
            report.fstype = m.fstype if m else None
            report.caveats = mount_caveats(m, fst.st_nlink)
            report.size = fst.st_size
            for _ in range(self.passes):
                offset = 0
                while offset < report.size:
                    self.deadline.check(f"overwriting {target or here} at byte {offset}")
                    n = min(CHUNK, report.size - offset)
                    offset += os.pwrite(fd, os.urandom(n), offset)
                os.fsync(fd)
                report.passes += 1
        except ActionTimeout:
            self.files.append(report)
            raise
        except OSError as exc:  # EIO, ENOSPC on a copy-on-write filesystem: kept, not unlinked
            self.files.append(report)
            self.skip(here, f"overwrite failed, file kept: {exc.strerror or exc}")
            return False
        finally:
            os.close(fd)
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass  # renamed or removed meanwhile: its bytes are overwritten all the same
        except OSError as exc:
            self.files.append(report)
            self.skip(here, f"overwritten but not unlinked: {exc.strerror or exc}")
            return False
        _fsync(dfd)
        report.removed = True
        self.files.append(report)
        return True

    def _mount(self, mnt: int | None, dev: int, path: str) -> Mount | None:
        for m in self.table:
            if mnt is not None and m.mount_id == mnt:
                return m
        for m in self.table:
            if m.dev == dev:
                return m
        return mount_of(path, self.table) if self.table else None

    # --- the result ----------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "files": [r.to_json() for r in self.files],
            "symlinks_removed": list(self.symlinks),
            "skipped": [s.to_json() for s in self.skipped],
        }
        if self.followed:
            out["followed"] = dict(self.followed)
        return out

    def warnings(self) -> list[str]:
        return list(
            dict.fromkeys(f"{r.target or r.path}: {c}" for r in self.files for c in r.caveats)
        )

    def summary(self) -> str:
        done = [r for r in self.files if r.removed]
        parts = [f"wiped {len(done)} file(s), {sum(r.size for r in done)} bytes"]
        if self.followed:
            parts.append("followed " + ", ".join(f"{k} -> {v}" for k, v in self.followed.items()))
        if self.symlinks:
            parts.append(f"removed {len(self.symlinks)} symlink(s) without following them")
        absent = [r.path for r in self.files if r.absent]
        if absent:
            parts.append(f"already absent: {', '.join(absent)}")
        if self.skipped:
            shown = ", ".join(f"{s.path} ({s.reason})" for s in self.skipped[:SHOWN_SKIPS])
            more = len(self.skipped) - SHOWN_SKIPS
            parts.append(
                f"SKIPPED {len(self.skipped)}: {shown}" + (f" and {more} more" if more > 0 else "")
            )
        return "; ".join(parts)


def wipe_file(path: str | Path, deadline: Deadline, passes: int = 1) -> FileWipe:
    """Wipe one named file (a safe named symlink: its target and the link); raise if it could
    not."""
    w = Wiper(deadline, passes)
    w.wipe_path(str(path))
    if w.errors or w.skipped or not w.files and not w.symlinks:
        raise ActionFailed("; ".join([*w.errors, w.summary()]), data=w.data())
    return w.files[0] if w.files else FileWipe(str(path), removed=True)


def plan(spec: ActionSpec, ctx: ActionContext) -> str:
    w = Wiper(ctx.deadline, int(spec.options.get("passes", 1)), dry_run=True)
    recursive = bool(spec.options.get("recursive", False))
    for path in spec.options["paths"]:
        w.wipe_path(path, recursive=recursive)
    parts = [f"{r.path} ({'absent' if r.absent else f'{r.size} bytes'})" for r in w.files]
    parts += [f"{p} (symlink: removed, not followed)" for p in w.symlinks]
    parts += [f"{e} (refused)" for e in w.errors]
    parts += [f"{s.path} (would skip: {s.reason})" for s in w.skipped]
    return f"overwrite with random data x{w.passes}, fsync and unlink: {', '.join(parts)}"


def run(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    w = Wiper(ctx.deadline, int(spec.options.get("passes", 1)))
    recursive = bool(spec.options.get("recursive", False))
    for path in spec.options["paths"]:
        try:
            w.wipe_path(path, recursive=recursive)
        except ActionTimeout as exc:
            exc.data.update(w.data())
            exc.warnings.extend(w.warnings())
            raise
    if w.errors or w.skipped:
        raise ActionFailed(
            "; ".join([*w.errors, w.summary()]), data=w.data(), warnings=w.warnings()
        )
    return Outcome(w.summary(), warnings=w.warnings(), data=w.data())
