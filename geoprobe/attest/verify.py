"""Offline verification of an attestation chain, trusting neither the VM nor its clock.

Trusted inputs: the landmarks' pinned keys (the catalogue), the VM's public key and the country
polygons. Everything derived is recomputed: every round's sound region from the landmark-signed
RTTs, its certificate, and the period's verdict. The chain's sequence numbers, digests and period
bounds expose a missing, reordered, repeated or edited envelope, each named by its period.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geoprobe.attest import dsse
from geoprobe.attest.region import Certificate, certify
from geoprobe.attest.rounds import verified_statement
from geoprobe.attest.statement import (
    CLOCK_TOLERANCE_S,
    PREDICATE_TYPE,
    ROUND_WINDOW_S,
    evidence_time,
    hour_label,
    longest_gap,
    summarize,
    utc,
)
from geoprobe.errors import InputError
from geoprobe.geo.regions import CountryLookup
from geoprobe.landmarks import Landmark
from geoprobe.probe import keys

MAX_LINES = 1_000_000
#: A VM-timed RTT this much below the landmark-timed one cannot be honest timing: the VM's
#: answer adds its own processing to the landmark's timer, but not more than this.
SHAPED_ABS_MS = 2.0
SHAPED_SHARE = 0.25
RTT_TOLERANCE_MS = 1e-6


@dataclass(frozen=True, slots=True)
class Entry:
    where: str
    envelope: dsse.Envelope | None
    error: str | None = None


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    periods: list[tuple[str, str, str | None]] = field(default_factory=list)  # label, verdict, cc
    envelopes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def load_entries(path: Path) -> list[Entry]:
    """A chain directory (``*.dsse.json``), one envelope file, or JSON lines of envelopes or of
    CloudEvents carrying them (what a log pipeline collects)."""
    from geoprobe.attest.chain import chain_files

    if path.is_dir():
        files = chain_files(path)
        if not files:
            raise InputError("no attestations (*.dsse.json) in this directory", file=path)
        out = []
        for f in files:
            try:
                out.append(_entry(f.name, f.read_bytes()))
            except OSError as exc:
                out.append(Entry(f.name, None, f"cannot read: {exc.strerror}"))
        return out
    try:
        with path.open("rb") as fh:
            lines = [ln for ln in (fh.readline() for _ in range(MAX_LINES)) if ln.strip()]
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=path) from None
    if not lines:
        raise InputError("empty: no attestations", file=path)
    return [_entry(f"{path.name}:{i}", ln) for i, ln in enumerate(lines, 1)]


def _entry(where: str, data: bytes) -> Entry:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return Entry(where, None, "not JSON (truncated or damaged envelope)")
    if isinstance(raw, dict) and "specversion" in raw:
        raw = raw.get("data")
    try:
        return Entry(where, dsse.from_json(raw))
    except dsse.EnvelopeError as exc:
        return Entry(where, None, f"not a DSSE envelope: {exc}")


@dataclass(slots=True)
class _Header:
    sequence: int
    previous: str | None
    start: int
    end: int
    pred: dict[str, Any]


def _header(env: dsse.Envelope, vm_kid: str) -> _Header:
    st = env.statement()
    if st.get("predicateType") != PREDICATE_TYPE:
        raise dsse.EnvelopeError(f"predicateType is not {PREDICATE_TYPE}")
    pred = st["predicate"]
    subj = st.get("subject")
    names = [s.get("name") for s in subj if isinstance(s, dict)] if isinstance(subj, list) else []
    if f"vm:{vm_kid}" not in names:
        raise dsse.EnvelopeError(f"statement is about {names}, not vm:{vm_kid}")
    seq, prev, period = pred.get("sequence"), pred.get("previous"), pred.get("period")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise dsse.EnvelopeError("field 'sequence' is not a non-negative integer")
    if prev is not None and not isinstance(prev, str):
        raise dsse.EnvelopeError("field 'previous' is not a digest")
    if not isinstance(period, dict):
        raise dsse.EnvelopeError("field 'period' is missing")
    start, end = period.get("start"), period.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end < 2**40):
        raise dsse.EnvelopeError("field 'period' has no valid start/end")
    return _Header(seq, prev, start, end, pred)


def verify_chain(
    entries: Sequence[Entry],
    vm_pub: Ed25519PublicKey,
    landmarks: Mapping[str, Landmark],
    countries: CountryLookup,
    *,
    partial: bool = False,
    until: float | None = None,
    max_gap: float | None = None,
) -> Report:
    rep = Report(envelopes=len(entries))
    vm_kid = keys.key_id(keys.public_raw(vm_pub))
    headers: list[_Header | None] = []
    # First pass: what each entry claims, so a missing sequence found later is "out of order".
    for e in entries:
        h = None
        if e.envelope is not None:
            try:
                h = _header(e.envelope, vm_kid)
            except (dsse.EnvelopeError, KeyError, TypeError):
                h = None
        headers.append(h)
    present = {h.sequence for h in headers if h is not None}
    seen: dict[bytes, str] = {}
    prev: tuple[int, str | None, int, int] | None = None  # seq, digest, start, end
    unsigned = 0
    for e, h in zip(entries, headers, strict=True):
        expected = (
            f" (expected period {hour_label(prev[3], prev[3] + prev[3] - prev[2])})" if prev else ""
        )
        if e.envelope is None:
            rep.problems.append(f"{e.where}: {e.error}{expected}")
            prev = _skip(prev)
            continue
        if not e.envelope.verify(vm_pub):
            unsigned += 1
            kids = ", ".join(k or "?" for k, _ in e.envelope.signatures)
            claimed = f" claiming {hour_label(h.start, h.end)}" if h else ""
            rep.problems.append(
                f"{e.where}{claimed}: signature does not verify with VM key {vm_kid} "
                f"(signed as key id {kids}): edited, or from another VM{expected}"
            )
            prev = _skip(prev)
            continue
        try:
            h = _header(e.envelope, vm_kid)
        except (dsse.EnvelopeError, KeyError, TypeError) as exc:
            rep.problems.append(f"{e.where}: {exc}{expected}")
            prev = _skip(prev)
            continue
        label = hour_label(h.start, h.end)
        _link(rep, prev, h, e.envelope.digest, present, partial, label)
        _contents(rep, h, label, landmarks, countries, vm_kid, seen, max_gap)
        prev = (h.sequence, e.envelope.digest, h.start, h.end)
    if unsigned == len(entries) and entries:
        signers = sorted(
            {k or "?" for e in entries if e.envelope for k, _ in e.envelope.signatures}
        )
        line = (
            f"no envelope verifies with VM key {vm_kid}: the chain is signed as key id(s) "
            f"{', '.join(signers) or 'none'} (another VM's chain, or the wrong --vm-key)"
        )
        rep.problems = [line]
        return rep
    if prev is not None and until is not None and prev[3] + (prev[3] - prev[2]) <= until:
        rep.problems.append(
            f"missing: no attestation after {utc(prev[3])}, up to {utc(until)} "
            f"(last is sequence {prev[0]})"
        )
    return rep


def _skip(prev: tuple[int, str | None, int, int] | None) -> tuple[int, str | None, int, int] | None:
    """After an unusable envelope, expect the one after it; its digest is unknown."""
    if prev is None:
        return None
    seq, _, start, end = prev
    return (seq + 1, None, end, end + (end - start))


def _link(
    rep: Report,
    prev: tuple[int, str | None, int, int] | None,
    h: _Header,
    digest: str,
    present: set[int],
    partial: bool,
    label: str,
) -> None:
    if prev is None:
        if h.sequence != 0 or h.previous is not None:
            length = h.end - h.start
            before = hour_label(h.start - h.sequence * length, h.start) if h.sequence else label
            msg = (
                f"{label}: the chain starts at sequence {h.sequence}, not at its first statement: "
                f"missing {before}"
            )
            (rep.notes if partial else rep.problems).append(msg)
        return
    pseq, pdigest, pstart, pend = prev
    if h.sequence == pseq and digest == pdigest:
        rep.problems.append(f"{label}: repeated: sequence {h.sequence} appears twice in a row")
        return
    if h.sequence <= pseq:
        rep.problems.append(
            f"{label}: out of order: sequence {h.sequence} comes after sequence {pseq} "
            f"({hour_label(pstart, pend)})"
        )
        return
    if h.sequence > pseq + 1 or h.start > pend:
        missing = range(pseq + 1, h.sequence)
        later = [s for s in missing if s in present]
        gap = hour_label(pend, h.start) if h.start > pend else f"sequence {pseq + 1}"
        if later:
            rep.problems.append(
                f"{label}: out of order: sequence(s) {', '.join(map(str, later))} "
                f"({gap}) appear later in the chain"
            )
        else:
            n = max(len(missing), 1)
            rep.problems.append(f"gap: {n} attestation(s) missing for {gap} before {label}")
        return
    if h.start != pend:
        rep.problems.append(
            f"{label}: its period does not follow the previous one ({hour_label(pstart, pend)})"
        )
    if pdigest is not None and h.previous != pdigest:
        rep.problems.append(
            f"{label}: does not chain to the previous envelope ({hour_label(pstart, pend)}): "
            "one of them was replaced"
        )


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _contents(
    rep: Report,
    h: _Header,
    label: str,
    landmarks: Mapping[str, Landmark],
    countries: CountryLookup,
    vm_kid: str,
    seen: dict[bytes, str],
    max_gap: float | None,
) -> None:
    """Recompute every round and the period's verdict from the landmark-signed evidence."""
    pred = h.pred
    bad = rep.problems.append
    allowed = pred.get("allowed")
    rounds = pred.get("rounds")
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
        bad(f"{label}: field 'allowed' is not a list of country codes")
        return
    if not isinstance(rounds, list):
        bad(f"{label}: field 'rounds' is not a list")
        return
    certs: list[Certificate] = []
    vm_only = 0
    # Per period, not per round: a busy VM answers some challenges late, but over a period the
    # landmark's minimum comes within its processing time of the VM's own honest minimum.
    best_vm: dict[str, float] = {}
    best_timed: dict[str, float] = {}
    evidence_times: list[float] = []  # by the landmarks' clocks: the VM cannot spread rounds out
    for i, r in enumerate(rounds):
        where = f"{label}: round {i}"
        if not isinstance(r, dict) or _number(r.get("time")) is None:
            bad(f"{where}: not a round with a time")
            continue
        t = float(r["time"])
        where = f"{label}: round at {utc(t)}"
        if not h.start <= t < h.end:
            bad(f"{where}: lies outside its period")
        timed: dict[str, float] = {}
        signed_ns: list[int] = []
        for s in r.get("statements") or []:
            try:
                raw = base64.b64decode(s if isinstance(s, str) else "?", validate=True)
            except (binascii.Error, ValueError):
                bad(f"{where}: a statement is not base64")
                continue
            st, why = verified_statement(raw, landmarks, vm_kid)
            if st is None:
                bad(f"{where}: {why}")
                continue
            for nonce in (st.echo_nonce, st.challenge):
                if nonce in seen:
                    bad(f"{where}: {st.landmark_id}: statement reused (first in {seen[nonce]})")
                seen[nonce] = label
            signed_at = st.t_ns / 1e9
            if not h.start - CLOCK_TOLERANCE_S <= signed_at <= h.end + CLOCK_TOLERANCE_S:
                bad(
                    f"{where}: {st.landmark_id} signed its RTT at {utc(signed_at)}, "
                    "outside this period"
                )
            timed[st.landmark_id] = min(st.rtt_ms, timed.get(st.landmark_id, math.inf))
            signed_ns.append(st.t_ns)
        if signed_ns and max(signed_ns) - min(signed_ns) > ROUND_WINDOW_S * 1e9:
            span = (max(signed_ns) - min(signed_ns)) / 1e9
            bad(
                f"{where}: its statements were signed {span:.0f} s apart, more than one round "
                f"({ROUND_WINDOW_S:g} s): bounds from different times do not intersect"
            )
        elif (at := evidence_time(signed_ns)) is not None:
            evidence_times.append(at)
        rtts = r.get("rtts")
        if not isinstance(rtts, dict):
            bad(f"{where}: field 'rtts' is not an object")
            rtts = {}
        for lid, v in rtts.items():
            v = v if isinstance(v, dict) else {}
            claimed, vm = _number(v.get("landmark_timed_ms")), _number(v.get("vm_timed_ms"))
            if claimed is not None:
                if lid not in timed:
                    bad(
                        f"{where}: RTT to {lid} is marked landmark-timed, but no statement backs it"
                    )
                elif abs(claimed - timed[lid]) > RTT_TOLERANCE_MS:
                    bad(
                        f"{where}: RTT to {lid} is claimed as {claimed:.3f} ms; "
                        f"the landmark signed {timed[lid]:.3f} ms"
                    )
            if vm is not None:
                if lid in timed:
                    best_vm[lid] = min(vm, best_vm.get(lid, math.inf))
                    best_timed[lid] = min(timed[lid], best_timed.get(lid, math.inf))
                else:
                    vm_only += 1
        cert = certify(landmarks, timed, countries)
        certs.append(cert)
        claim = r.get("certificate")
        claimed_cc = claim.get("country") if isinstance(claim, dict) else None
        if claimed_cc != cert.country:
            bad(
                f"{where}: certificate {claimed_cc or 'none'} is not what the landmark-timed RTTs "
                f"give ({cert.country or 'none'}: {cert.reason})"
            )
    shaped = sorted(
        (lid, v, best_timed[lid])
        for lid, v in best_vm.items()
        if v < best_timed[lid] - max(SHAPED_ABS_MS, SHAPED_SHARE * best_timed[lid])
    )
    if shaped:
        worst = ", ".join(f"{lid} {v:.3f} ms vs {t:.3f} ms" for lid, v, t in shaped[:3])
        if 2 * len(shaped) >= len(best_vm):
            bad(
                f"{label}: the VM-timed RTTs to {len(shaped)} of {len(best_vm)} landmark(s) are "
                f"far below what the landmarks timed themselves ({worst}): "
                "the VM shaped its own timing"
            )
        else:  # a VM that answered a few challenges late (a busy CPU) looks like this too
            rep.notes.append(
                f"{label}: the VM-timed RTTs to {len(shaped)} of {len(best_vm)} landmark(s) are "
                f"far below the landmark-timed ones ({worst})"
            )
    coverage = pred.get("coverage")
    declared = _number(coverage.get("max_gap_s")) if isinstance(coverage, dict) else None
    gap = longest_gap(evidence_times, h.start, h.end)
    verdict, country, reason = summarize(
        certs, allowed, gap, declared if declared is not None else math.inf
    )
    if max_gap is not None and gap > max_gap and pred.get("verdict") == "inside":
        bad(
            f"{label}: no landmark-signed evidence for {gap:.0f} s, more than the {max_gap:g} s "
            "allowed: the period is not proven inside"
        )
    got = pred.get("verdict")
    claim = pred.get("certificate")
    got_cc = claim.get("country") if isinstance(claim, dict) else None
    if got != verdict or got_cc != country:
        bad(
            f"{label}: verdict {got} / certificate {got_cc or 'none'} is not supported: "
            f"the landmark-timed evidence gives {verdict} / {country or 'none'} ({reason})"
        )
    if vm_only:
        rep.notes.append(
            f"{label}: {vm_only} RTT(s) timed by the VM only (landmarks without timed echoes); "
            "they are not evidence and the certificate does not use them"
        )
    rep.periods.append((label, verdict, country))
