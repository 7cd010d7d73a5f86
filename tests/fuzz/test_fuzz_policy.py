"""The policy loader on hostile TOML and hostile values: a Policy or one InputError line."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ, VALUES, mutate_json, raw_text
from fuzz.samples import POLICY
from geoprobe.errors import InputError
from geoprobe.policy import Policy, load_policy, parse_policy

GOOD = tomllib.loads(POLICY)

# TOML spellings that have broken loaders: long integers, odd floats, nesting, wrong shapes.
_TOML_VALUES = st.sampled_from(
    [
        "9" * 400,
        "-" + "9" * 5000,
        "nan",
        "inf",
        "-inf",
        "1e999",
        "0x7fffffffffffffff",
        "[" * 3000 + "]" * 3000,
        "{ a = " * 500 + "1" + " }" * 500,
        '["wipe"]',
        '{ action = "wipe" }',
        '"' + "9" * 400 + 'G"',
        '"1e308T"',
        '"/."',
        "1979-05-27T07:32:00Z",
        "true",
        '""',
        "[]",
        "{}",
    ]
)
_KEYS = st.sampled_from(
    ["action", "timeout", "memory", "cpu", "duration", "rate", "passes", "retries", "paths"]
    + ["url", "headers", "min_probability", "min_landmarks", "allow", "facility", "command"]
)


def _one_line(exc: InputError, file: str) -> None:
    text = str(exc)
    assert text.startswith(file) and "\n" not in text and len(text) < 600


@FUZZ
@given(mutate_json(GOOD))
def test_mutated_policy_documents(doc: Any) -> None:
    if not isinstance(doc, dict):
        doc = {"on": doc}
    try:
        pol = parse_policy(doc, file="policy.toml")
    except InputError as exc:
        _one_line(exc, "policy.toml")
        return
    assert isinstance(pol, Policy)
    pol.summary()
    for specs in pol.actions.values():
        for s in specs:
            assert 0 < s.timeout <= 3600
            s.describe()


@FUZZ
@given(st.dictionaries(st.text(max_size=10), VALUES, max_size=5))
def test_arbitrary_actions(action: dict[str, Any]) -> None:
    try:
        parse_policy({"on": {"unknown": [action]}}, file="policy.toml")
    except InputError as exc:
        _one_line(exc, "policy.toml")


@FUZZ
@given(
    st.one_of(
        raw_text(POLICY),
        st.tuples(
            st.sampled_from(["[[on.unknown]]\n", "[confidence]\n", "[defaults]\n"]),
            _KEYS,
            _TOML_VALUES,
        ).map(lambda t: f'{t[0]}action = "delay"\n{t[1]} = {t[2]}\n'.encode()),
        st.tuples(_KEYS, _TOML_VALUES).map(
            lambda t: f"[[on.confirmed_crossing]]\n{t[0]} = {t[1]}\n".encode()
        ),
    )
)
def test_policy_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "policy.toml"
        p.write_bytes(data)
        try:
            load_policy(p)
        except InputError as exc:
            _one_line(exc, str(p))
