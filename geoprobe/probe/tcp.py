"""TCP connect timing: unprivileged, and what RIPE Atlas anchors answer by default.

The RTT is the time from a non-blocking ``connect()`` to the socket reporting the handshake's
outcome. A SYN-ACK (connected) and a RST (connection refused) are both one full round trip to
the landmark's host, so both count as samples; only silence or an ICMP error is a failure.
Connections are closed with a RST (SO_LINGER 0) so that probing leaves no TIME_WAIT behind.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections import Counter, defaultdict

from geoprobe.landmarks import Landmark
from geoprobe.probe.base import ProbeFailure, Sample, reason_for

_LINGER_RST = struct.pack("ii", 1, 0)


class TcpProber:
    method = "tcp"
    path = "tcp-connect"

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.rejected: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._open: set[socket.socket] = set()

    def supports(self, landmark: Landmark) -> str | None:
        return None if landmark.tcp_port is not None else "no tcp port in catalogue"

    def send(self, landmark: Landmark, addr: str) -> asyncio.Future[Sample]:
        assert landmark.tcp_port is not None
        fut: asyncio.Future[Sample] = self._loop.create_future()
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        t0 = time.perf_counter_ns()
        err = sock.connect_ex((addr, landmark.tcp_port))
        if err != errno.EINPROGRESS:
            # Loopback can finish the handshake inside connect() itself.
            self._finish(fut, sock, err, t0, time.perf_counter_ns())
            return fut
        self._open.add(sock)
        fd = sock.fileno()

        def writable() -> None:
            t1 = time.perf_counter_ns()
            self._loop.remove_writer(fd)
            self._finish(fut, sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), t0, t1)

        def done(f: asyncio.Future[Sample]) -> None:
            if f.cancelled() and sock in self._open:
                self._loop.remove_writer(fd)
                self._close(sock)

        self._loop.add_writer(fd, writable)
        fut.add_done_callback(done)
        return fut

    def _close(self, sock: socket.socket) -> None:
        self._open.discard(sock)
        sock.close()

    def _finish(
        self, fut: asyncio.Future[Sample], sock: socket.socket, err: int, t0: int, t1: int
    ) -> None:
        self._close(sock)
        if fut.done():
            return
        if err in (0, errno.ECONNREFUSED, errno.EISCONN):
            fut.set_result(Sample(rtt_ms=(t1 - t0) / 1e6))
        else:
            fut.set_exception(ProbeFailure(reason_for(OSError(err, "connect"))))

    def close(self) -> None:
        for sock in list(self._open):
            try:
                self._loop.remove_writer(sock.fileno())
            except (ValueError, OSError):
                pass
            self._close(sock)
