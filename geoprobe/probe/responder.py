"""The signed echo responder: what a landmark runs (``geoprobe landmark serve``) and what the
testbed runs hundreds of times in one process.

An injected ``delay`` emulates *path* latency, so it must not look like processing time: half of
it is held before stamping the receive time and half after stamping the send time. The NTP-style
offset estimate then stays unbiased, and the prober's ``t1 - t0 - (t_send - t_recv)`` equals the
injected delay plus the real path. Holds are timed by a :class:`PreciseTimer`, not by asyncio.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.probe import keys
from geoprobe.probe.protocol import ProtocolError, build_reply, parse_request
from geoprobe.probe.ratelimit import RateLimit, SourceLimiter
from geoprobe.probe.timed import LandmarkLeg
from geoprobe.probe.timer import PreciseTimer, shared_timer

log = logging.getLogger(__name__)

Address = tuple[Any, ...]

SIOCGSTAMPNS = 0x8907  # the kernel receive time of the last datagram read from a socket
_TIMESPEC = struct.Struct("@qq")


class EchoResponder(asyncio.DatagramProtocol):
    """Answer signed echo requests for one landmark.

    ``clock`` returns the landmark's wall clock in ns (default ``time.time_ns``); tests and the
    watch engineer pass a shifted clock to emulate a landmark whose clock is off. It is called on
    the timer thread when a delay is set, so it must be thread-safe.
    """

    def __init__(
        self,
        key: Ed25519PrivateKey,
        landmark_id: str,
        lat: float,
        lon: float,
        key_id: str | None = None,
        delay: Callable[[], float] | None = None,
        clock: Callable[[], int] | None = None,
        timer: PreciseTimer | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.key = key
        self.landmark_id = landmark_id
        self.lat = float(lat)
        self.lon = float(lon)
        self.key_id = key_id if key_id is not None else keys.key_id(keys.public_raw(key))
        self.delay = delay
        self.clock: Callable[[], int] = clock or time.time_ns
        self._timer = timer
        self.transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self.limiter = SourceLimiter(rate_limit) if rate_limit is not None else None
        self.answered = 0
        self.dropped = 0
        self.limited = 0

        # Landmark-timed echoes (geoprobe.probe.timed); None answers plain echoes only.
        self.timed: LandmarkLeg | None = LandmarkLeg(self)

    @property
    def timer(self) -> PreciseTimer:
        if self._timer is None:
            self._timer = shared_timer()
        return self._timer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        # The timer thread sends held replies itself; asyncio transports are not thread-safe,
        # so it writes on a duplicate of the socket's descriptor.
        fileno = transport.get_extra_info("socket").fileno()
        self._sock = socket.socket(fileno=os.dup(fileno))
        # The first SIOCGSTAMPNS switches kernel receive stamps on (and fails: nothing stamped yet).
        # SO_TIMESTAMPNS must stay off here: with it, the kernel keeps the stamp for recvmsg only.
        self._arrival_age_ns()

    def _arrival_age_ns(self) -> int:
        """How long ago the kernel received the datagram just read (0 if unknown).

        The event loop may reach a datagram late when it is busy (hundreds of landmarks share
        it); counting from the kernel's receive time keeps that wait out of the emulated path.
        """
        if self._sock is None:
            return 0
        try:
            raw = fcntl.ioctl(self._sock.fileno(), SIOCGSTAMPNS, bytes(_TIMESPEC.size))
        except OSError:
            return 0
        sec, nsec = _TIMESPEC.unpack(raw)
        age = time.time_ns() - (sec * 1_000_000_000 + nsec)
        return age if 0 <= age < 1_000_000_000 else 0

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def datagram_received(self, data: bytes, addr: Address) -> None:
        age = self._arrival_age_ns()
        arrival = time.monotonic_ns() - age
        try:
            nonce = parse_request(data)
        except ProtocolError:
            if self.timed is None or not self.timed.answer(data, addr, arrival):
                self.dropped += 1
            return
        if self.limiter is not None and not self.limiter.allow(str(addr[0])):
            self.limited += 1
            return
        held = max(0.0, self.delay()) if self.delay is not None else 0.0
        if self.timed is not None:
            self.timed.offer(data, nonce, addr, held)
        if held <= 0.0:
            self._sendto(self._reply(nonce, age), addr)
            return
        half = int(held * 1e9 / 2)
        due = arrival + half
        self.timer.call_at(due, lambda: self._answer_held(nonce, addr, due, half))

    def _reply(self, nonce: bytes, waited_ns: int = 0) -> bytes:
        """Sign a reply; the request is dated ``waited_ns`` back, to when it reached the
        landmark."""
        t_send = self.clock()
        t_recv = t_send - waited_ns
        return build_reply(
            self.key, nonce, t_recv, t_send, self.landmark_id, self.lat, self.lon, self.key_id
        )

    def _answer_held(self, nonce: bytes, addr: Address, due_ns: int, half_ns: int) -> None:
        stamped = time.monotonic_ns()
        # The emulated path delivered the request at ``due_ns``; if this callback runs late (a busy
        # CPU), the wait is the landmark's processing time and is reported as such, not as path.
        late = max(0, stamped - due_ns)
        reply = self._reply(nonce, late if late < 1_000_000_000 else 0)
        # Signing happens inside the second half of the hold.
        self.timer.call_at(stamped + half_ns, lambda: self._sendto(reply, addr))

    def _sendto(self, reply: bytes, addr: Address) -> None:
        sock = self._sock
        if sock is None:
            return
        self.answered += 1  # counted first, so whoever reads the reply also sees the count
        if self.timed is not None:
            self.timed.before_reply(reply, addr, sock)  # the challenge leaves just before
        try:
            sock.sendto(reply, addr)
        except OSError as exc:  # full buffer or closed: the prober sees a lost packet
            self.answered -= 1
            self.dropped += 1
            log.debug("reply to %s dropped: %s", addr, exc)


async def start_responder(
    key: Ed25519PrivateKey,
    landmark_id: str,
    lat: float,
    lon: float,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    key_id: str | None = None,
    delay: Callable[[], float] | None = None,
    clock: Callable[[], int] | None = None,
    timer: PreciseTimer | None = None,
    rate_limit: RateLimit | None = None,
) -> tuple[asyncio.DatagramTransport, EchoResponder]:
    """Bind a responder on ``host:port`` in the running loop (port 0: any free port)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: EchoResponder(
            key,
            landmark_id,
            lat,
            lon,
            key_id=key_id,
            delay=delay,
            clock=clock,
            timer=timer,
            rate_limit=rate_limit,
        ),
        local_addr=(host, port),
    )
    return transport, protocol
