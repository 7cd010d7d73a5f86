"""Hostile datagrams and configs: one refusal or one error line, never a release, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoprobe.errors import InputError
from geoprobe.keyrelease import config, wire
from tests.keyrelease.harness import Harness

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

HEADERS = st.sampled_from(
    [wire.REQUEST, wire.CHALLENGE, wire.ANSWER, wire.RELEASE, wire.REFUSAL, 0, 9]
)


def _datagrams() -> st.SearchStrategy[bytes]:
    framed = st.builds(
        lambda t, v, body: b"GPKR" + bytes([v, t, 0, 0]) + body,
        HEADERS,
        st.sampled_from([1, 1, 1, 2]),
        st.binary(max_size=700),
    )
    return st.one_of(st.binary(max_size=2200), framed)


@FUZZ
@given(_datagrams())
def test_parsers_raise_only_wire_errors(data: bytes) -> None:
    for parse in (
        wire.parse_request,
        wire.parse_challenge,
        wire.parse_answer,
        wire.parse_release,
        wire.parse_refusal,
    ):
        try:
            parse(data)
        except wire.WireError:
            pass


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    return Harness(tmp_path_factory.mktemp("fuzz"))


@FUZZ
@given(data=_datagrams())
def test_the_server_never_releases_on_hostile_input(harness: Harness, data: bytes) -> None:
    before = len(harness.records)
    replies = harness.send(data)
    assert harness.server.released == 0
    assert (
        len(harness.records) == before + 1
    )  # exactly one line: a refusal, or a challenge's silence
    rec = harness.records[-1]
    assert rec["event"] == "refuse" and "\n" not in rec["reason"]
    for r in replies:
        assert wire.message_type(r) == wire.REFUSAL
        assert len(r) <= len(data)


@FUZZ
@given(flip=st.integers(0, wire.PADDED_LEN * 8 - 1))
def test_a_bit_flipped_answer_never_releases(harness: Harness, flip: int) -> None:
    chal = harness.challenge()
    signed = wire.answer_signed_bytes(chal.challenge, "vault", "ks-a", "vm-1")
    answer = bytearray(wire.build_answer(chal.challenge, harness.me.sign_key.sign(signed)))
    answer[flip // 8] ^= 1 << (flip % 8)
    released = harness.server.released
    harness.send(bytes(answer))
    # Only a flip in the zero padding leaves a valid answer (the padding is not signed).
    if flip // 8 >= 8 + wire.REF_LEN + wire.SIG_LEN:
        assert harness.server.released == released + 1
    else:
        assert harness.server.released == released
    harness.server.pending.clear()
    harness.server.per_client.clear()


_toml_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "server_id",
        "key",
        "listen",
        "log",
        "challenge_ttl_ms",
        "secrets",
        "clients",
        "client_id",
        "servers",
        "bound_ms",
        "bound_km",
        "id",
        "sign_pubkey",
        "box_pubkey",
        "address",
        "pubkey",
        "k",
        "timeout_ms",
    ]
)


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v if x is not None]
    return v


@FUZZ
@given(st.dictionaries(_keys, _toml_values, max_size=8))
def test_hostile_configs_are_one_input_error(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw = _drop_none(raw)
    for parse in (config.parse_server, config.parse_client):
        try:
            parse(raw, tmp_path / "x.toml")
        except InputError as exc:
            assert "\n" not in str(exc) and "x.toml" in str(exc)
