"""The release server: challenges a client, times the answer itself, releases only within the bound.

The timer is the server's own monotonic clock, started immediately before the challenge is sent
and stopped as soon as the answer is read. Everything between (the path both ways, the client's
signing, queueing in either kernel) counts against the client, so neither a client nor anyone on
the path can make the round trip look shorter than it was. Every release and refusal is logged
as one JSON line with the measured round trip.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from geoprobe.keyrelease import seal, wire
from geoprobe.keyrelease.config import ClientEntry, ServerConfig

Address = tuple[Any, ...]
Send = Callable[[bytes], None]
LogRecord = dict[str, Any]

MAX_PENDING = 65_536
MAX_PENDING_PER_CLIENT = 64
PURGE_EVERY_NS = 100_000_000
# The kernel's receive stamp is CLOCK_REALTIME; it is used only while the realtime clock kept
# step with the monotonic one from the challenge to the answer (no step, no large slew).
MAX_CLOCK_DRIFT_NS = 20_000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


@dataclass(slots=True)
class Pending:
    client: ClientEntry
    name: str
    addr: Address
    sent_ns: int
    wall_offset_ns: int  # realtime minus monotonic when the challenge left


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


class JsonLog:
    """One JSON object per line, flushed per line: a crash loses no record already decided."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, record: LogRecord) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True)
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # the log went away: the decision still stands
                pass


class ReleaseServer:
    """The protocol state of one server: the config, the key and the outstanding challenges."""

    def __init__(
        self,
        config: ServerConfig,
        key: Ed25519PrivateKey,
        log: Callable[[LogRecord], None],
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], float] = time.time,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.key = key
        self.log = log
        self.clock = clock
        self.wall = wall
        self.wall_ns = wall_ns
        self.ttl_ns = config.challenge_ttl_ms * 1_000_000
        self.pending: dict[bytes, Pending] = {}
        self.per_client: dict[str, int] = {}
        self.released = 0
        self.refused = 0
        self._last_purge = 0
        self._sign_pubs = {
            c.id: Ed25519PublicKey.from_public_bytes(c.sign_pubkey) for c in config.clients.values()
        }
        self._box_pubs = {
            c.id: X25519PublicKey.from_public_bytes(c.box_pubkey) for c in config.clients.values()
        }

    # --- records ---------------------------------------------------------------------------

    def _record(self, event: str, addr: Address, **fields: Any) -> None:
        rec: LogRecord = {
            "ts": round(self.wall(), 6),
            "event": event,
            "server": self.config.server_id,
            "peer": f"{addr[0]}:{addr[1]}" if len(addr) >= 2 else str(addr),
        }
        rec.update({k: v for k, v in fields.items() if v is not None})
        self.log(rec)

    def _refuse(
        self,
        send: Send | None,
        ref: bytes,
        addr: Address,
        why: wire.Why,
        reason: str,
        **fields: Any,
    ) -> None:
        self.refused += 1
        self._record("refuse", addr, code=why.name.lower(), reason=reason, **fields)
        if send is not None:
            ref = (ref + bytes(wire.REF_LEN))[: wire.REF_LEN]
            send(seal.sign_server(self.key, wire.refusal_body(ref, why, reason)))

    # --- the protocol ----------------------------------------------------------------------

    def handle(
        self,
        data: bytes,
        addr: Address,
        received_ns: int,
        send: Send,
        *,
        kernel_age_ns: int = 0,
        wall_offset_ns: int = 0,
    ) -> None:
        """Answer one datagram; never raises on bad input, never releases on it.

        ``received_ns`` is the monotonic time the datagram was read. ``kernel_age_ns`` says how
        long before that the kernel received it (0: unknown), with ``wall_offset_ns`` the
        realtime-minus-monotonic offset at the read, to check that the stamp can be trusted.
        """
        self.purge(received_ns)
        try:
            mtype = wire.message_type(data)
        except wire.WireError as exc:
            self._malformed(data, addr, send, str(exc))
            return
        if mtype == wire.REQUEST:
            self._on_request(data, addr, send)
        elif mtype == wire.ANSWER:
            self._on_answer(data, addr, received_ns, send, kernel_age_ns, wall_offset_ns)
        else:
            self._malformed(data, addr, send, "a server accepts only requests and answers")

    def _malformed(self, data: bytes, addr: Address, send: Send, why: str) -> None:
        # Reply only to datagrams at least as large as the refusal: no amplification.
        big = len(data) >= wire.PADDED_LEN
        self._refuse(
            send if big else None,
            bytes(data[8 : 8 + wire.REF_LEN]),
            addr,
            wire.Why.MALFORMED,
            f"malformed datagram ({len(data)} bytes): {why}",
        )

    def _on_request(self, data: bytes, addr: Address, send: Send) -> None:
        try:
            req = wire.parse_request(data)
        except wire.WireError as exc:
            self._malformed(data, addr, send, str(exc))
            return
        client = self.config.clients.get(req.client_id)
        if client is None:
            self._refuse(
                send,
                req.request_id,
                addr,
                wire.Why.UNKNOWN_CLIENT,
                f"unknown client {req.client_id!r}",
            )
            return
        if req.name not in client.secrets:
            self._refuse(
                send,
                req.request_id,
                addr,
                wire.Why.NOT_ALLOWED,
                f"client {client.id!r} may not have secret {req.name!r}",
                client=client.id,
                name=req.name,
            )
            return
        if (
            len(self.pending) >= MAX_PENDING
            or self.per_client.get(client.id, 0) >= MAX_PENDING_PER_CLIENT
        ):
            self._refuse(
                send,
                req.request_id,
                addr,
                wire.Why.BUSY,
                "busy: too many open challenges",
                client=client.id,
            )
            return
        challenge = os.urandom(wire.REF_LEN)
        msg = wire.build_challenge(
            req.request_id, challenge, self.config.challenge_ttl_ms, self.config.server_id
        )
        sent = self.clock()  # the timer starts before the challenge leaves
        offset = self.wall_ns() - sent
        self.pending[challenge] = Pending(client, req.name, addr, sent, offset)
        self.per_client[client.id] = self.per_client.get(client.id, 0) + 1
        send(msg)

    def _drop(self, challenge: bytes) -> Pending | None:
        p = self.pending.pop(challenge, None)
        if p is not None:
            left = self.per_client.get(p.client.id, 1) - 1
            if left > 0:
                self.per_client[p.client.id] = left
            else:
                self.per_client.pop(p.client.id, None)
        return p

    def _on_answer(
        self,
        data: bytes,
        addr: Address,
        received_ns: int,
        send: Send,
        kernel_age_ns: int,
        wall_offset_ns: int,
    ) -> None:
        try:
            ans = wire.parse_answer(data)
        except wire.WireError as exc:
            self._malformed(data, addr, send, str(exc))
            return
        p = self.pending.get(ans.challenge)
        if p is None:
            self._refuse(
                send,
                ans.challenge,
                addr,
                wire.Why.UNKNOWN_CHALLENGE,
                "unknown, used or expired challenge",
            )
            return
        rtt = received_ns - p.sent_ns
        # The answer arrived when the kernel stamped it, not when this loop got to it: a server
        # waiting for a core would otherwise count that wait against the client. The stamp only
        # ever shortens the wait inside this host, never the path.
        steady = abs(wall_offset_ns - p.wall_offset_ns) <= MAX_CLOCK_DRIFT_NS
        stamp = "kernel" if 0 < kernel_age_ns < rtt and steady else "read"
        if stamp == "kernel":
            rtt -= kernel_age_ns
        who = {"client": p.client.id, "name": p.name, "rtt_ms": _ms(rtt), "stamp": stamp}
        bound = {"bound_ms": _ms(p.client.bound_ns), "bound": p.client.bound_written}
        if p.addr != addr:
            self._refuse(
                send,
                ans.challenge,
                addr,
                wire.Why.OTHER_ADDRESS,
                "answer from another address",
                **who,
            )
            return
        signed = wire.answer_signed_bytes(ans.challenge, p.name, self.config.server_id, p.client.id)
        try:
            self._sign_pubs[p.client.id].verify(ans.signature, signed)
        except InvalidSignature:
            # A forged answer does not use up the challenge: the genuine one may still come.
            self._refuse(
                send,
                ans.challenge,
                addr,
                wire.Why.BAD_SIGNATURE,
                f"bad signature for client {p.client.id!r}",
                **who,
            )
            return
        self._drop(ans.challenge)  # single use from here on, whatever the outcome
        if rtt > self.ttl_ns:
            self._refuse(
                send,
                ans.challenge,
                addr,
                wire.Why.EXPIRED,
                f"challenge expired: answered after {rtt / 1e6:.3f} ms"
                f" (lifetime {self.config.challenge_ttl_ms} ms)",
                **who,
                **bound,
            )
            return
        if rtt > p.client.bound_ns:
            self._refuse(
                send,
                ans.challenge,
                addr,
                wire.Why.TOO_SLOW,
                f"round trip {rtt / 1e6:.3f} ms exceeds the bound {p.client.bound_written}"
                f" for client {p.client.id!r}",
                **who,
                **bound,
            )
            return
        msg = seal.build_release(
            self.key,
            self._box_pubs[p.client.id],
            challenge=ans.challenge,
            rtt_ns=rtt,
            bound_ns=p.client.bound_ns,
            server_id=self.config.server_id,
            client_id=p.client.id,
            name=p.name,
            secret=self.config.secrets[p.name],
        )
        self.released += 1
        self._record("release", addr, **who, **bound)
        send(msg)

    def purge(self, now_ns: int) -> None:
        """Forget challenges older than twice their lifetime.

        Until then a late answer is told that it is late.
        """
        if now_ns - self._last_purge < PURGE_EVERY_NS:
            return
        self._last_purge = now_ns
        horizon = now_ns - 2 * self.ttl_ns
        while self.pending:
            first = next(iter(self.pending))
            if self.pending[first].sent_ns > horizon:
                break
            self._drop(first)

    # --- the socket loop -------------------------------------------------------------------

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        """Serve until ``stop`` is set.

        One thread, so the timer never waits on another request's lock.
        """
        sock.settimeout(0.1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # no kernel stamps: the read time stands (later, so never in favour)
            pass
        ancillary = socket.CMSG_SPACE(_TIMESPEC.size)
        while not stop.is_set():
            try:
                data, anc, _, addr = sock.recvmsg(wire.MAX_DATAGRAM + 1, ancillary)
            except TimeoutError:
                self.purge(self.clock())
                continue
            except OSError:
                if stop.is_set():
                    return
                continue
            received = self.clock()  # the timer stops as soon as the answer is read
            offset = self.wall_ns() - received
            age = kernel_age(anc, received + offset)

            def send(msg: bytes, addr: Address = addr) -> None:
                try:
                    sock.sendto(msg, addr)
                except OSError:
                    pass  # the client sees a lost packet and retries

            try:
                self.handle(data, addr, received, send, kernel_age_ns=age, wall_offset_ns=offset)
            except Exception as exc:  # noqa: BLE001 - one bad datagram must not stop the server
                self.refused += 1
                self._record("error", addr, reason=f"{type(exc).__name__}: {exc}")


def kernel_age(ancillary: list[tuple[int, int, bytes]], wall_now_ns: int) -> int:
    """How long ago the kernel received the datagram, from its SO_TIMESTAMPNS stamp (0: none)."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            age = wall_now_ns - (sec * 1_000_000_000 + nsec)
            return age if 0 < age < 1_000_000_000 else 0
    return 0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock
