"""DSSE envelopes (secure-systems-lab/dsse v1) around in-toto Statements.

The signature covers PAE(payloadType, payload), so it binds the payload's type as well as its
bytes, and the payload is signed exactly as stored (no canonical-JSON step to get wrong).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geoprobe.probe import keys

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MAX_ENVELOPE_BYTES = 64 << 20


class EnvelopeError(ValueError):
    """Not a DSSE envelope of ours: names the field that is wrong."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, sig)

    @property
    def digest(self) -> str:
        """SHA-256 of the signed payload: what the next statement chains to."""
        return hashlib.sha256(self.payload).hexdigest()

    def verify(self, pub: Ed25519PublicKey) -> bool:
        kid = keys.key_id(keys.public_raw(pub))
        for keyid, sig in self.signatures:
            if keyid and keyid != kid:
                continue
            try:
                pub.verify(sig, pae(self.payload_type, self.payload))
            except InvalidSignature:
                continue
            return True
        return False

    def statement(self) -> dict[str, Any]:
        """The payload as an in-toto Statement (shape checked, contents not yet)."""
        try:
            st = json.loads(self.payload)
        except (ValueError, RecursionError):
            raise EnvelopeError("payload is not JSON") from None
        if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
            raise EnvelopeError("payload is not an in-toto Statement v1")
        if not isinstance(st.get("predicate"), dict):
            raise EnvelopeError("statement has no predicate object")
        return st

    def to_json(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": k, "sig": base64.b64encode(s).decode("ascii")} for k, s in self.signatures
            ],
        }


def sign(key: Ed25519PrivateKey, statement: dict[str, Any]) -> Envelope:
    payload = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(PAYLOAD_TYPE, payload, ((keys.key_id(keys.public_raw(key)), sig),))


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"field {name!r} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"field {name!r} is not base64") from None


def from_json(raw: Any) -> Envelope:
    if not isinstance(raw, dict):
        raise EnvelopeError("not a JSON object")
    ptype = raw.get("payloadType")
    if ptype != PAYLOAD_TYPE:
        raise EnvelopeError(f"field 'payloadType' is {ptype!r}, not {PAYLOAD_TYPE!r}")
    payload = _b64(raw.get("payload"), "payload")
    sigs = raw.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("field 'signatures' is missing or empty")
    out: list[tuple[str, bytes]] = []
    for s in sigs[:8]:
        if not isinstance(s, dict):
            raise EnvelopeError("field 'signatures' holds a non-object")
        keyid = s.get("keyid", "")
        out.append((keyid if isinstance(keyid, str) else "", _b64(s.get("sig"), "sig")))
    return Envelope(ptype, payload, tuple(out))


def loads(text: str | bytes) -> Envelope:
    if len(text) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("envelope too large")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"not JSON ({type(exc).__name__})") from None
    return from_json(raw)


def dumps(env: Envelope) -> str:
    return json.dumps(env.to_json(), separators=(",", ":")) + "\n"
