"""Wire format of geoprobe's signed UDP echo (see docs/protocol.md).

A request carries a fresh 32-byte nonce and is padded so that a reply is never larger than the
request that caused it (no amplification). A reply carries the nonce, the landmark's receive and
send timestamps, its id, location and key id, and an Ed25519 signature over all of these, so a
closer host cannot answer in the landmark's name, and an auditor can check the reply later.
All integers and floats are big-endian.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"GPEC"
VERSION = 1
TYPE_REQUEST = 1
TYPE_REPLY = 2
NONCE_LEN = 32
SIG_LEN = 64
REQUEST_LEN = 320
MAX_ID_LEN = 128
MAX_KEY_ID_LEN = 32
DEFAULT_PORT = 7207
# Domain separation: a signature made for this protocol means nothing anywhere else.
SIGN_CONTEXT = b"geoprobe-echo/1\x00"

_HEADER = struct.Struct("!4sBBH")  # magic, version, type, reserved
_FIXED = struct.Struct("!4sBBH32sQQdd")  # header, nonce, t_recv_ns, t_send_ns, lat, lon


class ProtocolError(ValueError):
    """A datagram that is not a well-formed message of this protocol."""


@dataclass(frozen=True, slots=True)
class Reply:
    nonce: bytes
    t_recv_ns: int  # landmark clock when the request arrived
    t_send_ns: int  # landmark clock when the reply left
    landmark_id: str
    lat: float
    lon: float
    key_id: str
    signature: bytes
    signed: bytes  # the bytes the signature covers (without SIGN_CONTEXT)

    @property
    def processing_ns(self) -> int:
        return self.t_send_ns - self.t_recv_ns

    def verify(self, pubkey: Ed25519PublicKey) -> bool:
        try:
            pubkey.verify(self.signature, SIGN_CONTEXT + self.signed)
        except InvalidSignature:
            return False
        return True


def make_request(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    head = _HEADER.pack(MAGIC, VERSION, TYPE_REQUEST, 0) + nonce
    return head + bytes(REQUEST_LEN - len(head))


def parse_request(data: bytes) -> bytes:
    """Return the nonce of a valid request; short requests are refused (they could amplify)."""
    if len(data) < REQUEST_LEN:
        raise ProtocolError(f"request shorter than {REQUEST_LEN} bytes")
    magic, version, mtype, _ = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or mtype != TYPE_REQUEST:
        raise ProtocolError("not a geoprobe echo request")
    return bytes(data[_HEADER.size : _HEADER.size + NONCE_LEN])


def reply_body(
    nonce: bytes,
    t_recv_ns: int,
    t_send_ns: int,
    landmark_id: str,
    lat: float,
    lon: float,
    key_id: str,
) -> bytes:
    """Everything the signature covers, in wire order."""
    lid = landmark_id.encode("utf-8")
    kid = key_id.encode("ascii")
    if not 1 <= len(lid) <= MAX_ID_LEN:
        raise ValueError(f"landmark id must be 1-{MAX_ID_LEN} bytes of UTF-8")
    if len(kid) > MAX_KEY_ID_LEN:
        raise ValueError(f"key id must be at most {MAX_KEY_ID_LEN} bytes")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    return (
        _FIXED.pack(MAGIC, VERSION, TYPE_REPLY, 0, nonce, t_recv_ns, t_send_ns, lat, lon)
        + bytes([len(lid)])
        + lid
        + bytes([len(kid)])
        + kid
    )


def sign_body(key: Ed25519PrivateKey, body: bytes) -> bytes:
    return body + key.sign(SIGN_CONTEXT + body)


def build_reply(
    key: Ed25519PrivateKey,
    nonce: bytes,
    t_recv_ns: int,
    t_send_ns: int,
    landmark_id: str,
    lat: float,
    lon: float,
    key_id: str,
) -> bytes:
    return sign_body(key, reply_body(nonce, t_recv_ns, t_send_ns, landmark_id, lat, lon, key_id))


def parse_reply(data: bytes) -> Reply:
    """Decode a reply without trusting it: the caller checks the signature against a pinned key."""
    data = bytes(data)
    if len(data) < _FIXED.size + 2 + SIG_LEN:
        raise ProtocolError("reply too short")
    magic, version, mtype, _, nonce, t_recv, t_send, lat, lon = _FIXED.unpack_from(data)
    if magic != MAGIC or version != VERSION or mtype != TYPE_REPLY:
        raise ProtocolError("not a geoprobe echo reply")
    pos = _FIXED.size
    id_len = data[pos]
    pos += 1
    if id_len == 0 or pos + id_len >= len(data):
        raise ProtocolError("bad landmark id length")
    try:
        lid = data[pos : pos + id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("landmark id is not UTF-8") from None
    pos += id_len
    kid_len = data[pos]
    pos += 1
    if kid_len > MAX_KEY_ID_LEN or pos + kid_len + SIG_LEN != len(data):
        raise ProtocolError("bad length")
    try:
        kid = data[pos : pos + kid_len].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("key id is not ASCII") from None
    pos += kid_len
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ProtocolError("location is not finite")
    return Reply(
        nonce=nonce,
        t_recv_ns=t_recv,
        t_send_ns=t_send,
        landmark_id=lid,
        lat=lat,
        lon=lon,
        key_id=kid,
        signature=data[pos:],
        signed=data[:pos],
    )
