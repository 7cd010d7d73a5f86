"""Receiving with kernel timestamps, and reading ICMP errors from a socket's error queue.

The receive time comes from the kernel (SO_TIMESTAMPNS, wall clock), not from when the event
loop got round to the datagram: with hundreds of replies arriving together, userspace stamps
would add the time spent verifying the replies before them.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_TIMESPEC = struct.Struct("@qq")
_EXTENDED_ERR = struct.Struct(
    "@IBBBBII"
)  # sock_extended_err: errno, origin, type, code, pad, info, data
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_ERR_CMSG_SPACE = socket.CMSG_SPACE(_EXTENDED_ERR.size + 28)


def enable_timestamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def enable_errors(sock: socket.socket) -> bool:
    """Ask the kernel to queue ICMP errors (port unreachable, ...) for this unconnected socket."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:
        return False
    return True


def recv_stamped(sock: socket.socket, bufsize: int = 2048) -> tuple[bytes, Any, int]:
    """One datagram, its sender and its kernel receive time (ns since the epoch).

    Raises BlockingIOError when nothing is queued.
    """
    data, ancdata, _flags, addr = sock.recvmsg(bufsize, _CMSG_SPACE)
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            return data, addr, sec * 1_000_000_000 + nsec
    return data, addr, time.time_ns()


@dataclass(frozen=True, slots=True)
class QueuedError:
    errno: int
    payload: bytes  # (the start of) the datagram that caused it
    addr: Any


def recv_error(sock: socket.socket, bufsize: int = 2048) -> QueuedError | None:
    """Pop one ICMP error from the error queue, or None when it is empty."""
    try:
        data, ancdata, _flags, addr = sock.recvmsg(bufsize, _ERR_CMSG_SPACE, socket.MSG_ERRQUEUE)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return None
        raise
    for level, ctype, cdata in ancdata:
        if (level, ctype) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
            ee_errno = _EXTENDED_ERR.unpack_from(cdata)[0]
            return QueuedError(errno=ee_errno, payload=data, addr=addr)
    return QueuedError(errno=0, payload=data, addr=addr)
