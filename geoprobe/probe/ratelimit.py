"""A token bucket per source address, so a landmark cannot be made to sign replies in bulk.

Each signed reply costs the landmark an Ed25519 signature and sends a datagram to whoever the
request claims to be from. Without a cap, one source got 15,000 signed replies a second: a cheap
way to burn a landmark's CPU or to aim its replies at a third party with spoofed requests.
Honest probing is sparse (the watch sends a few samples per landmark per round, ``locate`` at
most 100 in a short burst), so a per-source rate well above that and a burst of a full
``locate`` leave it untouched.

IPv6 sources share a bucket per /64, the block one host usually holds; the table of buckets is
bounded, the least recently seen source is forgotten first.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RATE = 20.0  # replies per second per source, sustained
DEFAULT_BURST = 100.0  # replies a source may get at once: a whole `locate --samples 100`
DEFAULT_MAX_SOURCES = 65536


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    max_sources: int = DEFAULT_MAX_SOURCES

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1 or self.max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_sources >= 1")


def source_key(host: str) -> str:
    """The bucket a source address falls in: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class SourceLimiter:
    """Decides, per request, whether its source still has a token."""

    def __init__(
        self, limit: RateLimit | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit or RateLimit()
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, as of

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str) -> bool:
        key = source_key(host)
        now = self.clock()
        lim = self.limit
        tokens, since = self._buckets.pop(key, (lim.burst, now))
        tokens = min(lim.burst, tokens + max(0.0, now - since) * lim.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # most recently seen last
        while len(self._buckets) > lim.max_sources:
            self._buckets.popitem(last=False)
        return ok
