"""Signed replies kept as evidence, and their offline re-verification (``geoprobe verify``).

A record holds the whole signed reply (base64), the nonce the prober sent and the prober's own
send/receive times. An auditor with the catalogue can check, without any network: the signature
against the pinned key, that the reply answers that nonce, that it names the catalogue's landmark
at the catalogue's location, that no nonce is used twice, and that every RTT the measurement
reports is backed by a signed reply.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe import keys
from geoprobe.probe.protocol import ProtocolError, Reply, parse_reply

VERSION = 1
LOCATION_TOLERANCE_DEG = 1e-6  # ~0.1 m: the signed float and the catalogue's JSON float must agree
RTT_TOLERANCE_MS = 1e-3


def make_evidence(
    landmark_id: str, nonce: bytes, reply: bytes, t0_ns: int, t1_ns: int, rtt_ms: float
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "landmark_id": landmark_id,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "reply": base64.b64encode(reply).decode("ascii"),
        "t0_ns": t0_ns,
        "t1_ns": t1_ns,
        "rtt_ms": rtt_ms,
    }


def check_reply(reply: Reply, landmark: Landmark, pubkey: Ed25519PublicKey) -> str | None:
    """Why a decoded reply cannot count for ``landmark`` (None if it can). Shared by prober and auditor."""
    if not reply.verify(pubkey):
        return "bad signature"
    if landmark.key_id and reply.key_id != landmark.key_id:
        return "wrong key id"
    if reply.landmark_id != landmark.id:
        return "wrong landmark id"
    if (
        abs(reply.lat - landmark.lat) > LOCATION_TOLERANCE_DEG
        or abs(reply.lon - landmark.lon) > LOCATION_TOLERANCE_DEG
    ):
        return "location mismatch"
    if reply.t_send_ns < reply.t_recv_ns:
        return "bad timestamps"
    return None


def _b64(record: Mapping[str, Any], name: str) -> bytes:
    value = record.get(name)
    if value is None:
        raise ValueError(f"field {name!r} missing")
    try:
        return base64.b64decode(value if isinstance(value, str) else "?", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"field {name!r} is not base64") from None


def verify_record(record: Any, landmark: Landmark | None) -> str | None:
    """Re-verify one evidence record offline; return the reason it is bad, or None."""
    if not isinstance(record, Mapping):
        return "not an object"
    if landmark is None:
        return f"landmark {record.get('landmark_id')!r} is not in the catalogue"
    if landmark.pubkey is None:
        return "the catalogue pins no public key for this landmark"
    try:
        nonce = _b64(record, "nonce")
        raw = _b64(record, "reply")
    except ValueError as exc:
        return str(exc)
    try:
        reply = parse_reply(raw)
    except ProtocolError as exc:
        return f"reply does not decode: {exc}"
    why = check_reply(reply, landmark, keys.public_from_raw(landmark.pubkey))
    if why:
        return why
    if reply.nonce != nonce:
        return "reply answers another nonce"
    t0, t1, rtt = record.get("t0_ns"), record.get("t1_ns"), record.get("rtt_ms")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (t0, t1)):
        return "t0_ns/t1_ns missing"
    if not isinstance(rtt, (int, float)) or isinstance(rtt, bool) or not math.isfinite(rtt):
        return "rtt_ms missing"
    assert isinstance(t0, int) and isinstance(t1, int)
    expected = (t1 - t0 - reply.processing_ns) / 1e6
    if expected < 0 or abs(expected - rtt) > RTT_TOLERANCE_MS:
        return f"rtt_ms {rtt} does not follow from the timestamps ({expected:.3f} ms)"
    return None


@dataclass(frozen=True, slots=True)
class BadEvidence:
    landmark_id: str
    index: int  # position in the measurement's evidence list (-1: about the measurement itself)
    reason: str

    def __str__(self) -> str:
        where = f"evidence #{self.index}" if self.index >= 0 else "measurement"
        return f"{self.landmark_id}: {where}: {self.reason}"


def verify_measurements(
    measurements: Iterable[Measurement], landmarks: Mapping[str, Landmark]
) -> tuple[int, list[BadEvidence]]:
    """Check every evidence record; return (records checked, bad ones)."""
    checked = 0
    bad: list[BadEvidence] = []
    seen_nonces: set[str] = set()
    for m in measurements:
        backed: list[float] = []
        for i, rec in enumerate(m.evidence):
            checked += 1
            lm = landmarks.get(m.landmark_id)
            why = verify_record(rec, lm)
            if why is None and rec.get("landmark_id") != m.landmark_id:
                why = f"filed under {m.landmark_id!r} but names {rec.get('landmark_id')!r}"
            if why is None and rec["nonce"] in seen_nonces:
                why = "nonce used twice (replayed reply)"
            if why is None:
                seen_nonces.add(rec["nonce"])
                backed.append(float(rec["rtt_ms"]))
            else:
                bad.append(BadEvidence(m.landmark_id, i, why))
        if m.method == "udp":
            for rtt in m.rtts_ms:
                match = next((b for b in backed if abs(b - rtt) <= RTT_TOLERANCE_MS), None)
                if match is None:
                    bad.append(
                        BadEvidence(
                            m.landmark_id, -1, f"RTT {rtt:.3f} ms is not backed by a signed reply"
                        )
                    )
                else:
                    backed.remove(match)
    return checked, bad
