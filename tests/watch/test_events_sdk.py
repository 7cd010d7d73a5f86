"""Every event geoprobe emits, read back by the CloudEvents SDK (structured JSON mode).

geoprobe writes its own small envelope (geoprobe.events); the SDK is the reference reader a
consumer would use, so each event type goes through it as its producer writes it (the watch's
events file, the store-failure notice, the attestation a webhook receives, check's cleared event),
and the attributes the spec requires are checked on what the SDK parsed. The event types are found
in the source, so a new one fails here until it is read back too.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json
from test_daemon import BERLIN, FRANKFURT, MADRID, World, catalogue, make_watcher

from geoprobe import events
from geoprobe.attest import publish
from geoprobe.landmarks import Catalogue
from geoprobe.store import StoreError
from geoprobe.watch.durable import WatchRecord
from geoprobe.watch.state import STORE_FAILED
from tests.attest.chainkit import issue, make_kit

__all__ = ["catalogue"]  # the module-scoped fixture, shared with the daemon tests

#: The event types of geoprobe.events: the watch's.
EVENT_TYPES = {v for k, v in vars(events).items() if k.isupper() and str(v).startswith("io.")}
#: Every event type named anywhere in the package.
PACKAGE = Path(events.__file__).parent
ALL_TYPES = {
    t
    for p in PACKAGE.rglob("*.py")
    for t in re.findall(r"[\"'](io\.geoprobe\.[a-z_.]+)[\"']", p.read_text(encoding="utf-8"))
}
#: What the tests below read back with the SDK.
READ_BACK = EVENT_TYPES | {STORE_FAILED, publish.ATTESTED}


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
    assert type_ in ALL_TYPES
    assert isinstance(time, datetime) and time.utcoffset() == UTC.utcoffset(None)
    assert isinstance(data, dict) and data


def read_back(line: str) -> dict[str, Any]:
    """``line`` through the SDK's three readers, its required attributes checked; the raw JSON."""
    raw: dict[str, Any] = json.loads(line)
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
        assert parsed.get_subject() == raw.get("subject")
    # The classic API (cloudevents.v1.http.from_json), which many consumers still use.
    classic = from_json(line)
    assert classic["id"] == raw["id"] and classic["type"] == raw["type"]
    assert classic.data == raw["data"]
    return raw


def test_every_event_type_in_the_package_is_read_back() -> None:
    assert ALL_TYPES == READ_BACK


def test_every_event_type_parses_with_the_sdk(catalogue: Catalogue, tmp_path: Path) -> None:
    lines = emitted_lines(catalogue, tmp_path)
    assert {json.loads(line)["type"] for line in lines} == EVENT_TYPES
    ids = {read_back(line)["id"] for line in lines}
    assert len(ids) == len(lines)  # one id per occurrence: actions key on it to fire once


def test_the_store_failure_notice_parses_with_the_sdk(tmp_path: Path) -> None:
    ev_file = tmp_path / "events.jsonl"
    record = WatchRecord(tmp_path / "state", ev_file, io.StringIO(), logging.getLogger("t"))
    try:
        record._store_failed(StoreError(tmp_path / "state" / "geoprobe.sqlite", "disk full"))
    finally:
        record.close()
    (line,) = ev_file.read_text().splitlines()
    raw = read_back(line)
    assert raw["type"] == STORE_FAILED and raw["data"]["problem"] == "disk full"


def test_the_attestation_parses_with_the_sdk(tmp_path: Path) -> None:
    (issued,) = issue(make_kit(), tmp_path, 1)
    raw = read_back(json.dumps(publish.cloudevent(issued)))
    assert raw["type"] == publish.ATTESTED and raw["id"] == issued.envelope.digest
    assert raw["subject"].startswith(issued.period.label)


def test_checks_cleared_event_parses_with_the_sdk() -> None:
    raw = read_back(json.dumps(events.cleared_event("moved_inside", "a-suspected-id")))
    assert raw["type"] == events.CLEARED and raw["data"]["suspected_id"] == "a-suspected-id"
