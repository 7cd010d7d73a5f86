"""Hostile inputs shared by the fuzz tests: byte strings, JSON and TOML a parser must survive."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# A quick run by default (the whole suite in seconds); a campaign with GEOPROBE_FUZZ_EXAMPLES=5000.
EXAMPLES = int(os.environ.get("GEOPROBE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None if EXAMPLES > 60 else 2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=EXAMPLES <= 60,
)

# Values that have broken loaders: wrong types, NaN, huge integers, deep nesting, odd text.
_ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**300, -(10**400), 2**63, 0, -1, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "DE", "127.0.0.1", "::1", "fra", "\x00", "/", "/.", "wipe", "1e999"]),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    _ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def raw_text(good: str) -> st.SearchStrategy[bytes]:
    """Bytes around a valid document: truncations, splices, non-UTF-8, deep nesting, huge ints."""
    data = good.encode()
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(data)).map(lambda i: data[:i]),
        st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=8)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
        st.just(b"\xff\xfe" + data),
        st.just(deep(100_000).encode()),
        st.just(b'{"a": ' + b"9" * 5000 + b"}"),
        st.just(data.replace(b"1", b"1" * 400, 1)),
    )


def mutate_json(doc: Any) -> st.SearchStrategy[Any]:
    """The document with one value somewhere replaced by a hostile one."""
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(doc, [])

    def put(args: tuple[list[Any], Any]) -> Any:
        path, value = args
        if not path:
            return value
        out = json.loads(json.dumps(doc))
        node = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return out

    return st.tuples(st.sampled_from(paths), VALUES).map(put)


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)
