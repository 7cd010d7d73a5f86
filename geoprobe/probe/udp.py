"""Signed UDP echo prober: one socket per address family, replies matched to nonces.

A reply counts only if its signature verifies against the key pinned in the catalogue, it
answers a nonce we sent and that was not answered yet, and it names the catalogue's landmark and
location. Anything else is counted in ``rejected`` by reason and never used. A forged reply does
not consume the nonce, so the genuine reply still counts when it arrives.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geoprobe.landmarks import Landmark
from geoprobe.probe import keys, rx, timed
from geoprobe.probe.base import ProbeFailure, Sample, reason_for
from geoprobe.probe.evidence import check_reply, make_evidence
from geoprobe.probe.protocol import NONCE_LEN, ProtocolError, make_request, parse_reply

_RCVBUF = 4 << 20


@dataclass(slots=True)
class _Pending:
    landmark: Landmark
    pubkey: Ed25519PublicKey
    t0_ns: int
    future: asyncio.Future[Sample]


class UdpProber:
    method = "udp"
    path = "udp-signed-echo"

    def __init__(self, vm_key: Ed25519PrivateKey | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # With a VM identity key, every request offers a landmark-timed leg (probe.timed).
        key = vm_key if vm_key is not None else timed.current_identity()
        self._timed = timed.VmLeg(key, self._loop, on_reject=self._count) if key else None
        self._socks: dict[int, socket.socket] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._answered: set[bytes] = set()
        self._expired: set[bytes] = set()
        self._by_addr: dict[tuple[str, int], str] = {}
        self._pubkeys: dict[bytes, Ed25519PublicKey] = {}
        self.rejected: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def supports(self, landmark: Landmark) -> str | None:
        if landmark.udp_port is None:
            return "no udp port in catalogue"
        if landmark.pubkey is None:
            return "no public key in catalogue"
        return None

    def _sock(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            except OSError:
                pass
            rx.enable_timestamps(sock)
            rx.enable_errors(sock)
            self._loop.add_reader(sock.fileno(), self._readable, sock)
            self._socks[family] = sock
        return sock

    def send(self, landmark: Landmark, addr: str) -> asyncio.Future[Sample]:
        assert landmark.udp_port is not None and landmark.pubkey is not None
        pub = self._pubkeys.get(landmark.pubkey)
        if pub is None:
            pub = self._pubkeys[landmark.pubkey] = keys.public_from_raw(landmark.pubkey)
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = self._sock(family)
        self._by_addr[(addr, landmark.udp_port)] = landmark.id
        nonce = os.urandom(NONCE_LEN)
        fut: asyncio.Future[Sample] = self._loop.create_future()
        request = (
            make_request(nonce)
            if self._timed is None
            else self._timed.request(nonce, landmark, pub, (addr, landmark.udp_port))
        )
        t0 = time.time_ns()
        try:
            sock.sendto(request, (addr, landmark.udp_port))
        except OSError as exc:
            fut.set_exception(ProbeFailure(reason_for(exc)))
            return fut
        self._pending[nonce] = _Pending(landmark, pub, t0, fut)
        fut.add_done_callback(lambda f: self._forget(nonce, f))
        return fut

    def _forget(self, nonce: bytes, fut: asyncio.Future[Sample]) -> None:
        """A timed-out nonce is dropped, so its reply (if it ever comes) is counted as late."""
        if fut.cancelled() and self._pending.pop(nonce, None) is not None:
            self._expired.add(nonce)

    def _readable(self, sock: socket.socket) -> None:
        while (err := rx.recv_error(sock)) is not None:
            self._error(err)
        while True:
            try:
                data, src, t1 = rx.recv_stamped(sock)
            except BlockingIOError:
                return
            except OSError as exc:  # a queued ICMP error surfaces once as an exception
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                return
            self._reply(data, src, t1, sock)

    def _error(self, err: rx.QueuedError) -> None:
        nonce = err.payload[8 : 8 + NONCE_LEN]
        pending = self._pending.pop(nonce, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(
                ProbeFailure(reason_for(OSError(err.errno, os.strerror(err.errno))))
            )

    def _count(self, landmark_id: str | None, reason: str) -> None:
        self.rejected[landmark_id or "?"][reason] += 1

    def _reply(self, data: bytes, src: Any, t1: int, sock: socket.socket | None = None) -> None:
        src_key = (str(src[0]).removeprefix("::ffff:"), int(src[1]))
        if self._timed is not None and sock is not None and self._timed.takes(data):
            self._timed.handle(data, (str(src[0]), int(src[1])), sock)
            return
        try:
            reply = parse_reply(data)
        except ProtocolError:
            self._count(self._by_addr.get(src_key), "malformed")
            return
        pending = self._pending.get(reply.nonce)
        if pending is None:
            if reply.nonce in self._answered:
                reason = "replayed"
            elif reply.nonce in self._expired:
                reason = "late"
            else:
                reason = "unknown nonce"
            self._count(self._by_addr.get(src_key), reason)
            return
        lm = pending.landmark
        why = check_reply(reply, lm, pending.pubkey)
        total = t1 - pending.t0_ns
        if why is None and reply.processing_ns >= total:
            why = "bad timestamps"
        if why is not None:
            self._count(lm.id, why)
            return
        del self._pending[reply.nonce]
        self._answered.add(reply.nonce)
        rtt_ms = (total - reply.processing_ns) / 1e6
        offset_ms = ((reply.t_recv_ns - pending.t0_ns) + (reply.t_send_ns - t1)) / 2e6
        if not pending.future.done():
            sample = Sample(
                rtt_ms=rtt_ms,
                clock_offset_ms=offset_ms,
                # rtt_ms is timed by this VM; a landmark-timed RTT, if any, joins under "timed".
                evidence={
                    **make_evidence(lm.id, reply.nonce, data, pending.t0_ns, t1, rtt_ms),
                    "timed_by": "vm",
                },
                sent_at=pending.t0_ns / 1e9,
            )
            if self._timed is None or not self._timed.hold(reply.nonce, sample, pending.future):
                pending.future.set_result(sample)

    def close(self) -> None:
        if self._timed is not None:
            self._timed.close()
        for sock in self._socks.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        for p in self._pending.values():
            if not p.future.done():
                p.future.cancel()
        self._pending.clear()
