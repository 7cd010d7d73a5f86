"""Landmark-timed echoes: the landmark times a round trip to the VM itself (docs/protocol.md).

In the plain signed echo the VM subtracts its own timestamps, so a VM (or whoever controls it)
can write a smaller RTT next to a genuine signature. Here the landmark sends a fresh challenge,
starts its own monotonic timer, and stops it when an answer signed with the VM's identity key
comes back. It then signs a statement: the VM's key id, both nonces, the RTT *it* measured, its
clock, its id and location. The VM cannot make that round trip shorter; added delay only
lengthens it.

Negotiation rides on the ordinary version-1 echo request: the VM writes an offer (the ``GPTE``
marker and its public key) into the request's zero padding. A landmark that does not speak this
ignores the padding and answers the plain echo; one that does sends the challenge just before
the echo reply. The request stays 320 bytes, and a landmark offers the leg only when challenge
plus reply fit in it, so neither leg amplifies. The VM's answer is padded to at least the
statement's size, and goes only to the address that was challenged.

All integers and floats are big-endian. Every parser here refuses, with :class:`ProtocolError`,
anything that is not exactly a well-formed message.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geoprobe.probe import keys
from geoprobe.probe.protocol import (
    MAX_ID_LEN,
    MAX_KEY_ID_LEN,
    NONCE_LEN,
    SIG_LEN,
    ProtocolError,
    make_request,
)

if TYPE_CHECKING:
    from geoprobe.landmarks import Landmark
    from geoprobe.probe.base import Sample
    from geoprobe.probe.responder import EchoResponder

MAGIC = b"GPTE"
VERSION = 1
TYPE_CHALLENGE = 1
TYPE_ANSWER = 2
TYPE_STATEMENT = 3
PUBKEY_LEN = 32
VM_KEY_ID_LEN = 16  # keys.key_id(): 16 hex digits
OFFER_AT = 8 + NONCE_LEN  # the offer starts where the echo request's padding starts
ANSWER_LEN = 384  # at least the largest statement: the answer never gains an amplifier
ANSWER_CONTEXT = b"geoprobe-timed-answer/1\x00"
STATEMENT_CONTEXT = b"geoprobe-timed/1\x00"
EVIDENCE_VERSION = 1
PENDING_TTL_NS = 5_000_000_000  # a challenge left unanswered this long is forgotten
MAX_PENDING = 65_536
MAX_VM_KEYS = 4096

_HEADER = struct.Struct("!4sBBH")  # magic, version, type, reserved
_OFFER = struct.Struct(f"!4sBBH{PUBKEY_LEN}s")  # marker, version, flags, reserved, VM public key
_CHALLENGE = struct.Struct(f"!4sBBH{NONCE_LEN}s{NONCE_LEN}s")  # header, echo nonce, challenge
_ANSWER = struct.Struct(f"!4sBBH{NONCE_LEN}s{NONCE_LEN}s{SIG_LEN}s")
# header, echo nonce, challenge nonce, rtt_ns, t_ns, lat, lon, VM key id
_STATEMENT = struct.Struct(f"!4sBBH{NONCE_LEN}s{NONCE_LEN}sQQdd{VM_KEY_ID_LEN}s")
CHALLENGE_LEN = _CHALLENGE.size
MAX_STATEMENT_LEN = _STATEMENT.size + 2 + MAX_ID_LEN + MAX_KEY_ID_LEN + SIG_LEN


def _header(data: bytes, mtype: int) -> None:
    magic, version, got, _ = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or got != mtype:
        raise ProtocolError("not a landmark-timed message of the expected type")


def message_type(data: bytes) -> int | None:
    """The type of a landmark-timed message, or None for anything else (e.g. a plain echo)."""
    if len(data) < _HEADER.size or bytes(data[:4]) != MAGIC:
        return None
    return int(data[5])


# -- the offer, inside an ordinary echo request ------------------------------------------------


def make_offer_request(nonce: bytes, vm_pubkey: bytes) -> bytes:
    """A plain version-1 echo request whose padding offers the landmark-timed leg."""
    if len(vm_pubkey) != PUBKEY_LEN:
        raise ValueError(f"VM public key must be {PUBKEY_LEN} bytes")
    plain = make_request(nonce)
    offer = _OFFER.pack(MAGIC, VERSION, 0, 0, vm_pubkey)
    return plain[:OFFER_AT] + offer + plain[OFFER_AT + len(offer) :]


def parse_offer(request: bytes) -> bytes | None:
    """The VM public key a (valid) echo request offers, or None when it offers nothing."""
    if len(request) < OFFER_AT + _OFFER.size:
        return None
    marker, version, _flags, _, pub = _OFFER.unpack_from(request, OFFER_AT)
    if marker != MAGIC or version != VERSION:
        return None
    return bytes(pub)


# -- challenge, answer ------------------------------------------------------------------------


def make_challenge(echo_nonce: bytes, challenge: bytes) -> bytes:
    return _CHALLENGE.pack(MAGIC, VERSION, TYPE_CHALLENGE, 0, echo_nonce, challenge)


def parse_challenge(data: bytes) -> tuple[bytes, bytes]:
    """(echo nonce, challenge nonce)."""
    data = bytes(data)
    if len(data) != _CHALLENGE.size:
        raise ProtocolError("challenge has the wrong length")
    _header(data, TYPE_CHALLENGE)
    _, _, _, _, echo, challenge = _CHALLENGE.unpack(data)
    return echo, challenge


def answer_signed(echo_nonce: bytes, challenge: bytes) -> bytes:
    return ANSWER_CONTEXT + echo_nonce + challenge


def make_answer(key: Ed25519PrivateKey, echo_nonce: bytes, challenge: bytes) -> bytes:
    sig = key.sign(answer_signed(echo_nonce, challenge))
    body = _ANSWER.pack(MAGIC, VERSION, TYPE_ANSWER, 0, echo_nonce, challenge, sig)
    return body + bytes(ANSWER_LEN - len(body))


def parse_answer(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(echo nonce, challenge nonce, VM signature); short answers are refused."""
    data = bytes(data)
    if len(data) != ANSWER_LEN:
        raise ProtocolError(f"answer must be {ANSWER_LEN} bytes")
    _header(data, TYPE_ANSWER)
    _, _, _, _, echo, challenge, sig = _ANSWER.unpack_from(data)
    return echo, challenge, sig


# -- the landmark's signed statement ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statement:
    """What a landmark signs after timing a round trip to the holder of ``vm_key_id``."""

    echo_nonce: bytes
    challenge: bytes
    rtt_ns: int  # measured by the landmark's monotonic clock
    t_ns: int  # the landmark's wall clock when it stopped the timer
    lat: float
    lon: float
    vm_key_id: str
    landmark_id: str
    key_id: str
    signature: bytes
    signed: bytes  # the bytes the signature covers (without STATEMENT_CONTEXT)

    @property
    def rtt_ms(self) -> float:
        return self.rtt_ns / 1e6

    def verify(self, pubkey: Ed25519PublicKey) -> bool:
        try:
            pubkey.verify(self.signature, STATEMENT_CONTEXT + self.signed)
        except InvalidSignature:
            return False
        return True


def statement_body(
    echo_nonce: bytes,
    challenge: bytes,
    rtt_ns: int,
    t_ns: int,
    lat: float,
    lon: float,
    vm_key_id: str,
    landmark_id: str,
    key_id: str,
) -> bytes:
    lid = landmark_id.encode("utf-8")
    kid = key_id.encode("ascii")
    vid = vm_key_id.encode("ascii")
    if not 1 <= len(lid) <= MAX_ID_LEN or len(kid) > MAX_KEY_ID_LEN or len(vid) != VM_KEY_ID_LEN:
        raise ValueError("bad landmark id, key id or VM key id length")
    return (
        _STATEMENT.pack(
            MAGIC,
            VERSION,
            TYPE_STATEMENT,
            0,
            echo_nonce,
            challenge,
            rtt_ns,
            t_ns,
            lat,
            lon,
            vid,
        )
        + bytes([len(lid)])
        + lid
        + bytes([len(kid)])
        + kid
    )


def parse_statement(data: bytes) -> Statement:
    """Decode without trusting: the caller checks the signature against a pinned key."""
    data = bytes(data)
    if len(data) < _STATEMENT.size + 2 + SIG_LEN or len(data) > MAX_STATEMENT_LEN:
        raise ProtocolError("statement has a bad length")
    _header(data, TYPE_STATEMENT)
    _, _, _, _, echo, challenge, rtt, t, lat, lon, vid = _STATEMENT.unpack_from(data)
    pos = _STATEMENT.size
    id_len = data[pos]
    pos += 1
    if id_len == 0 or pos + id_len >= len(data):
        raise ProtocolError("bad landmark id length")
    try:
        lid = data[pos : pos + id_len].decode("utf-8")
        pos += id_len
        kid_len = data[pos]
        pos += 1
        if kid_len > MAX_KEY_ID_LEN or pos + kid_len + SIG_LEN != len(data):
            raise ProtocolError("bad length")
        kid = data[pos : pos + kid_len].decode("ascii")
        vm = vid.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("an id is not text") from None
    pos += kid_len
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ProtocolError("location is not finite")
    return Statement(
        echo_nonce=echo,
        challenge=challenge,
        rtt_ns=rtt,
        t_ns=t,
        lat=lat,
        lon=lon,
        vm_key_id=vm,
        landmark_id=lid,
        key_id=kid,
        signature=data[pos:],
        signed=data[:pos],
    )


def check_statement(st: Statement, landmark: Landmark, pubkey: Ed25519PublicKey) -> str | None:
    """Why a decoded statement cannot count for ``landmark`` (None if it can)."""
    from geoprobe.probe.evidence import LOCATION_TOLERANCE_DEG

    if not st.verify(pubkey):
        return "bad statement signature"
    if landmark.key_id and st.key_id != landmark.key_id:
        return "statement has the wrong key id"
    if st.landmark_id != landmark.id:
        return "statement names another landmark"
    if (
        abs(st.lat - landmark.lat) > LOCATION_TOLERANCE_DEG
        or abs(st.lon - landmark.lon) > LOCATION_TOLERANCE_DEG
    ):
        return "statement location mismatch"
    return None


def evidence_record(statement: bytes, rtt_ms: float) -> dict[str, Any]:
    """What an echo evidence record carries under ``"timed"``: the landmark-signed RTT."""
    return {
        "v": EVIDENCE_VERSION,
        "timed_by": "landmark",
        "statement": base64.b64encode(statement).decode("ascii"),
        "rtt_ms": rtt_ms,
    }


# -- the landmark side ------------------------------------------------------------------------


@dataclass(slots=True)
class _Challenge:
    echo_nonce: bytes
    vm_pub: Ed25519PublicKey
    vm_key_id: str
    addr: tuple[Any, ...]
    extra_ns: int  # emulated path delay (testbed): the timer counts it as path
    sent_ns: int = 0  # monotonic; 0 until the challenge left


class LandmarkLeg:
    """The landmark's half, attached to an :class:`EchoResponder`.

    ``offer`` runs on the loop when a request arrives; ``before_reply`` runs wherever the echo
    reply is sent (the loop, or the timer thread when a delay is emulated) and sends the
    challenge just before it; ``answer`` runs on the loop. A lock keeps the table consistent.
    """

    def __init__(self, responder: EchoResponder) -> None:
        self.r = responder
        self._lock = threading.Lock()
        self._by_echo: dict[bytes, _Challenge] = {}
        self._by_challenge: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._vm_keys: dict[bytes, tuple[Ed25519PublicKey, str]] = {}  # VMs come back each round
        self.challenged = 0
        self.stated = 0
        self.refused = 0

    def offer(self, request: bytes, echo_nonce: bytes, addr: tuple[Any, ...], held: float) -> None:
        """Note an offered leg; the challenge leaves with the echo reply."""
        pub = parse_offer(request)
        if pub is None:
            return
        reply_len = 8 + NONCE_LEN + 32 + 2 + len(self.r.landmark_id.encode()) + len(self.r.key_id)
        if reply_len + SIG_LEN + CHALLENGE_LEN > len(request):
            self.refused += 1  # would send more than the request: no leg, the plain echo stands
            return
        known = self._vm_keys.get(pub)
        if known is None:
            try:
                known = (keys.public_from_raw(pub), keys.key_id(pub))
            except ValueError:
                self.refused += 1
                return
            if len(self._vm_keys) >= MAX_VM_KEYS:
                self._vm_keys.clear()
            self._vm_keys[pub] = known
        entry = _Challenge(echo_nonce, known[0], known[1], addr, int(held * 1e9))
        with self._lock:
            self._expire(time.monotonic_ns())
            if len(self._by_echo) >= MAX_PENDING:
                self.refused += 1
                return
            self._by_echo[echo_nonce] = entry

    def before_reply(self, reply: bytes, addr: tuple[Any, ...], sock: socket.socket) -> None:
        """Send the challenge for the echo this reply answers, and start the landmark's timer."""
        echo = bytes(reply[8 : 8 + NONCE_LEN])
        with self._lock:
            entry = self._by_echo.pop(echo, None)
            if entry is None or entry.addr != addr:
                return
            challenge = os.urandom(NONCE_LEN)
            entry.sent_ns = time.monotonic_ns()
            self._by_challenge[challenge] = entry
        try:
            sock.sendto(make_challenge(echo, challenge), addr)
        except OSError:
            with self._lock:
                self._by_challenge.pop(challenge, None)
            return
        self.challenged += 1

    def answer(self, data: bytes, addr: tuple[Any, ...], arrival_ns: int) -> bool:
        """Handle a datagram that is no echo request; True if it was a timed answer."""
        if message_type(data) != TYPE_ANSWER:
            return False
        try:
            echo, challenge, sig = parse_answer(data)
        except ProtocolError:
            return False
        with self._lock:
            entry = self._by_challenge.get(challenge)
        if entry is None or entry.echo_nonce != echo or entry.addr != addr:
            return False
        try:  # outside the lock: the timer thread sends challenges meanwhile
            entry.vm_pub.verify(sig, answer_signed(echo, challenge))
        except InvalidSignature:
            return False  # not the key holder: the challenge stays open for the real one
        with self._lock:
            if self._by_challenge.pop(challenge, None) is None:
                return False  # answered twice at once: one statement only
        rtt_ns = max(0, arrival_ns - entry.sent_ns) + entry.extra_ns
        body = statement_body(
            echo,
            challenge,
            rtt_ns,
            self.r.clock(),
            self.r.lat,
            self.r.lon,
            entry.vm_key_id,
            self.r.landmark_id,
            self.r.key_id,
        )
        statement = body + self.r.key.sign(STATEMENT_CONTEXT + body)
        sock = self.r._sock
        if sock is not None:
            try:
                sock.sendto(statement, addr)
                self.stated += 1
            except OSError:
                pass
        return True

    def _expire(self, now_ns: int) -> None:
        while self._by_challenge:
            first = next(iter(self._by_challenge.values()))
            if first.sent_ns and now_ns - first.sent_ns < PENDING_TTL_NS:
                break
            self._by_challenge.popitem(last=False)
        if len(self._by_echo) > MAX_PENDING // 2:
            self._by_echo.clear()  # flooded with offers never answered: start afresh


# -- the VM side ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sent:
    landmark: Landmark
    pubkey: Ed25519PublicKey
    addr: tuple[str, int]
    challenged: bool = False
    statement: tuple[bytes, Statement] | None = None
    held: tuple[Sample, asyncio.Future[Sample]] | None = None
    timer: asyncio.TimerHandle | None = None


class VmLeg:
    """The VM's half, attached to the UDP prober: offers, answers, and collects statements.

    The echo sample is held until the landmark's statement arrives, or for a grace period after
    the echo reply (then it counts as VM-timed only). A landmark that never challenged is old:
    its echo resolves at once.
    """

    def __init__(
        self,
        key: Ed25519PrivateKey,
        loop: asyncio.AbstractEventLoop,
        grace_s: float = 0.25,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.key = key
        key.sign(b"warm-up")  # the first signature of a process is slow; not on a timed leg
        self.pub = keys.public_raw(key)
        self.key_id = keys.key_id(self.pub)
        self.loop = loop
        self.grace_s = grace_s
        self._sent: dict[bytes, _Sent] = {}
        self.rejected: list[tuple[str, str]] = []  # (landmark id, reason)
        self.on_reject = on_reject

    def request(
        self, nonce: bytes, landmark: Landmark, pubkey: Ed25519PublicKey, addr: tuple[str, int]
    ) -> bytes:
        self._sent[nonce] = _Sent(landmark, pubkey, addr)
        return make_offer_request(nonce, self.pub)

    def takes(self, data: bytes) -> bool:
        return message_type(data) is not None

    def handle(self, data: bytes, src: tuple[str, int], sock: socket.socket) -> None:
        mtype = message_type(data)
        try:
            if mtype == TYPE_CHALLENGE:
                self._challenge(*parse_challenge(data), src, sock)
            elif mtype == TYPE_STATEMENT:
                self._statement(data, parse_statement(data), src)
        except ProtocolError:
            self._reject(None, "malformed timed message")

    def _reject(self, sent: _Sent | None, why: str) -> None:
        lid = sent.landmark.id if sent else "?"
        self.rejected.append((lid, why))
        if self.on_reject is not None:
            self.on_reject(lid, f"timed: {why}")

    def _challenge(
        self, echo: bytes, challenge: bytes, src: tuple[str, int], sock: socket.socket
    ) -> None:
        sent = self._sent.get(echo)
        # Only echoes we sent, from the address we sent them to: we are no signing oracle.
        if sent is None or sent.challenged or src != sent.addr:
            self._reject(sent, "unexpected challenge")
            return
        sent.challenged = True
        try:
            sock.sendto(make_answer(self.key, echo, challenge), src)
        except OSError:
            pass

    def _statement(self, raw: bytes, st: Statement, src: tuple[str, int]) -> None:
        sent = self._sent.get(st.echo_nonce)
        if sent is None or not sent.challenged or sent.statement is not None:
            self._reject(sent, "unexpected statement")
            return
        why = check_statement(st, sent.landmark, sent.pubkey)
        if why is None and st.vm_key_id != self.key_id:
            why = "statement names another VM key"
        if why is not None:
            self._reject(sent, why)
            return
        sent.statement = (raw, st)
        if sent.held is not None:
            self._release(st.echo_nonce)

    def hold(self, nonce: bytes, sample: Sample, fut: asyncio.Future[Sample]) -> bool:
        """Keep an accepted echo sample until its statement arrives; False: resolve it now."""
        sent = self._sent.get(nonce)
        if sent is None or not sent.challenged:
            self._sent.pop(nonce, None)
            return False
        sent.held = (sample, fut)
        if sent.statement is not None:
            self._release(nonce)
        else:
            # The statement trails the echo reply by about one round trip.
            grace = max(self.grace_s, 2.0 * sample.rtt_ms / 1e3)
            sent.timer = self.loop.call_later(grace, self._release, nonce)
        return True

    def _release(self, nonce: bytes) -> None:
        sent = self._sent.pop(nonce, None)
        if sent is None or sent.held is None:
            return
        if sent.timer is not None:
            sent.timer.cancel()
        sample, fut = sent.held
        if sent.statement is not None:
            raw, st = sent.statement
            evidence = dict(sample.evidence or {})
            evidence["timed"] = evidence_record(raw, st.rtt_ms)
            sample = replace(sample, evidence=evidence)
        else:
            self._reject(sent, "no statement in time")
        if not fut.done():
            fut.set_result(sample)

    def close(self) -> None:
        for sent in self._sent.values():
            if sent.timer is not None:
                sent.timer.cancel()
        self._sent.clear()


# -- the VM's identity for the process --------------------------------------------------------

_identity: Ed25519PrivateKey | None = None


def use_identity(key: Ed25519PrivateKey | None) -> None:
    """Offer landmark-timed legs with ``key`` from every UDP prober of this process (None: off)."""
    global _identity
    _identity = key


def current_identity() -> Ed25519PrivateKey | None:
    return _identity
