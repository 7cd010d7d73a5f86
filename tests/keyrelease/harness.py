"""The server's protocol driven in process with a fake clock: every datagram and record visible."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geoprobe.keyrelease import client, config, keys, server, wire
from tests.keyrelease.world import World, add_server, make_world

ADDR = ("10.0.0.2", 40000)
WALL_OFFSET = 1_700_000_000_000_000_000  # realtime minus monotonic, for the fake clocks


class Harness:
    def __init__(
        self, root: Path, bound: str = "bound_ms = 5.0", secret: bytes = b"s3cret"
    ) -> None:
        self.world: World = make_world(root)
        self.spec = add_server(self.world, "ks-a", secret, bound=bound)
        self.cfg = config.load_server(self.spec.config_path)
        self.now = 1_000_000_000
        self.records: list[dict[str, Any]] = []
        self.server = server.ReleaseServer(
            self.cfg,
            keys.load_sign_key(self.cfg.key_path),
            self.records.append,
            clock=self.clock,
            wall_ns=lambda: self.now + WALL_OFFSET,
        )
        self.ccfg = config.load_client(self.world.client_config({"ks-a": "127.0.0.1:9"}))
        self.me = client.Identity.load(self.ccfg)
        self.ref = self.ccfg.servers["ks-a"]

    def clock(self) -> int:
        return self.now

    def send(self, data: bytes, addr: tuple[str, int] = ADDR) -> list[bytes]:
        out: list[bytes] = []
        self.server.handle(data, addr, self.now, out.append)
        return out

    def challenge(self, name: str = "vault", client_id: str | None = None) -> wire.Challenge:
        rid = os.urandom(wire.REF_LEN)
        (reply,) = self.send(wire.build_request(rid, client_id or self.me.client_id, name))
        chal = wire.parse_challenge(reply)
        assert chal.request_id == rid
        return chal

    def answer(
        self,
        chal: wire.Challenge,
        after_ms: float,
        *,
        name: str = "vault",
        signer: Any = None,
        addr: tuple[str, int] = ADDR,
        kernel_age_ms: float = 0.0,
        clock_step_ns: int = 0,
    ) -> bytes:
        """Answer ``after_ms`` after the challenge, read by the server ``kernel_age_ms`` after
        the kernel received it; ``clock_step_ns`` steps the realtime clock in between."""
        self.now += int(after_ms * 1e6)
        signed = wire.answer_signed_bytes(chal.challenge, name, chal.server_id, self.me.client_id)
        sig = (signer or self.me.sign_key).sign(signed)
        out: list[bytes] = []
        self.server.handle(
            wire.build_answer(chal.challenge, sig),
            addr,
            self.now,
            out.append,
            kernel_age_ns=int(kernel_age_ms * 1e6),
            wall_offset_ns=WALL_OFFSET + clock_step_ns,
        )
        (reply,) = out
        return reply

    def open(self, reply: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from geoprobe.keyrelease import seal

        rel = wire.parse_release(reply)
        return seal.open_release(
            rel,
            Ed25519PublicKey.from_public_bytes(self.ref.pubkey),
            self.me.box_key,
            server_id="ks-a",
            client_id=self.me.client_id,
            name="vault",
        )

    def refusal(self, reply: bytes) -> str:
        return wire.parse_refusal(reply).reason
