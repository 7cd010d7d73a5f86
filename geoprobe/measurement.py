"""Measurement records: what probing produced, in the RIPE Atlas ping result shape where it fits.

A record keeps every sample (``result``), the minimum that the engine uses, why a landmark
failed, and the signed replies that an auditor can verify again (``evidence``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError
from geoprobe.jsonfile import read_json

FORMAT = "geoprobe-measurements/1"


@dataclass(slots=True)
class Measurement:
    """All samples to one landmark. ``failure`` is set when no sample came back."""

    landmark_id: str
    method: str  # "udp", "tcp", "icmp" or "replay"
    dst_addr: str = ""
    rtts_ms: list[float] = field(default_factory=list)
    sent: int = 0
    failure: str | None = None
    path: str | None = None  # how the method was carried out, e.g. "icmp-raw", "icmp-dgram"
    timestamp: float = field(default_factory=time.time)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    clock_offsets_ms: list[float] = field(default_factory=list)
    rejected: dict[str, int] = field(
        default_factory=dict
    )  # reason -> count (forged, replayed, ...)
    # When each answered sample left (UNIX s, our clock), in the order of rtts_ms: a round that
    # spans a migration's pause is told apart by time (see watch.signals.clock).
    sent_at: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rtts_ms)

    @property
    def landmark_timed_rtts_ms(self) -> list[float]:
        """RTTs the landmark timed itself (``probe.timed``); ``rtts_ms`` are timed by this VM."""
        return [
            float(t["rtt_ms"])
            for e in self.evidence
            if isinstance(e, Mapping)
            and isinstance(t := e.get("timed"), Mapping)
            and isinstance(t.get("rtt_ms"), (int, float))
        ]

    @property
    def min_rtt(self) -> float | None:
        """Queueing only adds delay, so the minimum is the best estimate of the path's RTT."""
        return min(self.rtts_ms) if self.rtts_ms else None

    def to_json(self) -> dict[str, Any]:
        """RIPE ping result shape (``result``, ``min``, ``avg``, ``max``, ``sent``, ``rcvd``) plus
        ours."""
        rtts = self.rtts_ms
        out: dict[str, Any] = {
            "type": "ping",
            "landmark_id": self.landmark_id,
            "method": self.method,
            "proto": {"udp": "UDP", "tcp": "TCP", "icmp": "ICMP"}.get(
                self.method, self.method.upper()
            ),
            "dst_addr": self.dst_addr,
            "timestamp": self.timestamp,
            "sent": self.sent,
            "rcvd": len(rtts),
            "min": min(rtts) if rtts else -1,
            "avg": sum(rtts) / len(rtts) if rtts else -1,
            "max": max(rtts) if rtts else -1,
            "result": [{"rtt": r} for r in rtts] + [{"x": "*"}] * max(0, self.sent - len(rtts)),
        }
        if self.failure:
            out["failure"] = self.failure
        if self.path:
            out["path"] = self.path
        if self.evidence:
            out["evidence"] = self.evidence
            if timed := self.landmark_timed_rtts_ms:
                out["landmark_timed_rtts"] = timed  # ``result`` holds the VM-timed ones
        if self.clock_offsets_ms:
            out["clock_offsets_ms"] = self.clock_offsets_ms
        if self.rejected:
            out["rejected"] = self.rejected
        if self.sent_at:
            out["sent_at"] = self.sent_at
        return out

    @classmethod
    def from_json(cls, raw: Any, *, file: str = "<measurements>", index: int = 0) -> Measurement:
        """Validate one record; every field of the wrong type or size is a one-line InputError.

        Nothing here allocates more than the record itself holds: ``sent`` may not exceed the
        entries of ``result`` (the RIPE shape lists every packet sent), because ``to_json`` writes
        one entry per packet.
        """
        if not isinstance(raw, Mapping):
            raise InputError("must be an object", file=file, entry=index)
        lid = raw.get("landmark_id", raw.get("dst_name"))
        if not isinstance(lid, str) or not lid:
            raise InputError(
                "must be a non-empty string", file=file, entry=index, field="landmark_id"
            )

        def bad(message: str, fld: str) -> InputError:
            return InputError(message, file=file, entry=lid, field=fld)

        result = raw.get("result", [])
        if not isinstance(result, list):
            raise bad("must be a list", "result")
        rtts: list[float] = []
        for j, r in enumerate(result):
            if not isinstance(r, Mapping):
                raise bad("must be an object", f"result[{j}]")
            if "rtt" in r:
                v = r["rtt"]
                if not _is_number(v) or v < 0:
                    raise bad(
                        f"must be a non-negative number of ms, got {_show(v)}", f"result[{j}].rtt"
                    )
                rtts.append(float(v))
        sent = raw.get("sent", len(result))
        if isinstance(sent, bool) or not isinstance(sent, int) or sent < 0:
            raise bad("must be a non-negative integer", "sent")
        if sent > max(len(result), len(rtts)):
            raise bad(
                f"{_show(sent)} packets but result lists {len(result)}: every packet sent has an "
                "entry",
                "sent",
            )
        ts = raw.get("timestamp", 0.0)
        if not _is_number(ts):
            raise bad("must be a UNIX time", "timestamp")
        method = raw.get("method")
        if method is None:
            proto = raw.get("proto", "replay")
            if not isinstance(proto, str):
                raise bad("must be a string", "proto")
            method = proto.lower()
        if not isinstance(method, str):
            raise bad("must be a string", "method")
        return cls(
            landmark_id=lid,
            method=method,
            dst_addr=_opt_str(raw, "dst_addr", bad) or "",
            rtts_ms=rtts,
            sent=sent,
            failure=_opt_str(raw, "failure", bad),
            path=_opt_str(raw, "path", bad),
            timestamp=float(ts),
            evidence=_objects(raw, "evidence", bad),
            clock_offsets_ms=_numbers(raw, "clock_offsets_ms", file, lid),
            rejected=_counts(raw, "rejected", bad),
            sent_at=_numbers(raw, "sent_at", file, lid),
        )


def _is_number(x: Any) -> bool:
    """A finite JSON number (not a bool; an int too large for a float is not finite)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _show(value: Any) -> str:
    """A bounded repr: a hostile value cannot make the one-line message huge."""
    try:
        text = repr(value)
    except ValueError:  # an int past the int-string conversion limit
        return "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def _opt_str(raw: Mapping[str, Any], key: str, bad: Callable[[str, str], InputError]) -> str | None:
    v = raw.get(key)
    if v is not None and not isinstance(v, str):
        raise bad(f"must be a string, got {_show(v)}", key)
    return v


def _objects(
    raw: Mapping[str, Any], key: str, bad: Callable[[str, str], InputError]
) -> list[dict[str, Any]]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise bad("must be a list of objects", key)
    return list(v)


def _counts(
    raw: Mapping[str, Any], key: str, bad: Callable[[str, str], InputError]
) -> dict[str, int]:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise bad("must be an object of counts", key)
    for k, n in v.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63:
            raise bad(f"must be a non-negative count, got {_show(n)}", f"{key}.{k}")
    return dict(v)


def _numbers(raw: Mapping[str, Any], key: str, file: str, entry: str) -> list[float]:
    """An optional list of finite numbers, or a one-line error naming the field."""
    v = raw.get(key, [])
    if not isinstance(v, list):
        raise InputError("must be a list of numbers", file=file, entry=entry, field=key)
    for j, x in enumerate(v):
        if not _is_number(x):
            raise InputError(
                f"must be a finite number, got {_show(x)}",
                file=file,
                entry=entry,
                field=f"{key}[{j}]",
            )
    return [float(x) for x in v]


def rejected_totals(measurements: Iterable[Measurement]) -> dict[str, int]:
    """Replies refused in a round, by reason (``bad signature``, ``replayed``, ...), all landmarks.

    A fix carries these so that forged or replayed replies leave a trace in what the watch reports.
    """
    out: dict[str, int] = {}
    for m in measurements:
        for reason, n in m.rejected.items():
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def min_rtts(measurements: Iterable[Measurement]) -> dict[str, float]:
    """Landmark id -> minimum RTT (ms) over the landmarks that answered."""
    out: dict[str, float] = {}
    for m in measurements:
        r = m.min_rtt
        if r is not None:
            out[m.landmark_id] = min(r, out.get(m.landmark_id, math.inf))
    return out


def save_measurements(path: str | Path, measurements: Iterable[Measurement], **meta: Any) -> None:
    path = Path(path)
    doc = {"format": FORMAT, **meta, "results": [m.to_json() for m in measurements]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def load_measurements(path: str | Path) -> tuple[list[Measurement], dict[str, Any]]:
    """Load a saved measurement file (or a bare RIPE-style result list) for replay.

    The read is size-capped and checked for encoding, nesting and huge numbers first, so what a
    hostile file makes us allocate stays bounded by its size.
    """
    p = Path(path)
    return parse_measurements(read_json(p), file=p)


def parse_measurements(
    raw: Any, *, file: str | Path = "<measurements>"
) -> tuple[list[Measurement], dict[str, Any]]:
    """A parsed measurement document: ``{"format": ..., "results": [...]}`` or a bare list."""
    meta: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        if raw.get("format", FORMAT) != FORMAT:
            raise InputError(
                f"unsupported format {_show(raw.get('format'))}", file=file, field="format"
            )
        results = raw.get("results")
        meta = {k: v for k, v in raw.items() if k != "results"}
    else:
        results = raw
    return parse_measurement_list(results, file=file, field="results"), meta


def parse_measurement_list(
    items: Any, *, file: str | Path = "<measurements>", field: str = "results"
) -> list[Measurement]:
    if not isinstance(items, list):
        raise InputError("must be a list", file=file, field=field)
    return [Measurement.from_json(r, file=str(file), index=i) for i, r in enumerate(items)]
