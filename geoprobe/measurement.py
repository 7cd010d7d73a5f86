"""Measurement records: what probing produced, in the RIPE Atlas ping result shape where it fits.

A record keeps every sample (``result``), the minimum that the engine uses, why a landmark
failed, and the signed replies that an auditor can verify again (``evidence``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError

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
        """RIPE ping result shape (``result``, ``min``, ``avg``, ``max``, ``sent``, ``rcvd``) plus ours."""
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
        if not isinstance(raw, Mapping):
            raise InputError("must be an object", file=file, entry=index)
        lid = raw.get("landmark_id", raw.get("dst_name"))
        if not isinstance(lid, str) or not lid:
            raise InputError(
                "must be a non-empty string", file=file, entry=index, field="landmark_id"
            )
        result = raw.get("result", [])
        if not isinstance(result, list):
            raise InputError("must be a list", file=file, entry=lid, field="result")
        rtts: list[float] = []
        for j, r in enumerate(result):
            if not isinstance(r, Mapping):
                raise InputError("must be an object", file=file, entry=lid, field=f"result[{j}]")
            if "rtt" in r:
                v = r["rtt"]
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or not math.isfinite(v)
                    or v < 0
                ):
                    raise InputError(
                        f"must be a non-negative number of ms, got {v!r}",
                        file=file,
                        entry=lid,
                        field=f"result[{j}].rtt",
                    )
                rtts.append(float(v))
        sent = raw.get("sent", len(result))
        if isinstance(sent, bool) or not isinstance(sent, int) or sent < 0:
            raise InputError("must be a non-negative integer", file=file, entry=lid, field="sent")
        ts = raw.get("timestamp", 0.0)
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise InputError("must be a UNIX time", file=file, entry=lid, field="timestamp")
        return cls(
            landmark_id=lid,
            method=str(raw.get("method", str(raw.get("proto", "replay")).lower())),
            dst_addr=str(raw.get("dst_addr", "")),
            rtts_ms=rtts,
            sent=sent,
            failure=raw.get("failure"),
            path=raw.get("path"),
            timestamp=float(ts),
            evidence=list(raw.get("evidence", [])),
            clock_offsets_ms=_numbers(raw, "clock_offsets_ms", file, lid),
            rejected=dict(raw.get("rejected", {})),
            sent_at=_numbers(raw, "sent_at", file, lid),
        )


def _numbers(raw: Mapping[str, Any], key: str, file: str, entry: str) -> list[float]:
    """An optional list of finite numbers, or a one-line error naming the field."""
    v = raw.get(key, [])
    if not isinstance(v, list):
        raise InputError("must be a list of numbers", file=file, entry=entry, field=key)
    for j, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise InputError(
                f"must be a finite number, got {x!r}", file=file, entry=entry, field=f"{key}[{j}]"
            )
    return [float(x) for x in v]


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
    """Load a saved measurement file (or a bare RIPE-style result list) for replay."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=p) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", file=p) from None
    meta: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        if raw.get("format", FORMAT) != FORMAT:
            raise InputError(f"unsupported format {raw.get('format')!r}", file=p, field="format")
        results = raw.get("results")
        meta = {k: v for k, v in raw.items() if k != "results"}
    else:
        results = raw
    if not isinstance(results, list):
        raise InputError("must be a list", file=p, field="results")
    return [Measurement.from_json(r, file=str(p), index=i) for i, r in enumerate(results)], meta
