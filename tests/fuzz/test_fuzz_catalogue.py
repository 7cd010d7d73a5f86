"""The catalogue loader on hostile input: a valid Catalogue or one InputError line, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ, VALUES, mutate_json, raw_text
from fuzz.samples import dumps, signed_world
from geoprobe.errors import InputError
from geoprobe.landmarks import Catalogue, load_catalogue, parse_catalogue, parse_landmark

GOOD = signed_world(samples=1).catalogue_doc()


def _one_line(exc: InputError, file: str) -> None:
    text = str(exc)
    assert text.startswith(file) and "\n" not in text and len(text) < 600


@FUZZ
@given(mutate_json(GOOD))
def test_mutated_catalogue_documents(doc: Any) -> None:
    try:
        cat = parse_catalogue(doc, file="cat.json")
    except InputError as exc:
        _one_line(exc, "cat.json")
        return
    assert isinstance(cat, Catalogue)
    for lm in cat.landmarks:  # what was accepted is of the types the model promises
        assert isinstance(lm.id, str) and isinstance(lm.lat, float) and isinstance(lm.lon, float)
        assert lm.udp_port is None or 1 <= lm.udp_port <= 65535
    cat.by_id()
    cat.to_json()


@FUZZ
@given(VALUES)
def test_arbitrary_entries(entry: Any) -> None:
    try:
        parse_landmark(entry, file="cat.json", index=0)
    except InputError as exc:
        _one_line(exc, "cat.json")


@FUZZ
@given(raw_text(dumps(GOOD)) | st.binary(max_size=2000))
def test_catalogue_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "cat.json"
        p.write_bytes(data)
        try:
            load_catalogue(p)
        except InputError as exc:
            _one_line(exc, str(p))
