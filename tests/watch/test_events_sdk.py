"""Every event the watch emits, read back by the CloudEvents SDK (structured JSON mode).

geoprobe writes its own small envelope (geoprobe.events); the SDK is the reference reader a
consumer would use, so each event type the watch produces goes through it as written to the
events file, and the attributes the spec requires are checked on what the SDK parsed.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json
from test_daemon import BERLIN, FRANKFURT, MADRID, World, catalogue, make_watcher

from geoprobe import events
from geoprobe.landmarks import Catalogue

__all__ = ["catalogue"]  # the module-scoped fixture, shared with the daemon tests

#: Every event type geoprobe defines.
EVENT_TYPES = {v for k, v in vars(events).items() if k.isupper() and str(v).startswith("io.")}


def emitted_lines(cat: Catalogue, tmp: Path) -> list[str]:
    """A watch at Frankfurt moved to Madrid and back into Germany, its events as the events file
    holds them (the return is a move inside the allowed set: a cleared event)."""
    world = World(FRANKFURT, seed=3)
    w, emitted, _ = make_watcher(cat, world, tmp)
    for _ in range(6):
        w.round()
    world.at = MADRID
    for _ in range(3):
        w.round()
    world.at = BERLIN
    for _ in range(2):
        w.round()
    out = io.StringIO()
    for ev in emitted:
        events.write_event(out, ev)
    return out.getvalue().splitlines()


def check_required(
    *, specversion: str, id_: str, source: str, type_: str, time: Any, data: Any
) -> None:
    assert specversion == "1.0"
    assert isinstance(id_, str) and id_
    assert isinstance(source, str) and source.startswith("geoprobe://")
    assert type_ in EVENT_TYPES
    assert isinstance(time, datetime) and time.utcoffset() == UTC.utcoffset(None)
    assert isinstance(data, dict) and data


def test_every_event_type_parses_with_the_sdk(catalogue: Catalogue, tmp_path: Path) -> None:
    lines = emitted_lines(catalogue, tmp_path)
    assert {json.loads(line)["type"] for line in lines} == EVENT_TYPES
    ids = set()
    for line in lines:
        raw = json.loads(line)
        # The current SDK's structured JSON format and its HTTP binding (what a webhook receives).
        ev = JSONFormat().read(None, line)
        via_http = from_structured_event(
            HTTPMessage(headers={"content-type": JSONFormat.CONTENT_TYPE}, body=line.encode())
        )
        for parsed in (ev, via_http):
            check_required(
                specversion=parsed.get_specversion(),
                id_=parsed.get_id(),
                source=parsed.get_source(),
                type_=parsed.get_type(),
                time=parsed.get_time(),
                data=parsed.get_data(),
            )
            assert parsed.get_datacontenttype() == "application/json"
            assert parsed.get_data() == raw["data"]
        # The classic API (cloudevents.v1.http.from_json), which many consumers still use.
        classic = from_json(line)
        assert classic["id"] == raw["id"] and classic["type"] == raw["type"]
        assert classic.data == raw["data"]
        ids.add(raw["id"])
    assert len(ids) == len(lines)  # one id per occurrence: actions key on it to fire once
