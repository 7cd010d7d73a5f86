"""A small synchronous QMP client over a unix socket.

QMP is the only honest source of ground truth for a migration: QEMU's own status changes, downtime
and dirty-sync counts. The client keeps every asynchronous event (STOP, RESUME, MIGRATION, ...) with
the host time it arrived, so a run can be replayed against what the guest saw.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


class QMPError(RuntimeError):
    """QEMU answered a command with an error, or the connection failed."""


@dataclass(frozen=True)
class QMPEvent:
    name: str
    data: dict[str, Any]
    qemu_time: float  # QEMU's own timestamp (host wall clock, seconds)
    received: float  # host time.time() when the client read it

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "data": self.data,
            "qemu_time": self.qemu_time,
            "received": self.received,
        }


@dataclass
class QMPClient:
    """One QMP connection. Use `connect()` (or the context manager) before `execute()`."""

    path: Path
    timeout: float = 10.0
    events: list[QMPEvent] = field(default_factory=list)
    greeting: dict[str, Any] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _buf: bytes = b""

    def connect(self, wait: float = 10.0) -> QMPClient:
        """Connect, retrying while QEMU creates the socket, then leave capabilities negotiation
        mode."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"cannot connect to QMP socket {self.path}: {exc}") from exc
                time.sleep(0.05)
        self._sock = sock
        greeting = self._read_message()
        if "QMP" not in greeting:
            raise QMPError(f"{self.path}: not a QMP greeting: {greeting!r}")
        self.greeting = greeting
        self.execute("qmp_capabilities")
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command and return its `return` value; events read meanwhile are kept."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = {k.replace("_", "-"): v for k, v in arguments.items()}
        self._send(msg)
        while True:
            reply = self._read_message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"{command}: {err.get('class')}: {err.get('desc')}")

    def poll_events(self, timeout: float = 0.0) -> list[QMPEvent]:
        """Read events that arrive within `timeout` seconds; return the new ones."""
        before = len(self.events)
        assert self._sock is not None, "not connected"
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self._buf:
                self._read_message()
                continue
            remaining = deadline - time.monotonic()
            self._sock.settimeout(max(remaining, 0.0) if remaining > 0 else 0.0)
            try:
                chunk = self._sock.recv(65536)
            except (BlockingIOError, TimeoutError):
                break
            except ConnectionResetError:  # QEMU quit: what it said before going is kept
                break
            finally:
                self._sock.settimeout(self.timeout)
            if not chunk:
                break
            self._buf += chunk
        return self.events[before:]

    def wait_event(
        self, name: str, timeout: float = 10.0, match: dict[str, Any] | None = None
    ) -> QMPEvent:
        """Block until an event `name` (whose data contains `match`) arrives, even if already
        read."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events[seen:]:
                if ev.name == name and all(ev.data.get(k) == v for k, v in (match or {}).items()):
                    return ev
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise QMPError(f"{self.path}: no {name} event {match or ''} within {timeout} s")
            self.poll_events(min(0.1, max(deadline - time.monotonic(), 0.0)))

    # -- convenience wrappers for the migration commands the lab uses --

    def set_capabilities(self, **caps: bool) -> None:
        self.execute(
            "migrate-set-capabilities",
            capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()],
        )

    def set_parameters(self, **params: Any) -> None:
        self.execute("migrate-set-parameters", **params)

    def migrate(self, uri: str) -> None:
        self.execute("migrate", uri=uri)

    def migrate_incoming(self, uri: str) -> None:
        self.execute("migrate-incoming", uri=uri)

    def query_migrate(self) -> dict[str, Any]:
        result: dict[str, Any] = self.execute("query-migrate")
        return result

    def query_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.execute("query-status")
        return result

    # -- wire --

    def _send(self, msg: dict[str, Any]) -> None:
        if self._sock is None:
            raise QMPError("not connected")
        self._sock.sendall(json.dumps(msg).encode() + b"\n")

    def _read_message(self) -> dict[str, Any]:
        """Read one JSON line; events are recorded and returned like any other message."""
        assert self._sock is not None, "not connected"
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QMPError(f"{self.path}: no answer from QEMU within {self.timeout} s") from exc
            except OSError as exc:
                raise QMPError(f"{self.path}: QMP connection lost: {exc}") from exc
            if not chunk:
                raise QMPError(f"{self.path}: QEMU closed the QMP connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QMPError(f"{self.path}: malformed QMP message: {line[:200]!r}") from exc
        if "event" in msg:
            ts = msg.get("timestamp", {})
            self.events.append(
                QMPEvent(
                    name=str(msg["event"]),
                    data=dict(msg.get("data", {})),
                    qemu_time=float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6,
                    received=time.time(),
                )
            )
        return msg
