"""How ``geoprobe testbed move`` finds and steers a running testbed.

A running testbed registers itself in the runtime dir (``geoprobe.paths.runtime_dir()``:
``$GEOPROBE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/geoprobe``, else ``/run/geoprobe`` for root):

- ``testbed-<name>.sock``: a unix stream socket; one JSON request line in, one JSON reply line out
  (``{"op": "status"}``, ``{"op": "move", "to": "NAME_OR_ID" | "LAT,LON"}``, ``{"op": "delays"}``);
- ``testbed-<name>.pid``: JSON with the pid, the catalogue path and the socket path.

``<name>`` is ``--name`` (default ``default``). A path-named unix socket lives in the file system,
not in a network namespace, so a testbed started inside a namespace is reachable from outside.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoprobe import paths
from geoprobe.errors import GeoprobeError, InputError

DEFAULT_NAME = "default"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ControlError(GeoprobeError):
    """No testbed answers under that name, or it refused the request."""


@dataclass(frozen=True, slots=True)
class Registration:
    name: str
    socket: Path
    pidfile: Path


def registration(name: str, runtime: Path | None = None) -> Registration:
    if not name or not set(name) <= _NAME_OK or len(name) > 64:
        raise InputError(f"testbed name must be 1-64 of [A-Za-z0-9._-], got {name!r}", field="name")
    d = runtime if runtime is not None else paths.runtime_dir()
    return Registration(name, d / f"testbed-{name}.sock", d / f"testbed-{name}.pid")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pidfile(reg: Registration) -> dict[str, Any] | None:
    try:
        raw = json.loads(reg.pidfile.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("pid"), int) else None


def is_running(reg: Registration) -> bool:
    info = read_pidfile(reg)
    return info is not None and _pid_alive(info["pid"]) and reg.socket.exists()


def running(runtime: Path | None = None) -> list[str]:
    """Names of the testbeds that are alive in the runtime dir."""
    d = runtime if runtime is not None else paths.runtime_dir()
    names = (
        sorted(p.name[len("testbed-") : -len(".pid")] for p in d.glob("testbed-*.pid"))
        if d.is_dir()
        else []
    )
    return [n for n in names if is_running(registration(n, d))]


def claim(name: str, *, explicit: bool, runtime: Path | None = None) -> Registration:
    """Take ``name`` for a new testbed; clear a dead one's leftovers.

    An explicitly chosen name that is in use is an error. The default name falls back to
    ``default-<pid>`` so that two testbeds can run side by side without ``--name`` (two lab sites).
    """
    reg = registration(name, runtime)
    if is_running(reg):
        if explicit:
            info = read_pidfile(reg) or {}
            raise InputError(
                f"a testbed named {name!r} is already running (pid {info.get('pid')}); "
                "stop it or choose another --name",
                field="name",
            )
        reg = registration(f"{name}-{os.getpid()}", runtime)
    for p in (reg.socket, reg.pidfile):
        p.unlink(missing_ok=True)
    reg.socket.parent.mkdir(parents=True, exist_ok=True)
    return reg


def write_pidfile(reg: Registration, **info: Any) -> None:
    tmp = reg.pidfile.with_name(f".{reg.pidfile.name}.tmp")
    tmp.write_text(
        json.dumps({"pid": os.getpid(), "name": reg.name, "socket": str(reg.socket), **info}) + "\n"
    )
    tmp.replace(reg.pidfile)


def release(reg: Registration) -> None:
    info = read_pidfile(reg)
    if info is None or info.get("pid") == os.getpid():
        reg.pidfile.unlink(missing_ok=True)
        reg.socket.unlink(missing_ok=True)


def resolve(name: str | None, runtime: Path | None = None) -> Registration:
    """The testbed to talk to: ``name``, else ``default``, else the only one running."""
    if name is not None:
        reg = registration(name, runtime)
        if not is_running(reg):
            raise ControlError(f"no testbed named {name!r} is running (looked for {reg.pidfile})")
        return reg
    reg = registration(DEFAULT_NAME, runtime)
    if is_running(reg):
        return reg
    alive = running(runtime)
    if len(alive) == 1:
        return registration(alive[0], runtime)
    where = reg.pidfile.parent
    if not alive:
        raise ControlError(f"no testbed is running (nothing registered in {where})")
    raise ControlError(f"several testbeds are running ({', '.join(alive)}); choose one with --name")


def request(reg: Registration, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request and return the reply; a refusal becomes ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(reg.socket))
            s.sendall(json.dumps(payload).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise ControlError(
                f"testbed {reg.name!r} did not answer on {reg.socket}: {exc}"
            ) from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"testbed {reg.name!r} sent a malformed reply") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        msg = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(f"testbed {reg.name!r} refused: {msg or 'unknown error'}")
    return reply
