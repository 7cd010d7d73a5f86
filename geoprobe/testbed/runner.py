"""Run an emulated world: one signed-echo responder per landmark in one process, plus a control
socket.

Every responder holds each reply for a delay drawn from the world's current row
(``EchoResponder`` times the hold on a precise timer thread). ``Testbed`` lives in an asyncio loop;
``BackgroundTestbed`` runs one on a thread for the demo, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.errors import GeoprobeError
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.probe import keys as keylib
from geoprobe.probe.responder import EchoResponder, start_responder
from geoprobe.testbed import control
from geoprobe.testbed.endpoints import Endpoint
from geoprobe.testbed.world import Placement, World

log = logging.getLogger(__name__)


class Testbed:
    """The landmarks of ``world`` answering on ``endpoints`` (one per landmark, same order)."""

    def __init__(
        self,
        world: World,
        endpoints: Sequence[Endpoint],
        keys: dict[str, Ed25519PrivateKey],
        *,
        name: str = control.DEFAULT_NAME,
    ) -> None:
        if len(endpoints) != len(world.ids):
            raise ValueError("one endpoint per landmark")
        self.world = world
        self.endpoints = list(endpoints)
        self.keys = keys
        self.name = name
        self.ports: list[int] = []
        self.moves = 0
        self._transports: list[asyncio.DatagramTransport] = []
        self.responders: list[EchoResponder] = []
        self._control: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind every landmark's socket; fails whole (and closes what it opened) if one cannot
        bind."""
        if self.world.placement is None:
            raise RuntimeError("place the VM before starting the testbed")
        try:
            for k, (lid, ep, srv) in enumerate(
                zip(self.world.ids, self.endpoints, self.world.servers)
            ):
                key = self.keys[lid]
                try:
                    transport, responder = await start_responder(
                        key,
                        lid,
                        srv.lat,
                        srv.lon,
                        host=ep.bind,
                        port=ep.port,
                        key_id=keylib.key_id(keylib.public_raw(key)),
                        delay=self.world.delay_source(k),
                    )
                except OSError as exc:
                    raise GeoprobeError(
                        f"cannot listen for landmark {lid!r} on udp {ep.bind}:{ep.port}: "
                        f"{exc.strerror}"
                    ) from None
                self._transports.append(transport)
                self.responders.append(responder)
                self.ports.append(int(transport.get_extra_info("sockname")[1]))
        except BaseException:
            await self.close()
            raise

    def catalogue(self, source: str | None = None) -> Catalogue:
        """The catalogue probers use: advertised addresses, bound ports, pinned keys,
        calibration."""
        lms = []
        for lid, ep, port, srv in zip(
            self.world.ids, self.endpoints, self.ports, self.world.servers
        ):
            pub = keylib.public_raw(self.keys[lid])
            lms.append(
                Landmark(
                    id=lid,
                    lat=srv.lat,
                    lon=srv.lon,
                    country=srv.country,
                    address=ep.advertise,
                    udp_port=port,
                    pubkey=pub,
                    key_id=keylib.key_id(pub),
                )
            )
        return Catalogue(
            landmarks=lms,
            rtts=self.world.calibration_rtts(),
            name=f"testbed {self.name} ({self.world.dataset.name})",
            source=source or self.world.dataset.source,
        )

    def move(self, spec: str) -> Placement:
        """Move the VM (a server name/id or ``LAT,LON``); must run on the testbed's loop thread."""
        placement = self.world.place(spec)
        self.moves += 1
        log.info("testbed %s: VM moved to %s", self.name, placement.label)
        return placement

    def status(self) -> dict[str, Any]:
        p = self.world.placement
        return {
            "name": self.name,
            "landmarks": len(self.world.ids),
            "moves": self.moves,
            "vm": p.to_json() if p else None,
            "answered": sum(r.answered for r in self.responders),
        }

    def handle(self, req: Any) -> dict[str, Any]:
        """One control request -> reply (``ok`` false with ``error`` on bad input)."""
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        op = req.get("op")
        try:
            if op == "status":
                return {"ok": True, **self.status()}
            if (
                op == "delays"
            ):  # the injected floors, for benchmarks that compare measured with injected
                return {
                    "ok": True,
                    "delays_ms": self.world.injected_min_ms(),
                    "jitter": self.world.jitter,
                }
            if op == "move":
                to = req.get("to")
                if not isinstance(to, str) or not to:
                    return {"ok": False, "error": "move needs 'to': a server name/id or 'LAT,LON'"}
                self.move(to)
                return {"ok": True, **self.status()}
        except GeoprobeError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown op {op!r} (known: status, move, delays)"}

    async def serve_control(self, path: Path) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
                try:
                    reply = self.handle(json.loads(line))
                except ValueError:
                    reply = {"ok": False, "error": "request is not JSON"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
            except (TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()

        self._control = await asyncio.start_unix_server(on_client, path=str(path))

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            self._control = None
        for t in self._transports:
            t.close()
        self._transports.clear()
        await asyncio.sleep(0)


class BackgroundTestbed:
    """A ``Testbed`` on its own thread and event loop, for in-process use (demo, tests, benchmarks).

    The prober runs its own loop on the calling thread, so probing a background testbed works
    like probing a remote one, sharing only the process (and the GIL).
    """

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="geoprobe-testbed", daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._call(self.testbed.start())
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.testbed.close())
        finally:
            self._shutdown()

    def _call(self, coro: Any, timeout: float = 60.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def catalogue(self) -> Catalogue:
        return self.testbed.catalogue()

    def move(self, spec: str) -> Placement:
        async def do() -> Placement:
            return self.testbed.move(spec)

        result: Placement = self._call(do())
        return result
