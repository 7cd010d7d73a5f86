"""Where config, state and cache live: /etc, /var/lib and /var/cache for root, XDG dirs for
everyone else; ``$GEOPROBE_*_DIR`` overrides each.

State, events and the audit say where the machine has been and what it destroyed, so the files
geoprobe creates for them are private: directories 0700, files 0600, whatever the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

APP = "geoprobe"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def state_dir() -> Path:
    """``$GEOPROBE_STATE_DIR``, else /var/lib/geoprobe for root, else the user's state dir."""
    env = os.environ.get("GEOPROBE_STATE_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/lib/geoprobe")
    return Path(platformdirs.user_state_dir(APP))


def cache_dir() -> Path:
    """``$GEOPROBE_CACHE_DIR``, else systemd's ``$CACHE_DIRECTORY`` (a unit's ``CacheDirectory=``),
    else /var/cache/geoprobe for root, else the user's cache dir.

    One system cache for root and for system services, so the catalogue ``landmarks sync`` writes
    as root is the one a service finds, even one that runs as a dynamic user with ``ProtectHome``.
    """
    env = os.environ.get("GEOPROBE_CACHE_DIR")
    if env:
        return Path(env)
    systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if _is_root():
        return Path("/var/cache/geoprobe")
    return Path(platformdirs.user_cache_dir(APP))


def config_dirs() -> list[Path]:
    """Config search path, most specific first: $GEOPROBE_CONFIG_DIR, the XDG user dir,
    /etc/geoprobe."""
    dirs: list[Path] = []
    env = os.environ.get("GEOPROBE_CONFIG_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(platformdirs.user_config_dir(APP)))
    dirs.append(Path("/etc/geoprobe"))
    return dirs


def runtime_dir() -> Path:
    """Sockets and pid files of running processes (the testbed registers itself here)."""
    env = os.environ.get("GEOPROBE_RUNTIME_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / APP
    if _is_root():
        return Path("/run/geoprobe")
    # Not platformdirs.user_runtime_dir: without XDG_RUNTIME_DIR (cron, su) it warns on stderr,
    # which cron mails on every run, and its temp-dir fallback can raise.
    uid = os.getuid()
    run = Path(f"/run/user/{uid}")
    try:
        st = run.lstat()
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
        return run / APP
    return cache_dir() / "run"


def _tighten(st: os.stat_result, path: Path, mode: int) -> None:
    """Drop group and other bits from something we own; leave what others own alone."""
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) as 0700, or make an existing one we own private.

    Parents created on the way get 0700 too; existing parents are not changed, and neither is a
    sticky directory such as /tmp given as the state dir (it is shared by design).
    """
    p = Path(path)
    if not p.is_dir():
        os.makedirs(p, mode=PRIVATE_DIR_MODE, exist_ok=True)
    st = os.stat(p)
    if not st.st_mode & stat.S_ISVTX:
        _tighten(st, p, PRIVATE_DIR_MODE)
    return p


def make_private(path: str | Path) -> None:
    """Tighten an existing regular file we own to 0600 (never follows a symlink)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        _tighten(st, p, PRIVATE_FILE_MODE)


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """A file descriptor on ``path``, created 0600 if new and tightened to 0600 if we own it."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) & 0o077
        ):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
