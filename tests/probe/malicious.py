"""A small malicious responder: forges, alters and replays signed echo replies."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.probe import keys
from geoprobe.probe.protocol import ProtocolError, build_reply, parse_request

MODES = (
    "forge",
    "alter-time",
    "alter-location",
    "sign-wrong-location",
    "wrong-id",
    "replay",
    "slow-processing",
)


class MaliciousResponder(asyncio.DatagramProtocol):
    """Answers like a landmark, but:

    forge                 signs with a key the catalogue does not pin;
    alter-time            signs honestly, then rewrites t_recv in the packet (the on-path attacker);
    alter-location        signs honestly, then rewrites lat in the packet;
    sign-wrong-location   holds the real key but signs a location 1 degree off (a moved landmark);
    wrong-id              holds the real key but signs another landmark's id;
    replay                answers honestly, but first sends the previous request's reply
                          twice more (an old, already answered nonce);
    slow-processing       honestly reports 40 ms spent between receiving and sending.
    """

    def __init__(
        self, mode: str, key: Ed25519PrivateKey, landmark_id: str, lat: float, lon: float
    ) -> None:
        assert mode in MODES
        self.mode = mode
        self.key = key
        self.landmark_id, self.lat, self.lon = landmark_id, lat, lon
        self.key_id = keys.key_id(keys.public_raw(key))
        self.transport: asyncio.DatagramTransport | None = None
        self.previous: bytes | None = None
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _reply(
        self,
        nonce: bytes,
        *,
        key: Ed25519PrivateKey | None = None,
        lat: float | None = None,
        lid: str | None = None,
        t_recv: int | None = None,
    ) -> bytes:
        now = time.time_ns()
        return build_reply(
            key or self.key,
            nonce,
            t_recv if t_recv is not None else now,
            now,
            lid or self.landmark_id,
            self.lat if lat is None else lat,
            self.lon,
            self.key_id,
        )

    def _send(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.sent += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            nonce = parse_request(data)
        except ProtocolError:
            return
        if self.mode == "forge":
            self._send(self._reply(nonce, key=keys.generate()), addr)
        elif self.mode == "alter-time":
            reply = bytearray(self._reply(nonce))
            t_recv = struct.unpack_from("!Q", reply, 40)[0]
            struct.pack_into("!Q", reply, 40, t_recv + 5_000_000)  # claim 5 ms more processing
            self._send(bytes(reply), addr)
        elif self.mode == "alter-location":
            reply = bytearray(self._reply(nonce))
            struct.pack_into("!d", reply, 56, self.lat + 10.0)
            self._send(bytes(reply), addr)
        elif self.mode == "sign-wrong-location":
            self._send(self._reply(nonce, lat=self.lat + 1.0), addr)
        elif self.mode == "wrong-id":
            self._send(self._reply(nonce, lid=self.landmark_id + "-other"), addr)
        elif self.mode == "replay":
            # Sent before the genuine reply, so the prober is still listening when they come.
            if self.previous is not None:
                self._send(self.previous, addr)
                self._send(self.previous, addr)
            self.previous = self._reply(nonce)
            self._send(self.previous, addr)
        elif self.mode == "slow-processing":
            t_recv = time.time_ns()
            loop = asyncio.get_running_loop()
            loop.call_later(0.04, lambda: self._send(self._reply(nonce, t_recv=t_recv), addr))
