"""Reading an event file: the envelope the policy relies on, one line for anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoprobe import events
from geoprobe.errors import InputError


def test_last_line_of_an_event_file_is_the_event(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    first = events.make_event(events.FIX, {"n": 1})
    last = events.make_event(events.CONFIRMED, {"crossing": True})
    with p.open("w") as fh:
        events.write_event(fh, first)
        events.write_event(fh, last)
    assert events.read_event(p) == last
    single = tmp_path / "one.json"
    single.write_text(json.dumps(first, indent=2))
    assert events.read_event(single) == first


@pytest.mark.parametrize(
    "content, where",
    [
        (b"", "empty"),
        (b"\xff\n", "not UTF-8"),
        (b"[1, 2]", "not a CloudEvent"),
        (b'{"id": ["a"], "type": "t"}', "field 'id'"),
        (b'{"id": "a", "type": {"x": 1}}', "field 'type'"),
        (b'{"id": "a", "type": "t", "data": [1]}', "field 'data'"),
        (b'{"id": "a", "type": "t", "time": 5}', "field 'time'"),
        (b'{"id": "a", "type": "t", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"id": "a", "type": "t", "data": {"p": ' + b"9" * 5000 + b"}}", "not acceptable JSON"),
    ],
)
def test_hostile_event_files_are_one_line(tmp_path: Path, content: bytes, where: str) -> None:
    p = tmp_path / "ev.json"
    p.write_bytes(content)
    with pytest.raises(InputError) as exc:
        events.read_event(p)
    assert str(exc.value).startswith(str(p)) and where in str(exc.value)
