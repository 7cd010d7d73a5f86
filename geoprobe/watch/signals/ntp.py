"""A minimal SNTP (RFC 4330) client, and a server for tests and the lab.

The client gives the NTP-style clock offset (server minus ours) and the round-trip delay: the
offset's error is bounded by half the delay, so the clock signal keeps the lowest-delay answers.
The server answers from an injectable clock, so a test can shift "outside time" at will.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_PACKET = struct.Struct("!BBbb11I")  # li/vn/mode, stratum, poll, precision, 11 words
NTP_PORT = 123


class NtpError(Exception):
    """No usable answer from an NTP server (timeout, refused, bad packet, unsynchronised)."""


@dataclass(frozen=True, slots=True)
class NtpResult:
    server: str
    offset_ms: float  # server clock minus ours
    delay_ms: float  # round trip minus the server's hold time
    stratum: int


def _to_ntp(ns: int) -> tuple[int, int]:
    sec, rem = divmod(ns, 1_000_000_000)
    return (sec + NTP_EPOCH_OFFSET) & 0xFFFFFFFF, (rem << 32) // 1_000_000_000


def _from_ntp(sec: int, frac: int) -> int:
    return (sec - NTP_EPOCH_OFFSET) * 1_000_000_000 + (frac * 1_000_000_000 >> 32)


def parse_server(spec: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else NTP_PORT
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, NTP_PORT


def query(server: str, timeout: float = 1.0, clock: Callable[[], int] = time.time_ns) -> NtpResult:
    """One SNTP exchange. Raises :class:`NtpError` on anything unusable."""
    try:
        host, port = parse_server(server)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, ValueError) as exc:
        raise NtpError(f"{server}: cannot resolve: {exc}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        # Transmit timestamp = random cookie: the server echoes it as "originate", which ties
        # the answer to this request without leaking our clock (RFC 4330 section 5 allows it).
        cookie = os.urandom(8)
        request = bytes([0x23]) + bytes(39) + cookie  # LI 0, VN 4, mode 3 (client)
        try:
            sock.connect(addr)
            t1 = clock()
            sock.send(request)
            while True:
                data = sock.recv(512)
                t4 = clock()
                if len(data) >= 48 and data[24:32] == cookie:
                    break
        except TimeoutError:
            raise NtpError(f"{server}: timeout after {timeout:g} s") from None
        except OSError as exc:
            raise NtpError(f"{server}: {exc.strerror or exc}") from None
    fields = _PACKET.unpack(data[:48])
    li_vn_mode, stratum = fields[0], fields[1]
    words = fields[4:]
    if li_vn_mode & 0x7 != 4:
        raise NtpError(f"{server}: not a server reply (mode {li_vn_mode & 0x7})")
    if li_vn_mode >> 6 == 3 or stratum == 0:
        raise NtpError(
            f"{server}: server unsynchronised (leap {li_vn_mode >> 6}, stratum {stratum})"
        )
    t2 = _from_ntp(words[7], words[8])  # receive
    t3 = _from_ntp(words[9], words[10])  # transmit
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = (t4 - t1) - (t3 - t2)
    return NtpResult(server, offset / 1e6, max(delay, 0) / 1e6, stratum)


class SntpServer:
    """A tiny SNTP server on a thread. ``clock`` gives its time in ns (shift it to emulate a
    step)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], int] = time.time_ns,
        stratum: int = 2,
    ) -> None:
        self.clock = clock
        self.stratum = stratum
        self._sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.address = (
            f"{host}:{self._sock.getsockname()[1]}"
            if ":" not in host
            else f"[{host}]:{self._sock.getsockname()[1]}"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp-server", daemon=True)
        self.answered = 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            t2 = self.clock()
            if len(data) < 48 or data[0] & 0x7 != 3:
                continue
            rs, rf = _to_ntp(t2)
            t3 = self.clock()
            ts, tf = _to_ntp(t3)
            head = bytes([0x24, self.stratum, data[2], 0xEC]) + bytes(8) + b"LOCL"
            words = struct.pack("!II", rs, rf) + data[40:48] + struct.pack("!IIII", rs, rf, ts, tf)
            # layout: reference ts, originate (= client's transmit), receive, transmit
            self._sock.sendto(head + words, peer)
            self.answered += 1
