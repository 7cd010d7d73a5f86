"""Where config, state and cache live: /etc and /var/lib for root, XDG dirs for everyone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

APP = "geoprobe"


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
    env = os.environ.get("GEOPROBE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir(APP))


def config_dirs() -> list[Path]:
    """Config search path, most specific first: $GEOPROBE_CONFIG_DIR, XDG user dir, /etc/geoprobe."""
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
