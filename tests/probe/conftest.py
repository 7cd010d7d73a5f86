"""Fixtures for the probe tests: a loopback world of signed responders."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from loopback_world import World


@pytest.fixture
def world() -> Iterator[World]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    w = World(loop)
    try:
        yield w
    finally:
        for t in w.transports:
            loop.call_soon_threadsafe(t.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
