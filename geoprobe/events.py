"""CloudEvents 1.0 envelopes (JSON format) for everything geoprobe reports."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO

SPEC_VERSION = "1.0"
SUSPECTED = "io.geoprobe.migration.suspected"
CONFIRMED = "io.geoprobe.migration.confirmed"
FIX = "io.geoprobe.location.fix"


def make_event(
    type_: str,
    data: dict[str, Any],
    *,
    source: str | None = None,
    subject: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent. ``id`` is unique per occurrence: actions key on it to fire once."""
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


def write_event(stream: TextIO, event: dict[str, Any]) -> None:
    """One JSON line per event, flushed so a tail -f or a pipe sees it at once."""
    stream.write(json.dumps(event, separators=(",", ":"), sort_keys=False) + "\n")
    stream.flush()
