"""Wire format of the key release protocol (docs/keyrelease.md), version 1, over UDP.

Five messages, each starting with the magic ``GPKR``, the version, the type and two reserved
bytes. Requests and answers are padded to ``PADDED_LEN`` so that nothing the server sends back is
larger than what caused it: a spoofed source address gains no amplification. Integers are
big-endian. Parsers never trust what they decode: signatures are checked by the caller against
keys pinned in its own config.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"GPKR"
VERSION = 1
REQUEST, CHALLENGE, ANSWER, RELEASE, REFUSAL = 1, 2, 3, 4, 5
REF_LEN = 32  # request ids and challenges
SIG_LEN = 64
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
PADDED_LEN = 512
MAX_DATAGRAM = 2048
MAX_ID_LEN = 64  # client ids, server ids and secret names
MAX_SECRET_LEN = 256
MAX_REASON_LEN = 300
DEFAULT_PORT = 7208

# Domain separation: a signature made here means nothing in the signed echo or anywhere else.
ANSWER_CONTEXT = b"geoprobe-keyrelease/1 answer\x00"
SERVER_CONTEXT = b"geoprobe-keyrelease/1 server\x00"

_HEADER = struct.Struct("!4sBBH")
_RELEASE_FIXED = struct.Struct(f"!{REF_LEN}sQQ{KEY_LEN}s{NONCE_LEN}sH")


class WireError(ValueError):
    """A datagram that is not a well-formed message of this protocol."""


def _lp(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def check_id(text: str, what: str) -> bytes:
    """A client id, server id or secret name as sent: 1-64 bytes of printable ASCII."""
    raw = text.encode("ascii", "replace")
    if not 1 <= len(raw) <= MAX_ID_LEN or not raw.isascii() or not all(33 <= b < 127 for b in raw):
        raise ValueError(f"{what} must be 1-{MAX_ID_LEN} printable ASCII characters, no spaces")
    return raw


def _header(mtype: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, mtype, 0)


def _pad(body: bytes) -> bytes:
    return body + bytes(PADDED_LEN - len(body))


def message_type(data: bytes) -> int:
    """The type of a datagram of this protocol; WireError for anything else."""
    if len(data) < _HEADER.size or len(data) > MAX_DATAGRAM:
        raise WireError(f"datagram of {len(data)} bytes")
    magic, version, mtype, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not a key release message")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    if mtype not in (REQUEST, CHALLENGE, ANSWER, RELEASE, REFUSAL):
        raise WireError(f"unknown message type {mtype}")
    if reserved != 0:
        raise WireError("reserved bits set")
    return int(mtype)


def _read_id(data: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos >= len(data):
        raise WireError(f"truncated before the {what}")
    n = data[pos]
    pos += 1
    raw = bytes(data[pos : pos + n])
    if not 1 <= n <= MAX_ID_LEN or len(raw) != n or not all(33 <= b < 127 for b in raw):
        raise WireError(f"bad {what}")
    return raw.decode("ascii"), pos + n


def _expect(data: bytes, mtype: int, name: str) -> None:
    if message_type(data) != mtype:
        raise WireError(f"not a {name}")


# --- request: client -> server ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    request_id: bytes
    client_id: str
    name: str


def build_request(request_id: bytes, client_id: str, name: str) -> bytes:
    if len(request_id) != REF_LEN:
        raise ValueError(f"request id must be {REF_LEN} bytes")
    body = (
        _header(REQUEST)
        + request_id
        + _lp(check_id(client_id, "client id"))
        + _lp(check_id(name, "secret name"))
    )
    return _pad(body)


def parse_request(data: bytes) -> Request:
    _expect(data, REQUEST, "request")
    if len(data) < PADDED_LEN:
        raise WireError(f"request shorter than {PADDED_LEN} bytes")
    pos = _HEADER.size
    rid = bytes(data[pos : pos + REF_LEN])
    client, pos = _read_id(data, pos + REF_LEN, "client id")
    name, pos = _read_id(data, pos, "secret name")
    return Request(rid, client, name)


# --- challenge: server -> client ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    request_id: bytes
    challenge: bytes
    ttl_ms: int
    server_id: str


_CHALLENGE_FIXED = struct.Struct(f"!{REF_LEN}s{REF_LEN}sI")


def build_challenge(request_id: bytes, challenge: bytes, ttl_ms: int, server_id: str) -> bytes:
    return (
        _header(CHALLENGE)
        + _CHALLENGE_FIXED.pack(request_id, challenge, ttl_ms)
        + _lp(check_id(server_id, "server id"))
    )


def parse_challenge(data: bytes) -> Challenge:
    _expect(data, CHALLENGE, "challenge")
    if len(data) < _HEADER.size + _CHALLENGE_FIXED.size:
        raise WireError("challenge too short")
    rid, chal, ttl = _CHALLENGE_FIXED.unpack_from(data, _HEADER.size)
    sid, pos = _read_id(data, _HEADER.size + _CHALLENGE_FIXED.size, "server id")
    if pos != len(data):
        raise WireError("trailing bytes after the challenge")
    return Challenge(rid, chal, ttl, sid)


# --- answer: client -> server -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    challenge: bytes
    signature: bytes


def answer_signed_bytes(challenge: bytes, name: str, server_id: str, client_id: str) -> bytes:
    """What the client signs: the challenge bound to the secret, the server and itself."""
    return (
        ANSWER_CONTEXT
        + challenge
        + _lp(check_id(name, "secret name"))
        + _lp(check_id(server_id, "server id"))
        + _lp(check_id(client_id, "client id"))
    )


def build_answer(challenge: bytes, signature: bytes) -> bytes:
    if len(challenge) != REF_LEN or len(signature) != SIG_LEN:
        raise ValueError("bad challenge or signature length")
    return _pad(_header(ANSWER) + challenge + signature)


def parse_answer(data: bytes) -> Answer:
    _expect(data, ANSWER, "answer")
    if len(data) < PADDED_LEN:
        raise WireError(f"answer shorter than {PADDED_LEN} bytes")
    pos = _HEADER.size
    return Answer(
        bytes(data[pos : pos + REF_LEN]), bytes(data[pos + REF_LEN : pos + REF_LEN + SIG_LEN])
    )


# --- release: server -> client ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    challenge: bytes
    rtt_ns: int
    bound_ns: int
    ephemeral: bytes  # the server's one-time X25519 public key
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    signed: bytes  # everything the server signed (without the context)
    aad: bytes  # the fixed part, authenticated by the AEAD too


def release_fixed(
    challenge: bytes, rtt_ns: int, bound_ns: int, ephemeral: bytes, nonce: bytes, ct_len: int
) -> bytes:
    return _header(RELEASE) + _RELEASE_FIXED.pack(
        challenge, rtt_ns, bound_ns, ephemeral, nonce, ct_len
    )


def parse_release(data: bytes) -> Release:
    _expect(data, RELEASE, "release")
    fixed = _HEADER.size + _RELEASE_FIXED.size
    if len(data) < fixed + TAG_LEN + 1 + SIG_LEN:
        raise WireError("release too short")
    chal, rtt, bound, eph, nonce, ct_len = _RELEASE_FIXED.unpack_from(data, _HEADER.size)
    if not TAG_LEN < ct_len <= MAX_SECRET_LEN + TAG_LEN or fixed + ct_len + SIG_LEN != len(data):
        raise WireError("bad ciphertext length")
    data = bytes(data)
    return Release(
        challenge=chal,
        rtt_ns=rtt,
        bound_ns=bound,
        ephemeral=eph,
        nonce=nonce,
        ciphertext=data[fixed : fixed + ct_len],
        signature=data[fixed + ct_len :],
        signed=data[: fixed + ct_len],
        aad=data[:fixed],
    )


# --- refusal: server -> client ------------------------------------------------------------


class Why(IntEnum):
    """Why a server refused. The client asks again after a transient one, never after the rest."""

    MALFORMED = 1
    UNKNOWN_CLIENT = 2
    NOT_ALLOWED = 3
    BUSY = 4
    UNKNOWN_CHALLENGE = 5
    OTHER_ADDRESS = 6
    BAD_SIGNATURE = 7
    EXPIRED = 8
    TOO_SLOW = 9

    @property
    def transient(self) -> bool:
        """A fresh challenge may succeed: queueing only ever adds delay, so one slow round trip
        says less than the fastest of a few (each is still timed and bounded on its own)."""
        return self in (Why.BUSY, Why.EXPIRED, Why.TOO_SLOW)


@dataclass(frozen=True, slots=True)
class Refusal:
    ref: bytes  # the request id or the challenge it refuses
    why: Why
    reason: str
    signature: bytes
    signed: bytes


def refusal_body(ref: bytes, why: Why, reason: str) -> bytes:
    raw = reason.encode("utf-8")[:MAX_REASON_LEN]
    # a reason cut inside a UTF-8 sequence loses the partial character
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return _header(REFUSAL) + ref + struct.pack("!BH", why, len(raw)) + raw


def parse_refusal(data: bytes) -> Refusal:
    _expect(data, REFUSAL, "refusal")
    pos = _HEADER.size
    if len(data) < pos + REF_LEN + 3 + SIG_LEN:
        raise WireError("refusal too short")
    data = bytes(data)
    ref = data[pos : pos + REF_LEN]
    code, n = struct.unpack_from("!BH", data, pos + REF_LEN)
    try:
        why = Why(code)
    except ValueError:
        raise WireError(f"unknown refusal code {code}") from None
    start = pos + REF_LEN + 3
    if n > MAX_REASON_LEN or start + n + SIG_LEN != len(data):
        raise WireError("bad reason length")
    try:
        reason = data[start : start + n].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("reason is not UTF-8") from None
    return Refusal(ref, why, reason, data[start + n :], data[: start + n])
