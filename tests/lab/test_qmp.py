"""The lab's QMP client: against a scripted QMP peer, and against real QEMU processes when
installed."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.lab.qmp import QMPClient, QMPError

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
)


class ScriptedQMP:
    """A unix-socket peer speaking QMP's framing: greeting, replies, and an event before one
    reply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: list[dict[str, object]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        f = conn.makefile("rwb")

        def send(obj: dict[str, object]) -> None:
            f.write(json.dumps(obj).encode() + b"\r\n")
            f.flush()

        send(
            {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}
        )
        for raw in f:
            msg = json.loads(raw)
            self.received.append(msg)
            cmd = msg["execute"]
            if cmd == "query-migrate":
                send(
                    {
                        "event": "MIGRATION",
                        "data": {"status": "active"},
                        "timestamp": {"seconds": 100, "microseconds": 250000},
                    }
                )
                send({"return": {"status": "active", "ram": {"dirty-sync-count": 3}}})
            elif cmd == "migrate":
                send({"error": {"class": "GenericError", "desc": "no such socket"}})
            elif cmd == "quit":
                send({"return": {}})
                break
            else:
                send({"return": {}})
        conn.close()


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[ScriptedQMP]:
    peer = ScriptedQMP(tmp_path / "qmp.sock")
    yield peer
    peer.server.close()


def test_events_are_kept_with_qemu_timestamp_and_replies_returned(scripted: ScriptedQMP) -> None:
    c = QMPClient(scripted.path).connect(wait=2)
    assert scripted.received[0] == {"execute": "qmp_capabilities"}
    reply = c.query_migrate()
    assert reply["ram"]["dirty-sync-count"] == 3
    assert [e.name for e in c.events] == ["MIGRATION"]
    assert c.events[0].qemu_time == pytest.approx(100.25)
    assert (
        c.wait_event("MIGRATION", timeout=0.1, match={"status": "active"}).data["status"]
        == "active"
    )
    with pytest.raises(QMPError, match="no MIGRATION event"):
        c.wait_event("MIGRATION", timeout=0.1, match={"status": "completed"})


def test_arguments_use_qmp_dashes_and_errors_raise(scripted: ScriptedQMP) -> None:
    c = QMPClient(scripted.path).connect(wait=2)
    c.set_parameters(max_bandwidth=1 << 20, downtime_limit=300)
    c.set_capabilities(auto_converge=True)
    assert scripted.received[1] == {
        "execute": "migrate-set-parameters",
        "arguments": {"max-bandwidth": 1 << 20, "downtime-limit": 300},
    }
    assert scripted.received[2]["arguments"] == {
        "capabilities": [{"capability": "auto-converge", "state": True}]
    }
    with pytest.raises(QMPError, match="GenericError: no such socket"):
        c.migrate("unix:/nonexistent")


def test_connect_gives_up_when_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(QMPError, match="cannot connect"):
        QMPClient(tmp_path / "absent.sock").connect(wait=0.2)


def _qemu(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    assert QEMU is not None
    sock = tmp_path / f"{name}.sock"
    proc = subprocess.Popen(
        [
            QEMU,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, sock


def _reap(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
        p.wait(10)


@needs_qemu
def test_real_qemu_status_and_quit_event(tmp_path: Path) -> None:
    proc, sock = _qemu(tmp_path, "none", "-machine", "none", "-S")
    try:
        c = QMPClient(sock).connect(wait=10)
        assert c.greeting["QMP"]["version"]["qemu"]["major"] >= 5
        assert c.query_status()["status"] == "prelaunch"
        c.execute("cont")
        assert c.query_status()["running"] is True
        c.execute("quit")
        c.poll_events(2.0)
        assert "SHUTDOWN" in [e.name for e in c.events]
        assert proc.wait(10) == 0
    finally:
        _reap(proc)


@needs_qemu
def test_real_local_migration_of_a_paused_machine(tmp_path: Path) -> None:
    """Two QEMU processes, one incoming: the migration completes and QMP reports its timeline."""
    machine = ("-machine", "pc", "-accel", "tcg", "-m", "32", "-S")
    src, src_sock = _qemu(tmp_path, "src", *machine)
    dst, dst_sock = _qemu(tmp_path, "dst", *machine, "-incoming", "defer")
    mig = tmp_path / "mig.sock"
    try:
        s = QMPClient(src_sock).connect(wait=10)
        d = QMPClient(dst_sock).connect(wait=10)
        for c in (s, d):
            c.set_capabilities(events=True)
        assert d.query_status()["status"] == "inmigrate"
        d.migrate_incoming(f"unix:{mig}")
        s.migrate(f"unix:{mig}")
        s.wait_event("MIGRATION", timeout=30, match={"status": "completed"})
        info = s.query_migrate()
        assert info["status"] == "completed"
        assert info["total-time"] >= 0 and info["ram"]["total"] >= 32 << 20
        statuses = [e.data["status"] for e in s.events if e.name == "MIGRATION"]
        assert statuses.index("setup") < statuses.index("active") < statuses.index("completed")
        d.wait_event("MIGRATION", timeout=10, match={"status": "completed"})
        deadline = time.monotonic() + 10
        while d.query_status()["status"] == "inmigrate" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.query_status()["running"] is False  # it was paused at the source, so it stays so
        d.execute("cont")
        assert d.query_status()["running"] is True
        assert s.query_status()["status"] == "postmigrate"
        s.execute("quit")
        d.execute("quit")
    finally:
        _reap(src, dst)
