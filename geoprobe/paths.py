"""Where config, state and cache live: /etc, /var/lib and /var/cache for root, XDG dirs for
everyone else; ``$GEOPROBE_*_DIR`` overrides each."""

from __future__ import annotations

import os
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
    return Path(platformdirs.user_runtime_dir(APP))
