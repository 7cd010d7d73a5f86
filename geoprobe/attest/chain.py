"""Issue the chain: one envelope per closed period, each naming the previous one's digest.

Periods are aligned to multiples of their length (UTC hours by default). A period in which the
watch recorded no round still gets a statement ("unproven: no rounds"), so silence is never
mistaken for a gap, nor a gap for silence. Envelopes are written to a temp file and renamed.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.attest import dsse, statement
from geoprobe.attest.region import Certificate, certify
from geoprobe.attest.rounds import Round
from geoprobe.errors import InputError
from geoprobe.geo.regions import CountryLookup
from geoprobe.landmarks import Landmark

SUFFIX = ".dsse.json"
DEFAULT_PERIOD_S = 3600
#: An hour with a stretch this long (s) without landmark-signed evidence is not "inside".
DEFAULT_MAX_GAP_S = 600.0


@dataclass(frozen=True, slots=True)
class Issued:
    path: Path
    envelope: dsse.Envelope
    sequence: int
    period: statement.Period
    verdict: str


def file_name(sequence: int, period: statement.Period) -> str:
    return f"{sequence:08d}-{statement.utc(period.start).replace(':', '')}{SUFFIX}"


def chain_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.is_file())


def head(directory: Path) -> tuple[int, str, int] | None:
    """(sequence, digest, period end) of the newest envelope, or None for a new chain."""
    files = chain_files(directory)
    if not files:
        return None
    last = files[-1]
    try:
        env = dsse.loads(last.read_bytes())
        pred = env.statement()["predicate"]
        return int(pred["sequence"]), env.digest, int(pred["period"]["end"])
    except (OSError, dsse.EnvelopeError, KeyError, TypeError, ValueError):
        raise InputError(
            "the chain's last envelope is unreadable; refusing to extend it", file=last
        ) from None


def _write(directory: Path, name: str, env: dsse.Envelope) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dsse.dumps(env))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def issue(
    directory: Path,
    key: Ed25519PrivateKey,
    rounds: Iterable[Round],
    events: Sequence[Mapping[str, Any]],
    *,
    landmarks: Mapping[str, Landmark],
    allowed: Sequence[str],
    countries: CountryLookup,
    catalogue: str,
    now: float,
    period_s: int = DEFAULT_PERIOD_S,
    on_issued: Callable[[Issued], None] | None = None,
    actions: Sequence[Mapping[str, Any]] = (),
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> list[Issued]:
    """Attest every period that closed before ``now`` and follows the chain's head."""
    if period_s < 1:
        raise InputError(f"must be at least 1 s, got {period_s}", field="period")
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        return _issue(
            directory,
            key,
            rounds,
            events,
            landmarks=landmarks,
            allowed=allowed,
            countries=countries,
            catalogue=catalogue,
            now=now,
            period_s=period_s,
            on_issued=on_issued,
            actions=actions,
            max_gap_s=max_gap_s,
        )


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One issuer at a time (a cron run next to a --follow one): never two statements with one
    sequence number."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _issue(
    directory: Path,
    key: Ed25519PrivateKey,
    rounds: Iterable[Round],
    events: Sequence[Mapping[str, Any]],
    *,
    landmarks: Mapping[str, Landmark],
    allowed: Sequence[str],
    countries: CountryLookup,
    catalogue: str,
    now: float,
    period_s: int,
    on_issued: Callable[[Issued], None] | None,
    actions: Sequence[Mapping[str, Any]],
    max_gap_s: float,
) -> list[Issued]:
    top = head(directory)
    all_rounds = sorted(rounds, key=lambda r: r.time)
    if top is None:
        if not all_rounds:
            return []
        start = int(math.floor(all_rounds[0].time / period_s) * period_s)
        seq, prev = 0, None
    else:
        seq, prev, start = top[0] + 1, top[1], top[2]
    out: list[Issued] = []
    while start + period_s <= now:
        period = statement.Period(start, start + period_s)
        inside = [_in_period(r, period) for r in all_rounds if period.start <= r.time < period.end]
        certs: list[tuple[Round, Certificate]] = [
            (r, certify(landmarks, r.landmark_timed_rtts(), countries)) for r in inside
        ]
        evs = [e for e in events if period.start <= _event_time(e) < period.end]
        acts = [a for a in actions if period.start <= float(a.get("ts") or -1) < period.end]
        st = statement.build(
            vm_pub=key.public_key(),
            sequence=seq,
            previous=prev,
            period=period,
            allowed=allowed,
            rounds=certs,
            events=evs,
            actions=acts,
            catalogue=catalogue,
            max_gap_s=max_gap_s,
        )
        env = dsse.sign(key, st)
        path = _write(directory, file_name(seq, period), env)
        issued = Issued(path, env, seq, period, st["predicate"]["verdict"])
        out.append(issued)
        if on_issued is not None:
            on_issued(issued)
        seq, prev, start = seq + 1, env.digest, period.end
    return out


def _in_period(r: Round, period: statement.Period) -> Round:
    """The round without statements a landmark signed outside the period (its clock is off):
    the auditor would refuse them as evidence moved from another hour."""
    from geoprobe.probe.timed import parse_statement

    lo, hi = period.start - statement.CLOCK_TOLERANCE_S, period.end + statement.CLOCK_TOLERANCE_S
    timed = {
        lid: (ms, raw)
        for lid, (ms, raw) in r.timed.items()
        if lo <= parse_statement(raw).t_ns / 1e9 <= hi
    }
    return Round(r.time, timed, dict(r.vm_timed))


def _event_time(ev: Mapping[str, Any]) -> float:
    from datetime import datetime

    t = ev.get("time")
    if not isinstance(t, str):
        return -1.0
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        return -1.0
