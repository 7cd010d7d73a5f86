"""Paths a destructive action may touch, checked so that nobody else can redirect the action.

Two rules, one for the text and one for the filesystem:

- ``checked_path`` is the lexical rule the policy loader applies and the run applies again:
  absolute, no NUL, normalised, never the root directory in any spelling (``/.``, ``//``,
  ``/tmp/..``).
- ``resolve`` walks a path one component at a time through directory descriptors (``openat``
  with ``O_NOFOLLOW``), so a component swapped for a symlink after it was checked is never
  re-resolved. A symlink on the way is followed only when nobody but root or the invoking user
  could have planted or redirected it: the link and every directory on the way, before and after
  it, are owned by one of them and writable by nobody else (a sticky world-writable directory
  such as ``/tmp`` does not count as safe: anyone may create names in it).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field

PATH_MAX = 4095  # bytes, as the kernel counts them without the final NUL
NAME_MAX = 255
MAX_LINKS = 40  # the kernel's own limit on symlinks in one lookup

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class PathRefused(ValueError):
    """A path the defence will not act on; the message says why in one line."""


def checked_path(path: object) -> str:
    """The normalised absolute path, or PathRefused saying what is wrong with it.

    ``..`` is resolved lexically, as written: what the owner wrote is what gets checked and
    what the run walks.
    """
    if not isinstance(path, str):
        raise PathRefused("must be a string")
    if "\0" in path:
        raise PathRefused(f"{path!r} contains a NUL byte")
    if not path.startswith("/"):
        raise PathRefused(f"must hold absolute paths, not {path!r}")
    try:
        size = len(os.fsencode(path))
    except UnicodeError:
        raise PathRefused(f"{path!r} cannot be encoded as a file name") from None
    if size > PATH_MAX:
        raise PathRefused(f"path longer than {PATH_MAX} bytes")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        if len(os.fsencode(comp)) > NAME_MAX:
            raise PathRefused(f"a component of {path!r} is longer than {NAME_MAX} bytes")
        parts.append(comp)
    if not parts:
        raise PathRefused(f"{path!r} is the root directory; refusing to act on '/'")
    return "/" + "/".join(parts)


def trusted_owners() -> frozenset[int]:
    """Who may own what a followed symlink goes through: root and the user running the action."""
    return frozenset({0, os.geteuid()})


def unsafe_because(st: os.stat_result, owners: frozenset[int]) -> str | None:
    """Why someone other than ``owners`` could change this directory, or None if nobody can."""
    if st.st_uid not in owners:
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        sticky = " (sticky does not help: anyone may create names in it)"
        return "writable by group or others" + (sticky if st.st_mode & stat.S_ISVTX else "")
    return None


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


@dataclass
class Resolved:
    """Where a named path ended up, held open: the directory holding the final name, by fd.

    ``st`` is None when the path does not exist. ``link`` is the named path's own final
    component when it was a symlink that was followed (its directory fd and name), so the
    caller can remove that name too. The caller owns the descriptors: call ``close``.
    """

    named: str
    path: str
    parent_fd: int
    name: str
    st: os.stat_result | None
    parent_safe: bool
    links: list[str] = field(default_factory=list)
    link: tuple[int, str, str] | None = None  # (dir fd, name, path) of the named symlink

    def close(self) -> None:
        os.close(self.parent_fd)
        if self.link is not None:
            os.close(self.link[0])
            self.link = None


def _link_components(target: str, here: str) -> list[str]:
    comps = [c for c in target.split("/") if c not in ("", ".")]
    if not comps:
        raise PathRefused(f"symlink {here} -> {target!r} names the root or its own directory")
    if comps[-1] == "..":
        raise PathRefused(f"symlink {here} -> {target!r} ends in '..'")
    return comps


def resolve(path: str, owners: frozenset[int] | None = None) -> Resolved:
    """Open the directory holding ``path``'s final component, checking every step by descriptor.

    Raises PathRefused for a symlink that is not safe to follow, a component that is not a
    directory or that changed while it was being opened, or too many links; OSError for what
    the system refuses (permissions).
    """
    named = checked_path(path)
    trusted = trusted_owners() if owners is None else owners
    stack: list[tuple[int, str, bool]] = []  # (fd, path, safe)
    unsafe: list[str] = []
    links: list[str] = []
    link: tuple[int, str, str] | None = None

    def open_root() -> None:
        fd = os.open("/", DIR_FLAGS)
        why = unsafe_because(os.fstat(fd), trusted)
        stack.append((fd, "/", why is None))
        if why:
            unsafe.append(f"/ is {why}")
            if links:
                refuse(f"/ is {why}")

    def refuse(why: str) -> None:
        raise PathRefused(f"refusing to follow {links[-1]}: {why}")

    # (component, is the named path's own last component)
    pending: deque[tuple[str, bool]] = deque()
    comps = named.split("/")[1:]
    pending.extend((c, i == len(comps) - 1) for i, c in enumerate(comps))
    try:
        open_root()
        while pending:
            comp, named_last = pending.popleft()
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            dfd, dpath, dsafe = stack[-1]
            here = _join(dpath, comp)
            try:
                st: os.stat_result | None = os.stat(comp, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                target = os.readlink(comp, dir_fd=dfd)
                links.append(f"{here} -> {target}")
                if len(links) > MAX_LINKS:
                    raise PathRefused(f"{named}: more than {MAX_LINKS} symlinks on the way")
                if st.st_uid not in trusted:
                    refuse(f"the link is owned by uid {st.st_uid}")
                if unsafe:
                    refuse(unsafe[0])
                new = _link_components(target, here)
                if named_last and link is None:
                    link = (os.dup(dfd), comp, here)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop()[0])
                    open_root()
                pending.extendleft((c, False) for c in reversed(new))
                continue
            if not pending or st is None:
                if pending:  # a directory on the way is missing: so is the path
                    here = _join(here, "/".join(c for c, _ in pending))
                fd = stack.pop()[0]
                while stack:
                    os.close(stack.pop()[0])
                return Resolved(named, here, fd, comp, st, dsafe, links, link)
            if not stat.S_ISDIR(st.st_mode):
                raise PathRefused(f"{here} is not a directory")
            fd = os.open(comp, DIR_FLAGS, dir_fd=dfd)
            fst = os.fstat(fd)
            why = unsafe_because(fst, trusted)
            stack.append((fd, here, why is None))
            if not same_file(fst, st):
                raise PathRefused(f"{here} changed while it was being resolved")
            if why:
                unsafe.append(f"{here} is {why}")
                if links:
                    refuse(unsafe[-1])
        raise PathRefused(f"{named}: resolves to a directory itself")
    except BaseException:
        for fd, _, _ in stack:
            os.close(fd)
        if link is not None:
            os.close(link[0])
        raise
