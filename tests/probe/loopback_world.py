"""Real signed responders on 127.0.0.x, run by an event loop in a background thread.

(A module of its own, not conftest.py: test files import from it, and several test directories
have a conftest.py.)

The prober under test (``geoprobe.probe.measure``) runs its own loop in the test's thread, so
probes and replies cross real loopback sockets. Ports are ephemeral: tests running in parallel
with other suites never collide.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.landmarks import Landmark
from geoprobe.probe import keys
from geoprobe.probe.responder import EchoResponder

T = TypeVar("T")
_hosts = itertools.count(0)


def next_host() -> str:
    """A fresh loopback address per responder (127.0.0.20-239), like the testbed's
    one-per-landmark."""
    return f"127.0.0.{20 + next(_hosts) % 220}"


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(10)

    def endpoint(
        self,
        factory: Callable[[], asyncio.DatagramProtocol],
        host: str | None = None,
        port: int = 0,
    ) -> tuple[str, int, asyncio.DatagramProtocol]:
        host = host or next_host()

        async def make() -> tuple[asyncio.BaseTransport, asyncio.DatagramProtocol]:
            return await self.loop.create_datagram_endpoint(factory, local_addr=(host, port))

        transport, protocol = self.run(make())
        self.transports.append(transport)
        return host, transport.get_extra_info("sockname")[1], protocol

    def landmark(
        self,
        lid: str = "lm",
        lat: float = 50.0,
        lon: float = 8.0,
        *,
        key: Ed25519PrivateKey | None = None,
        factory: Callable[[Ed25519PrivateKey], asyncio.DatagramProtocol] | None = None,
        **responder_kw: Any,
    ) -> tuple[Landmark, asyncio.DatagramProtocol]:
        """A catalogue entry and the responder behind it (``factory`` builds a misbehaving one)."""
        key = key or keys.generate()
        make = factory or (lambda k: EchoResponder(k, lid, lat, lon, **responder_kw))
        host, port, proto = self.endpoint(lambda: make(key))
        pub = keys.public_raw(key)
        lm = Landmark(
            id=lid,
            lat=lat,
            lon=lon,
            address=host,
            udp_port=port,
            pubkey=pub,
            key_id=keys.key_id(pub),
        )
        return lm, proto
