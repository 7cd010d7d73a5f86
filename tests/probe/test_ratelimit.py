"""The per-source token bucket of the signed echo responder."""

from __future__ import annotations

import os
import socket
import time

import pytest
from loopback_world import World, next_host

from geoprobe.probe import keys, measure
from geoprobe.probe.protocol import make_request
from geoprobe.probe.ratelimit import RateLimit, SourceLimiter, source_key
from geoprobe.probe.responder import EchoResponder


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    lim = SourceLimiter(RateLimit(rate=10, burst=5), clock=clock)
    assert [lim.allow("192.0.2.1") for _ in range(7)] == [True] * 5 + [False] * 2
    clock.t += 0.1  # one token back
    assert lim.allow("192.0.2.1") and not lim.allow("192.0.2.1")
    assert lim.allow("192.0.2.2")  # another source has its own bucket
    clock.t += 3600  # refills up to the burst only
    assert sum(lim.allow("192.0.2.1") for _ in range(20)) == 5


def test_ipv6_shares_a_bucket_per_64_and_mapped_ipv4_is_ipv4() -> None:
    assert (
        source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    clock = Clock()
    lim = SourceLimiter(RateLimit(rate=1, burst=2), clock=clock)
    assert lim.allow("2001:db8::1") and lim.allow("2001:db8::2") and not lim.allow("2001:db8::3")


def test_the_table_of_sources_is_bounded() -> None:
    clock = Clock()
    lim = SourceLimiter(RateLimit(rate=1, burst=1, max_sources=100), clock=clock)
    for i in range(1000):
        lim.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(lim) == 100


@pytest.mark.parametrize("kw", [{"rate": 0}, {"rate": -1}, {"burst": 0.5}, {"max_sources": 0}])
def test_nonsense_limits_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kw)  # type: ignore[arg-type]


def _flood(host: str, port: int, n: int) -> int:
    """Send n requests as fast as possible from one source; count the replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((next_host(), 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for _ in range(n):
        s.sendto(make_request(os.urandom(32)), (host, port))
    s.settimeout(0.5)
    got = 0
    try:
        while True:
            s.recvfrom(2048)
            got += 1
    except TimeoutError:
        pass
    s.close()
    return got


def test_a_flood_from_one_source_gets_the_burst_only(world: World) -> None:
    key = keys.generate()
    host, port, proto = world.endpoint(
        lambda: EchoResponder(key, "rl", 1.0, 2.0, rate_limit=RateLimit(rate=5, burst=20))
    )
    assert isinstance(proto, EchoResponder)
    t0 = time.monotonic()
    got = _flood(host, port, 400)
    elapsed = time.monotonic() - t0
    assert 20 <= got <= 20 + 5 * elapsed + 1
    # (the kernel may drop some of the flood before the responder reads it)
    assert proto.answered == got and proto.limited >= 100 and proto.limited + got <= 400


def test_probing_within_the_limit_is_untouched(world: World) -> None:
    lm, proto = world.landmark("ok", rate_limit=RateLimit())
    for _ in range(5):  # five watch rounds back to back, three samples each
        [m] = measure([lm], "udp", samples=3, timeout=1.0)
        assert len(m.rtts_ms) == 3 and not m.rejected
    [m] = measure([lm], "udp", samples=100, timeout=1.0)  # the largest `locate`
    assert len(m.rtts_ms) == 100
    assert isinstance(proto, EchoResponder) and proto.limited == 0
