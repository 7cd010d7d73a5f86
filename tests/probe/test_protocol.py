"""Wire format and keys of the signed echo."""

from __future__ import annotations

import os
import stat
import struct

import hypothesis
import pytest
from hypothesis import strategies as st

from geoprobe.errors import InputError
from geoprobe.probe import keys, protocol


def test_request_round_trip_and_padding() -> None:
    nonce = os.urandom(32)
    req = protocol.make_request(nonce)
    assert len(req) == protocol.REQUEST_LEN
    assert protocol.parse_request(req) == nonce


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r[:100],
        lambda r: b"XXXX" + r[4:],
        lambda r: r[:4] + b"\x02" + r[5:],
        lambda r: r[:5] + bytes([protocol.TYPE_REPLY]) + r[6:],
    ],
)
def test_bad_requests_are_refused(mangle: object) -> None:
    req = protocol.make_request(os.urandom(32))
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_request(mangle(req))  # type: ignore[operator]


def test_reply_is_never_larger_than_request() -> None:
    key = keys.generate()
    reply = protocol.build_reply(
        key,
        os.urandom(32),
        1,
        2,
        "x" * protocol.MAX_ID_LEN,
        1.0,
        2.0,
        "k" * protocol.MAX_KEY_ID_LEN,
    )
    assert len(reply) <= protocol.REQUEST_LEN


def test_reply_round_trip_and_signature() -> None:
    key = keys.generate()
    nonce = os.urandom(32)
    data = protocol.build_reply(key, nonce, 1_000, 1_750, "fra-1", 50.11, 8.68, "abcd")
    r = protocol.parse_reply(data)
    assert (r.nonce, r.t_recv_ns, r.t_send_ns, r.landmark_id, r.lat, r.lon, r.key_id) == (
        nonce,
        1_000,
        1_750,
        "fra-1",
        50.11,
        8.68,
        "abcd",
    )
    assert r.processing_ns == 750
    assert r.verify(keys.public_from_raw(keys.public_raw(key)))
    assert not r.verify(keys.public_from_raw(keys.public_raw(keys.generate())))


def test_signature_covers_every_field() -> None:
    key = keys.generate()
    pub = keys.public_from_raw(keys.public_raw(key))
    data = protocol.build_reply(key, os.urandom(32), 1_000, 1_750, "fra-1", 50.11, 8.68, "abcd")
    body_len = len(data) - protocol.SIG_LEN
    for pos in range(8, body_len):  # nonce, timestamps, location, id, key id
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        try:
            r = protocol.parse_reply(bytes(tampered))
        except protocol.ProtocolError:
            continue  # a length byte changed: no longer parses at all
        assert not r.verify(pub), f"flipping byte {pos} went unnoticed"


def test_truncated_and_garbage_replies_do_not_parse() -> None:
    data = protocol.build_reply(keys.generate(), os.urandom(32), 1, 2, "a", 0.0, 0.0, "k")
    for bad in (data[:-1], data + b"x", b"", os.urandom(len(data))):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_reply(bad)
    nan = bytearray(data)
    struct.pack_into("!d", nan, 56, float("nan"))
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_reply(bytes(nan))


def test_keygen_writes_private_key_0600_and_refuses_overwrite(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path)) / "k"
    pair = keys.keygen(d)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    key = keys.load_private(pair.private_path)
    raw = keys.public_raw(key)
    assert pair.key_id == keys.key_id(raw)
    assert pair.public_path.read_text().split() == [pair.pubkey_b64, pair.key_id]
    with pytest.raises(InputError, match="refusing to overwrite"):
        keys.keygen(d)


def test_load_private_rejects_garbage(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "bad.key"
    p.write_text("not a key\n")
    with pytest.raises(InputError, match="bad.key"):
        keys.load_private(p)
    with pytest.raises(InputError, match="cannot read"):
        keys.load_private(Path(str(tmp_path)) / "missing.key")


def test_key_ids_differ_between_keys() -> None:
    a, b = (keys.key_id(keys.public_raw(keys.generate())) for _ in range(2))
    assert a != b and len(a) == 16


def test_parsers_raise_only_protocol_errors_on_arbitrary_bytes() -> None:
    valid = protocol.build_reply(keys.generate(), os.urandom(32), 1, 2, "lm", 1.0, 2.0, "k")

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(
        st.one_of(
            st.binary(max_size=400), st.binary(max_size=40).map(lambda tail: valid[:90] + tail)
        )
    )
    def check(data: bytes) -> None:
        for parse in (protocol.parse_reply, protocol.parse_request):
            try:
                parse(data)
            except protocol.ProtocolError:
                pass

    check()
