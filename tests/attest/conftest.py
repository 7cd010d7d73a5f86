"""Signed responders in a background event loop, probed over real loopback sockets."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from geoprobe.landmarks import Landmark
from geoprobe.probe import keys
from geoprobe.probe.responder import EchoResponder, start_responder

_hosts = itertools.count(0)


@dataclass
class Landmarks:
    loop: asyncio.AbstractEventLoop
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(10)

    def add(
        self, lid: str, lat: float, lon: float, delay_s: float = 0.0, **kw: Any
    ) -> tuple[Landmark, EchoResponder]:
        key = keys.generate()
        host = f"127.0.0.{60 + next(_hosts) % 150}"
        transport, proto = self.run(
            start_responder(
                key, lid, lat, lon, host=host, delay=(lambda: delay_s) if delay_s else None, **kw
            )
        )
        self.transports.append(transport)
        pub = keys.public_raw(key)
        lm = Landmark(
            id=lid,
            lat=lat,
            lon=lon,
            address=host,
            udp_port=transport.get_extra_info("sockname")[1],
            pubkey=pub,
            key_id=keys.key_id(pub),
        )
        return lm, proto


@pytest.fixture
def landmarks() -> Iterator[Landmarks]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    w = Landmarks(loop)
    try:
        yield w
    finally:
        for t in w.transports:
            loop.call_soon_threadsafe(t.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
