"""Rounds to attest: the watch's journal of its own rounds and events, or saved measurements.

A round keeps, per landmark, the landmark-timed minimum RTT with the statement that signs it,
and the VM-timed minimum, marked as such. Statements that do not verify against the catalogue
or name another VM key are not kept: the attestation only carries evidence that checks out.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe import events as ev_types
from geoprobe.errors import InputError
from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement, load_measurements
from geoprobe.probe import keys
from geoprobe.probe.protocol import ProtocolError
from geoprobe.probe.timed import Statement, check_statement, parse_statement

JOURNAL_NAME = "rounds.jsonl"
log = logging.getLogger("geoprobe.attest")


@dataclass(slots=True)
class Round:
    time: float  # the VM's clock when the round started (UNIX s)
    timed: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # lid -> (ms, statement)
    vm_timed: dict[str, float] = field(default_factory=dict)  # lid -> ms (the VM's own timing)

    def landmark_timed_rtts(self) -> dict[str, float]:
        return {lid: ms for lid, (ms, _) in self.timed.items()}

    def statement_times_ns(self) -> list[int]:
        return [parse_statement(raw).t_ns for _, raw in self.timed.values()]


def verified_statement(
    raw: bytes, landmarks: Mapping[str, Landmark], vm_key_id: str
) -> tuple[Statement | None, str]:
    """Decode and check one landmark statement; (statement, "") or (None, why not)."""
    try:
        st = parse_statement(raw)
    except ProtocolError as exc:
        return None, f"statement does not decode: {exc}"
    lm = landmarks.get(st.landmark_id)
    if lm is None:
        return None, f"statement from {st.landmark_id!r}, which is not in the catalogue"
    if lm.pubkey is None:
        return None, f"the catalogue pins no key for {lm.id!r}"
    why = check_statement(st, lm, keys.public_from_raw(lm.pubkey))
    if why is not None:
        return None, f"{lm.id}: {why}"
    if st.vm_key_id != vm_key_id:
        return None, f"{lm.id}: statement answers VM key {st.vm_key_id}, not {vm_key_id}"
    return st, ""


def round_from(
    measurements: Sequence[Measurement],
    t: float,
    landmarks: Mapping[str, Landmark],
    vm_key_id: str,
) -> Round:
    r = Round(time=t)
    for m in measurements:
        if m.min_rtt is not None:
            r.vm_timed[m.landmark_id] = min(m.min_rtt, r.vm_timed.get(m.landmark_id, m.min_rtt))
        for e in m.evidence:
            timed = e.get("timed") if isinstance(e, Mapping) else None
            if not isinstance(timed, Mapping) or not isinstance(timed.get("statement"), str):
                continue
            try:
                raw = base64.b64decode(timed["statement"], validate=True)
            except (binascii.Error, ValueError):
                continue
            st, _ = verified_statement(raw, landmarks, vm_key_id)
            if st is None or st.landmark_id != m.landmark_id:
                continue
            best = r.timed.get(st.landmark_id)
            if best is None or st.rtt_ms < best[0]:
                r.timed[st.landmark_id] = (st.rtt_ms, raw)
    return r


class Journal:
    """Append-only JSON lines the watch writes each round (measurements) and event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.skipped = 0  # unreadable lines met by the last read (reported, never fatal)
        self.write_errors = 0

    def _append(self, record: dict[str, Any]) -> None:
        """Append one line; a full disk costs the attestation this round, never the watch."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                self.write_errors += 1
                log.warning("cannot journal for attestation: %s", exc)
                return
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = "\n" + line  # a crash tore the last line: do not glue onto it
                os.write(fd, line.encode())
            except OSError as exc:
                self.write_errors += 1
                log.warning("cannot journal for attestation: %s", exc)
            finally:
                os.close(fd)

    def round(self, t: float, measurements: Iterable[Measurement]) -> None:
        self._append({"round": t, "measurements": [m.to_json() for m in measurements]})

    def event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") != ev_types.FIX:  # fixes are the rounds themselves
            self._append({"event": dict(event)})

    def read(
        self, since: float, landmarks: Mapping[str, Landmark], vm_key_id: str
    ) -> tuple[list[Round], list[dict[str, Any]]]:
        """Rounds and events at or after ``since``; a torn or damaged line is skipped, counted."""
        self.skipped = 0
        rounds: list[Round] = []
        evs: list[dict[str, Any]] = []
        try:
            f = self.path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return rounds, evs
        except OSError as exc:
            raise InputError(f"cannot read the journal: {exc.strerror}", file=self.path) from None
        with f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise TypeError("not an object")
                    t = rec.get("round")
                    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
                        if t >= since:
                            ms = [
                                Measurement.from_json(x, file=str(self.path), index=n)
                                for x in rec.get("measurements", [])
                            ]
                            rounds.append(round_from(ms, float(t), landmarks, vm_key_id))
                    elif isinstance(rec.get("event"), dict):
                        evs.append(rec["event"])
                    else:
                        raise TypeError("neither a round nor an event")
                except (ValueError, TypeError, RecursionError, InputError):
                    self.skipped += 1
        return rounds, evs


def journal_path(state_dir: Path) -> Path:
    return state_dir / "attest" / JOURNAL_NAME


def measurement_rounds(
    directory: Path, landmarks: Mapping[str, Landmark], vm_key_id: str
) -> Iterator[Round]:
    """One round per saved measurement file (``geoprobe locate --save``), dated by its records."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise InputError("no measurement files (*.json)", file=directory)
    for f in files:
        ms, _ = load_measurements(f)
        stamps = [m.timestamp for m in ms if m.timestamp]
        if stamps:
            yield round_from(ms, min(stamps), landmarks, vm_key_id)
