"""CloudEvents 1.0 envelopes (JSON format) for everything geoprobe reports."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from geoprobe.errors import InputError
from geoprobe.jsonfile import parse_json

SPEC_VERSION = "1.0"
SUSPECTED = "io.geoprobe.migration.suspected"
CONFIRMED = "io.geoprobe.migration.confirmed"
FIX = "io.geoprobe.location.fix"
CLEARED = "io.geoprobe.migration.cleared"
# Why a suspicion ended without a crossing (``data.reason`` of a cleared event).
CLEARED_REASONS = ("suspicion_cleared", "moved_inside")


def make_event(
    type_: str,
    data: dict[str, Any],
    *,
    source: str | None = None,
    subject: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent. ``id`` is unique per occurrence: actions key on it to fire
    once."""
    ev: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source or f"geoprobe://{socket.gethostname()}",
        "type": type_,
        "time": (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject:
        ev["subject"] = subject
    return ev


def cleared_data(reason: str, suspected_id: str | None, **extra: Any) -> dict[str, Any]:
    """The data of a cleared event: the end of a suspicion episode without a crossing.

    The policy's ``on.cleared`` gives back what ``on.suspected`` took for the suspected event
    ``suspected_id`` (None when the episode raised none, e.g. a return inside the allowed set
    judged round by round, or a cron-mode check).
    """
    if reason not in CLEARED_REASONS:
        raise ValueError(f"reason must be one of {', '.join(CLEARED_REASONS)}, not {reason!r}")
    return {"reason": reason, "suspected_id": suspected_id, **extra}


def cleared_event(
    reason: str, suspected_id: str | None, *, source: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A whole cleared CloudEvent (``cleared_data`` in the standard envelope)."""
    return make_event(CLEARED, cleared_data(reason, suspected_id, **extra), source=source)


def write_event(stream: TextIO, event: dict[str, Any]) -> None:
    """One JSON line per event, flushed so a tail -f or a pipe sees it at once."""
    stream.write(json.dumps(event, separators=(",", ":"), sort_keys=False) + "\n")
    stream.flush()


MAX_EVENT_BYTES = 16 * 1024 * 1024


def parse_event(text: str, *, file: str | Path = "<event>") -> dict[str, Any]:
    """One CloudEvent from a JSON document, or from the last line of a JSON-lines event file.

    Only the envelope is checked here (``id`` and ``type`` non-empty strings, ``data`` an object
    if present): that is what the policy needs to pick a verdict and to run each action once.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError("empty: no CloudEvent", file=file)
    try:
        raw = parse_json(text, file=file)  # one event, perhaps indented over many lines
    except InputError:
        if len(lines) == 1:
            raise
        raw = parse_json(lines[-1], file=file)  # JSON lines: the newest event
    if not isinstance(raw, dict):
        raise InputError("not a CloudEvent JSON object", file=file)
    for key in ("id", "type"):
        v = raw.get(key)
        if not isinstance(v, str) or not v:
            raise InputError("must be a non-empty string", file=file, field=key)
    for key in ("specversion", "source", "subject", "time"):
        if key in raw and not isinstance(raw[key], str):
            raise InputError("must be a string", file=file, field=key)
    if raw.get("data") is not None and not isinstance(raw["data"], dict):
        raise InputError("must be an object", file=file, field="data")
    return raw


def read_event(path: str | Path, *, limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """The last event of an event file (size-capped, UTF-8), see :func:`parse_event`."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=p) from None
    if len(data) > limit:
        raise InputError(f"larger than {limit >> 20} MiB: refused", file=p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=p) from None
    return parse_event(text, file=p)
