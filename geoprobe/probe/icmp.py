"""ICMP echo: scapy-built packets over a raw socket (root or CAP_NET_RAW), else an unprivileged
ICMP datagram socket where ``net.ipv4.ping_group_range`` admits our group.

:func:`open_icmp` tries the paths in order and the measurements record the one that worked
("icmp-raw" or "icmp-dgram"). Each echo carries a random token in its payload, so replies meant
for another ping on the same host are never taken for ours.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geoprobe.errors import MeasurementError
from geoprobe.landmarks import Landmark
from geoprobe.probe import rx
from geoprobe.probe.base import ProbeFailure, Sample, reason_for

PATHS = ("raw", "dgram")
_TOKEN_LEN = 16
_ECHO_REPLY = 0
_ECHO_REQUEST = 8


def _packet(ident: int, seq: int, token: bytes) -> bytes:
    from scapy.layers.inet import ICMP
    from scapy.packet import Raw

    return bytes(ICMP(type=_ECHO_REQUEST, code=0, id=ident, seq=seq) / Raw(token))


def _parse_echo_reply(data: bytes, with_ip_header: bool) -> tuple[int, int, bytes] | None:
    """(id, seq, payload) of an echo reply, None for anything else (our own requests included)."""
    from scapy.layers.inet import ICMP, IP

    pkt: Any = IP(data) if with_ip_header else ICMP(data)
    icmp = pkt.getlayer(ICMP)
    if icmp is None or icmp.type != _ECHO_REPLY:
        return None
    return int(icmp.id), int(icmp.seq), bytes(icmp.payload)


def _open_socket(path: str) -> socket.socket:
    kind = socket.SOCK_RAW if path == "raw" else socket.SOCK_DGRAM
    return socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)


@dataclass(slots=True)
class _Pending:
    token: bytes
    t0_ns: int
    future: asyncio.Future[Sample]


class IcmpProber:
    method = "icmp"

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._raw = path == "raw"
        self.path = f"icmp-{path}"
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._pending: dict[int, _Pending] = {}
        self.rejected: defaultdict[str, Counter[str]] = defaultdict(Counter)
        sock.setblocking(False)
        rx.enable_timestamps(sock)
        self._loop.add_reader(sock.fileno(), self._readable)

    def supports(self, landmark: Landmark) -> str | None:
        return None if landmark.icmp else "no icmp in catalogue"

    def send(self, landmark: Landmark, addr: str) -> asyncio.Future[Sample]:
        fut: asyncio.Future[Sample] = self._loop.create_future()
        if ":" in addr:
            fut.set_exception(ProbeFailure("icmp over IPv6 not supported"))
            return fut
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        token = os.urandom(_TOKEN_LEN)
        packet = _packet(self._ident, seq, token)
        t0 = time.time_ns()
        try:
            self._sock.sendto(packet, (addr, 0))
        except OSError as exc:
            fut.set_exception(ProbeFailure(reason_for(exc)))
            return fut
        self._pending[seq] = _Pending(token, t0, fut)
        fut.add_done_callback(lambda f: self._pending.pop(seq, None) if f.cancelled() else None)
        return fut

    def _readable(self) -> None:
        while True:
            try:
                data, _src, t1 = rx.recv_stamped(self._sock)
            except BlockingIOError:
                return
            except OSError:
                return
            echo = _parse_echo_reply(data, self._raw)
            if echo is None:
                continue
            ident, seq, payload = echo
            # A datagram socket's id is chosen by the kernel, which also filters replies for us.
            if self._raw and ident != self._ident:
                continue
            pending = self._pending.get(seq)
            if pending is None or payload[:_TOKEN_LEN] != pending.token:
                continue
            del self._pending[seq]
            if not pending.future.done():
                pending.future.set_result(
                    Sample(rtt_ms=(t1 - pending.t0_ns) / 1e6, sent_at=pending.t0_ns / 1e9)
                )

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for p in self._pending.values():
            if not p.future.done():
                p.future.cancel()
        self._pending.clear()


def open_icmp(paths: Sequence[str] = PATHS) -> IcmpProber:
    """The first ICMP path this process may use; MeasurementError naming the fixes if none."""
    problems: list[str] = []
    for path in paths:
        if path not in PATHS:
            raise ValueError(f"unknown ICMP path {path!r}")
        try:
            sock = _open_socket(path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT):
                raise
            problems.append(f"{path} socket: {exc.strerror}")
            continue
        return IcmpProber(sock, path)
    raise MeasurementError(
        "cannot send ICMP echo ("
        + "; ".join(problems)
        + "): run as root or with CAP_NET_RAW, or widen "
        "net.ipv4.ping_group_range to include your group, or use --method udp or tcp"
    )
