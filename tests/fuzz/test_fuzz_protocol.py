"""The signed echo's parsers on hostile datagrams: the landmark's request parser and responder,
and the prober's reply parser and reply handler. Nothing raises but ProtocolError, nothing
unsigned or altered is ever accepted."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ
from fuzz.samples import PLACES, signed_world
from geoprobe.probe import keys
from geoprobe.probe.evidence import check_reply
from geoprobe.probe.protocol import (
    NONCE_LEN,
    REQUEST_LEN,
    ProtocolError,
    build_reply,
    make_request,
    parse_reply,
    parse_request,
)
from geoprobe.probe.ratelimit import RateLimit
from geoprobe.probe.responder import EchoResponder
from geoprobe.probe.udp import UdpProber, _Pending

WORLD = signed_world(samples=1)
LM = WORLD.catalogue.by_id()["fra"]
KEY = WORLD.keys["fra"]
PUB = keys.public_from_raw(LM.pubkey or b"")
NONCE = bytes(range(NONCE_LEN))
T = time.time_ns()
GOOD_REPLY = build_reply(KEY, NONCE, T, T + 1000, "fra", *PLACES["fra"][:2], LM.key_id or "")


def _mutations(good: bytes) -> st.SearchStrategy[bytes]:
    """The valid datagram flipped, cut, extended or spliced; and arbitrary bytes."""
    return st.one_of(
        st.binary(max_size=600),
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda t: good[: t[0]] + bytes([good[t[0]] ^ t[1]]) + good[t[0] + 1 :]
        ),
        st.integers(0, len(good) - 1).map(lambda i: good[:i]),
        st.binary(min_size=1, max_size=64).map(lambda b: good + b),
        st.tuples(st.integers(0, len(good)), st.binary(max_size=16)).map(
            lambda t: good[: t[0]] + t[1] + good[t[0] + len(t[1]) :]
        ),
    )


@FUZZ
@given(_mutations(make_request(NONCE)))
def test_request_parser(data: bytes) -> None:
    try:
        nonce = parse_request(data)
    except ProtocolError:
        return
    assert len(nonce) == NONCE_LEN and len(data) >= REQUEST_LEN


_UNBOUND = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # for the receive-stamp ioctl


class _Sent(list[tuple[bytes, object]]):
    """The responder's sending socket, recording instead of sending."""

    def sendto(self, data: bytes, addr: object) -> None:
        self.append((data, addr))

    def fileno(self) -> int:
        return _UNBOUND.fileno()


@FUZZ
@given(st.lists(_mutations(make_request(NONCE)), max_size=8))
def test_responder_answers_only_requests_never_larger(datagrams: list[bytes]) -> None:
    r = EchoResponder(KEY, "fra", 50.11, 8.68, rate_limit=RateLimit(rate=1, burst=4))
    sent = _Sent()
    r._sock = sent  # type: ignore[assignment]  (what the timer thread writes on)
    for d in datagrams:
        r.datagram_received(d, ("192.0.2.1", 4000))
    for reply, _ in sent:
        assert check_reply(parse_reply(reply), LM, PUB) is None
    valid = sum(1 for d in datagrams if _is_request(d))
    assert len(sent) == min(valid, 4) and r.limited == valid - len(sent)
    assert all(len(reply) <= REQUEST_LEN for reply, _ in sent)  # no amplification


def _is_request(d: bytes) -> bool:
    try:
        parse_request(d)
    except ProtocolError:
        return False
    return True


@FUZZ
@given(_mutations(GOOD_REPLY))
def test_reply_parser_never_accepts_an_altered_reply(data: bytes) -> None:
    try:
        reply = parse_reply(data)
    except ProtocolError:
        return
    why = check_reply(reply, LM, PUB)
    if data != GOOD_REPLY:
        assert why is not None, "an altered reply passed"


@FUZZ
@given(st.lists(_mutations(GOOD_REPLY), max_size=6), st.booleans())
def test_prober_reply_handler(datagrams: list[bytes], genuine_last: bool) -> None:
    """Hostile datagrams are counted, never raised.

    The sample resolves only with the genuine reply.
    """
    for result in _drive(datagrams + ([GOOD_REPLY] if genuine_last else [])):
        accepted, rejected = result
        assert accepted == (genuine_last or GOOD_REPLY in datagrams)
        assert rejected <= len(datagrams) + 1


def _drive(datagrams: list[bytes]) -> Iterator[tuple[bool, int]]:
    async def run() -> tuple[bool, int]:
        prober = UdpProber()
        fut = asyncio.get_running_loop().create_future()
        prober._pending[NONCE] = _Pending(LM, PUB, T - 5_000_000, fut)
        prober._by_addr[("127.0.0.200", 7207)] = LM.id
        for d in datagrams:
            prober._reply(d, ("127.0.0.200", 7207), T + 5_000_000)
        accepted = fut.done() and not fut.cancelled()
        rejected = sum(sum(c.values()) for c in prober.rejected.values())
        prober.close()
        return accepted, rejected

    yield asyncio.run(run())


def test_a_fresh_request_round_trips() -> None:
    nonce = os.urandom(NONCE_LEN)
    assert parse_request(make_request(nonce)) == nonce
