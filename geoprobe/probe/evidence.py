"""Signed replies kept as evidence, and their offline re-verification (``geoprobe verify``).

A record holds the whole signed reply (base64), the nonce the prober sent and the prober's own
send/receive times. An auditor with the catalogue can check, without any network: the signature
against the pinned key, that the reply answers that nonce, that it names the catalogue's landmark
at the catalogue's location, that no nonce is used twice (as bytes, however it is spelt), that
the file's times agree with the times the landmark signed, and that every RTT the measurement
reports is backed by a signed reply of its own, whatever its unsigned ``method`` field says.
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
# How far the prober's clock may be from the landmark's before its times are not believed. NTP keeps
# a VM within milliseconds; an auditor of a clock-less VM can widen it (``verify
# --max-clock-offset``).
MAX_CLOCK_OFFSET_S = 10.0
# A measurement's ``timestamp`` is taken when probing that landmark starts; its samples follow
# within the probing run (samples x timeout, paced): an hour covers any run the CLI allows.
MAX_PROBE_SPAN_S = 3600.0
SENT_AT_TOLERANCE_S = 1e-3
MAX_B64_CHARS = 4096  # a reply is at most a few hundred bytes


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
    """Why a decoded reply cannot count for ``landmark`` (None if it can). Shared by prober and
    auditor."""
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
    if not isinstance(value, str) or len(value) > MAX_B64_CHARS:
        raise ValueError(f"field {name!r} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"field {name!r} is not base64") from None


def _ns(value: Any) -> int | None:
    """A prober timestamp (ns since the UNIX epoch), or None if it is not a plausible one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        return None
    return value


@dataclass(frozen=True, slots=True)
class VerifiedReply:
    """One evidence record that passed every check: what the file's RTTs are matched against."""

    nonce: bytes
    rtt_ms: float
    t0_ns: int


def check_record(
    record: Any, landmark: Landmark | None, *, max_clock_offset_s: float = MAX_CLOCK_OFFSET_S
) -> VerifiedReply | str:
    """Re-verify one evidence record offline: the verified reply, or the reason it is bad.

    Beyond the signature, the prober's own (unsigned) times must agree with the landmark's
    signed receive and send times within ``max_clock_offset_s``: a file re-dated as a whole keeps
    the landmark's times, so it fails here.
    """
    if not isinstance(record, Mapping):
        return "not an object"
    if landmark is None:
        return f"landmark {_show(record.get('landmark_id'))} is not in the catalogue"
    if landmark.pubkey is None:
        return "the catalogue pins no public key for this landmark"
    v = record.get("v", VERSION)
    if isinstance(v, bool) or v != VERSION:
        return f"evidence version {_show(v)} is not {VERSION}"
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
    t0, t1, rtt = _ns(record.get("t0_ns")), _ns(record.get("t1_ns")), record.get("rtt_ms")
    if t0 is None or t1 is None:
        return "t0_ns/t1_ns missing or not timestamps"
    if not isinstance(rtt, (int, float)) or isinstance(rtt, bool) or not _finite(rtt):
        return "rtt_ms missing"
    expected = (t1 - t0 - reply.processing_ns) / 1e6
    if expected < 0 or abs(expected - rtt) > RTT_TOLERANCE_MS:
        return f"rtt_ms {rtt} does not follow from the timestamps ({expected:.3f} ms)"
    offset_s = ((reply.t_recv_ns - t0) + (reply.t_send_ns - t1)) / 2e9
    if abs(offset_s) > max_clock_offset_s:
        return (
            f"the landmark's signed times are {_duration(offset_s)} "
            f"{'after' if offset_s > 0 else 'before'} the file's t0_ns/t1_ns "
            f"(more than {max_clock_offset_s:g} s: re-dated?)"
        )
    return VerifiedReply(nonce=nonce, rtt_ms=float(rtt), t0_ns=t0)


def verify_record(
    record: Any, landmark: Landmark | None, *, max_clock_offset_s: float = MAX_CLOCK_OFFSET_S
) -> str | None:
    """Re-verify one evidence record offline; return the reason it is bad, or None."""
    out = check_record(record, landmark, max_clock_offset_s=max_clock_offset_s)
    return out if isinstance(out, str) else None


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s:.1f} s"


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:
        return "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class BadEvidence:
    landmark_id: str
    index: int  # position in the measurement's evidence list (-1: about the measurement itself)
    reason: str

    def __str__(self) -> str:
        where = f"evidence #{self.index}" if self.index >= 0 else "measurement"
        return f"{_printable(self.landmark_id)}: {where}: {_printable(self.reason)}"


def _printable(text: str) -> str:
    """The text on one line: an id from the file must not print lines of its own (a fake ``OK``)."""
    if text.isprintable() and len(text) <= 200:
        return text
    shown = repr(text)[1:-1] if not text.isprintable() else text
    return shown if len(shown) <= 200 else shown[:197] + "..."


def verify_measurements(
    measurements: Iterable[Measurement],
    landmarks: Mapping[str, Landmark],
    *,
    max_clock_offset_s: float = MAX_CLOCK_OFFSET_S,
) -> tuple[int, list[BadEvidence]]:
    """Check every evidence record; return (records checked, bad ones).

    Every RTT in the file must be backed by a distinct verified reply, whatever the unsigned
    ``method`` field says: a file that claims ``tcp`` has nothing an auditor can check. The
    measurement's own times (``timestamp``, ``sent_at``) must agree with the backing replies.
    """
    checked = 0
    bad: list[BadEvidence] = []
    seen_nonces: set[bytes] = set()  # decoded: two spellings of one nonce are one nonce
    for m in measurements:
        backed: list[VerifiedReply] = []
        lm = landmarks.get(m.landmark_id)
        for i, rec in enumerate(m.evidence):
            checked += 1
            out = check_record(rec, lm, max_clock_offset_s=max_clock_offset_s)
            why = out if isinstance(out, str) else None
            if why is None and rec.get("landmark_id") != m.landmark_id:
                why = f"filed under {m.landmark_id!r} but names {_show(rec.get('landmark_id'))}"
            if isinstance(out, VerifiedReply) and why is None:
                if out.nonce in seen_nonces:
                    why = "nonce used twice (replayed reply)"
                else:
                    seen_nonces.add(out.nonce)
                    backed.append(out)
            if why is not None:
                bad.append(BadEvidence(m.landmark_id, i, why))
        bad.extend(_unbacked(m, backed, max_clock_offset_s))
    return checked, bad


def _unbacked(
    m: Measurement, backed: list[VerifiedReply], max_clock_offset_s: float
) -> list[BadEvidence]:
    """The measurement's RTTs and times that no verified reply backs."""
    out: list[BadEvidence] = []
    unsigned = "" if m.method == "udp" else f" (method {_show(m.method)} is not signed)"
    pool = list(backed)
    sent_at = m.sent_at if len(m.sent_at) == len(m.rtts_ms) else None
    if m.sent_at and sent_at is None:
        out.append(BadEvidence(m.landmark_id, -1, "sent_at does not list one time per RTT"))
    for k, rtt in enumerate(m.rtts_ms):
        at = sent_at[k] if sent_at is not None else None
        match = next(
            (
                b
                for b in pool
                if abs(b.rtt_ms - rtt) <= RTT_TOLERANCE_MS
                and (at is None or abs(b.t0_ns / 1e9 - at) <= SENT_AT_TOLERANCE_S)
            ),
            None,
        )
        if match is None:
            why = f"RTT {rtt:.3f} ms is not backed by a signed reply{unsigned}"
            if at is not None and any(abs(b.rtt_ms - rtt) <= RTT_TOLERANCE_MS for b in pool):
                why = f"RTT {rtt:.3f} ms: sent_at {at:.3f} is not when its signed reply was sent"
            out.append(BadEvidence(m.landmark_id, -1, why))
        else:
            pool.remove(match)
    if backed:
        first = min(b.t0_ns for b in backed) / 1e9
        if not first - MAX_PROBE_SPAN_S <= m.timestamp <= first + max_clock_offset_s:
            out.append(
                BadEvidence(
                    m.landmark_id,
                    -1,
                    f"timestamp {m.timestamp:.0f} is {_duration(m.timestamp - first)} from its "
                    "first signed reply (re-dated?)",
                )
            )
    return out
