"""The residency statement for one period: what the VM signs, and the rules that derive its
verdict, so the auditor can recompute every derived field from the landmark-signed evidence."""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import geoprobe
from geoprobe.attest import dsse
from geoprobe.attest.region import BASIS, Certificate
from geoprobe.attest.rounds import Round
from geoprobe.probe import keys

PREDICATE_TYPE = "https://geoprobe.dev/attestation/residency/v1"
#: Landmark clocks may differ from the period's bounds (the VM's clock) by this much (s).
CLOCK_TOLERANCE_S = 5.0
#: All statements of one round are signed within this many seconds of each other: the region is
#: an intersection, which holds only for bounds on one place at (nearly) one time.
ROUND_WINDOW_S = 30.0


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_label(start: float, end: float) -> str:
    """How every report names a period: its UTC bounds."""
    return f"{utc(start)}..{utc(end)}"


@dataclass(frozen=True, slots=True)
class Period:
    start: int
    end: int

    @property
    def label(self) -> str:
        return hour_label(self.start, self.end)


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch of the period without a round, edges included (s)."""
    edges = [start, *sorted(t for t in times if start <= t < end), end]
    return max(b - a for a, b in itertools.pairwise(edges))


def evidence_time(statement_times_ns: Sequence[int]) -> float | None:
    """When a round happened by the landmarks' clocks (the earliest statement), not the VM's."""
    return min(statement_times_ns) / 1e9 if statement_times_ns else None


def summarize(
    certs: Sequence[Certificate],
    allowed: Sequence[str],
    gap_s: float = 0.0,
    max_gap_s: float = math.inf,
) -> tuple[str, str | None, str]:
    """(verdict, certified country, reason) of a period from its rounds' certificates.

    ``inside``: every round certified in the allowed set, and no stretch longer than
    ``max_gap_s`` without landmark-signed evidence; ``outside``: some round certified in a
    country outside it; ``unproven``: anything else (no rounds, a round without certificate, a
    gap: a VM that leaves rounds out of its statement gains nothing).
    """
    if not certs:
        return "unproven", None, "no rounds in this period"
    outside = [c.country for c in certs if c.country is not None and c.country not in allowed]
    if outside:
        return "outside", None, f"a round is certified in {outside[0]}, outside the allowed set"
    missing = [c for c in certs if c.country is None]
    if missing:
        return (
            "unproven",
            None,
            f"{len(missing)} of {len(certs)} rounds not certified: {missing[0].reason}",
        )
    if gap_s > max_gap_s:
        return (
            "unproven",
            None,
            f"no landmark-signed evidence for {gap_s:.0f} s (max {max_gap_s:g} s)",
        )
    countries = sorted({c.country for c in certs if c.country})
    if len(countries) == 1:
        return "inside", countries[0], f"every round certified in {countries[0]}"
    return "inside", None, f"every round certified in the allowed set ({', '.join(countries)})"


def round_json(r: Round, cert: Certificate) -> dict[str, Any]:
    lids = sorted(set(r.timed) | set(r.vm_timed))
    return {
        "time": r.time,
        "rtts": {
            lid: {
                "landmark_timed_ms": r.timed[lid][0] if lid in r.timed else None,
                "vm_timed_ms": r.vm_timed.get(lid),
            }
            for lid in lids
        },
        "statements": [
            base64.b64encode(r.timed[lid][1]).decode("ascii") for lid in sorted(r.timed)
        ],
        "certificate": {"country": cert.country, "reason": cert.reason},
    }


def event_json(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("id", "type", "time", "subject", "data") if k in ev}


def build(
    *,
    vm_pub: Ed25519PublicKey,
    sequence: int,
    previous: str | None,
    period: Period,
    allowed: Sequence[str],
    rounds: Sequence[tuple[Round, Certificate]],
    events: Sequence[Mapping[str, Any]],
    catalogue: str,
    actions: Sequence[Mapping[str, Any]] = (),
    max_gap_s: float = math.inf,
) -> dict[str, Any]:
    raw = keys.public_raw(vm_pub)
    times = [t for r, _ in rounds if (t := evidence_time(r.statement_times_ns())) is not None]
    gap = longest_gap(times, period.start, period.end)
    verdict, country, reason = summarize([c for _, c in rounds], allowed, gap, max_gap_s)
    return {
        "_type": dsse.STATEMENT_TYPE,
        "subject": [
            {
                "name": f"vm:{keys.key_id(raw)}",
                "digest": {"sha256": hashlib.sha256(raw).hexdigest()},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "vm": {"key_id": keys.key_id(raw), "pubkey": base64.b64encode(raw).decode("ascii")},
            "sequence": sequence,
            "previous": previous,
            "period": {
                "start": period.start,
                "end": period.end,
                "start_utc": utc(period.start),
                "end_utc": utc(period.end),
            },
            "allowed": sorted(allowed),
            "verdict": verdict,
            "certificate": {"country": country, "reason": reason, "basis": BASIS},
            "coverage": {
                "rounds": len(rounds),
                "longest_gap_s": round(gap, 3),
                "max_gap_s": max_gap_s if math.isfinite(max_gap_s) else None,
            },
            "rounds": [round_json(r, c) for r, c in rounds],
            "events": [event_json(e) for e in events],
            "actions": [dict(a) for a in actions],
            "catalogue": catalogue,
            "generator": f"geoprobe {geoprobe.__version__}",
        },
    }
