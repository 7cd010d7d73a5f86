"""The client side: ask a server for a secret, answer its challenge, open the sealed release.

The client cannot make the server's timer read less than the true round trip: it can only
answer quickly. So all it does is answer at once and check what comes back: the server's
signature on every release and refusal, and the seal. With ``k`` of ``n`` servers, each holds a
Shamir share and the client rebuilds the secret from ``k`` releases.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geoprobe.errors import GeoprobeError
from geoprobe.keyrelease import keys as rkeys
from geoprobe.keyrelease import seal, shares, wire
from geoprobe.keyrelease.config import ClientConfig, ServerRef

JWK_INFO = b"geoprobe clevis A256KW/1"


class ReleaseError(GeoprobeError):
    """No secret: refused, unreachable, or too few of k releases. The message is one line."""


class Refused(ReleaseError):
    """A server said no, in a refusal it signed."""

    def __init__(self, message: str, why: wire.Why) -> None:
        super().__init__(message)
        self.why = why


class NoAnswer(ReleaseError):
    """A server stayed silent (or answered only with what did not verify)."""


@dataclass(frozen=True, slots=True)
class Released:
    server_id: str
    secret: bytes
    rtt_ms: float  # as the server measured it
    bound_ms: float


@dataclass
class Identity:
    """The client's id and its two private keys, loaded once per unlock."""

    client_id: str
    sign_key: Ed25519PrivateKey
    box_key: X25519PrivateKey

    @classmethod
    def load(cls, config: ClientConfig) -> Identity:
        me = cls(
            config.client_id,
            rkeys.load_sign_key(config.sign_key_path, field="sign_key"),
            rkeys.load_box_key(config.box_key_path, field="box_key"),
        )
        me.warm()
        return me

    def warm(self) -> None:
        """Sign once before any challenge: a cold first signature takes milliseconds, and the
        time between challenge and answer counts against this client's bound."""
        chal = bytes(wire.REF_LEN)
        sig = self.sign_key.sign(wire.answer_signed_bytes(chal, "warm", "warm", self.client_id))
        wire.build_answer(chal, sig)


def _connect(server: ServerRef) -> socket.socket:
    try:
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise NoAnswer(f"{server.id}: cannot resolve {server.host}: {exc.strerror}") from None
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise NoAnswer(f"{server.id}: cannot reach {server.host}:{server.port}: {exc}") from None
    return sock


@dataclass
class _Exchange:
    """One attempt: request, challenge, answer, release; datagrams that do not match are skipped."""

    server: ServerRef
    me: Identity
    name: str
    sock: socket.socket
    deadline: float
    pub: Ed25519PublicKey = field(init=False)

    def __post_init__(self) -> None:
        self.pub = Ed25519PublicKey.from_public_bytes(self.server.pubkey)

    def _recv(self) -> bytes | None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            return self.sock.recv(wire.MAX_DATAGRAM)
        except TimeoutError:
            return None
        except OSError:  # ICMP port unreachable surfaces here on a connected socket
            time.sleep(min(0.05, max(0.0, self.deadline - time.monotonic())))
            return b""

    def _refusal(self, data: bytes, ref: bytes) -> Refused | None:
        try:
            r = wire.parse_refusal(data)
            seal.verify_server(self.pub, r.signature, r.signed)
        except (wire.WireError, seal.SealError):
            return None
        if r.ref != ref:
            return None
        return Refused(f"{self.server.id}: refused: {' '.join(r.reason.split())}", r.why)

    def _send(self, msg: bytes) -> None:
        try:
            self.sock.send(msg)
        except OSError as exc:
            raise NoAnswer(f"{self.server.id}: cannot send: {exc.strerror or exc}") from None

    def run(self) -> Released:
        rid = os.urandom(wire.REF_LEN)
        self._send(wire.build_request(rid, self.me.client_id, self.name))
        challenge = None
        while challenge is None:
            data = self._recv()
            if data is None:
                raise NoAnswer(f"{self.server.id}: no challenge")
            try:
                mtype = wire.message_type(data)
            except wire.WireError:
                continue
            if mtype == wire.REFUSAL and (refused := self._refusal(data, rid)):
                raise refused
            if mtype != wire.CHALLENGE:
                continue
            try:
                c = wire.parse_challenge(data)
            except wire.WireError:
                continue
            if c.request_id == rid:
                challenge = c
        if challenge.server_id != self.server.id:
            raise ReleaseError(
                f"{self.server.id}: the server calls itself {challenge.server_id!r};"
                " fix the id in the client config"
            )
        signed = wire.answer_signed_bytes(
            challenge.challenge, self.name, self.server.id, self.me.client_id
        )
        self._send(wire.build_answer(challenge.challenge, self.me.sign_key.sign(signed)))
        while True:
            data = self._recv()
            if data is None:
                raise NoAnswer(f"{self.server.id}: no release after the answer")
            try:
                mtype = wire.message_type(data)
            except wire.WireError:
                continue
            if mtype == wire.REFUSAL and (refused := self._refusal(data, challenge.challenge)):
                raise refused
            if mtype != wire.RELEASE:
                continue
            try:
                rel = wire.parse_release(data)
                if rel.challenge != challenge.challenge:
                    continue
                secret = seal.open_release(
                    rel,
                    self.pub,
                    self.me.box_key,
                    server_id=self.server.id,
                    client_id=self.me.client_id,
                    name=self.name,
                )
            except (wire.WireError, seal.SealError):
                continue  # a forgery or a corrupted datagram: the genuine release may follow
            return Released(self.server.id, secret, rel.rtt_ns / 1e6, rel.bound_ns / 1e6)


def fetch(
    server: ServerRef, me: Identity, name: str, *, timeout_s: float, attempts: int
) -> Released:
    """One release from one server, in up to ``attempts`` fresh exchanges.

    A silent server and a transient refusal (too slow, busy) are asked again: queueing only adds
    delay, so the fastest of a few round trips is the one that says where this host is, and the
    server times and bounds every one of them. Any other refusal is final at once.
    """
    wire.check_id(name, "secret name")
    last: ReleaseError | None = None
    for _ in range(attempts):
        sock = _connect(server)
        try:
            return _Exchange(server, me, name, sock, time.monotonic() + timeout_s).run()
        except Refused as exc:
            if not exc.why.transient:
                raise
            last = exc
        except NoAnswer as exc:
            last = exc
        finally:
            sock.close()
    assert last is not None
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(last, Refused):
        raise Refused(f"{last} ({tries})", last.why)
    raise NoAnswer(f"{last} {tries}")


def unlock(
    config: ClientConfig,
    name: str,
    *,
    me: Identity | None = None,
    on_release: Callable[[Released], None] | None = None,
) -> bytes:
    """The secret ``name``: from one server, or rebuilt from ``k`` servers' shares."""
    plan = config.plan(name)
    me = me or Identity.load(config)
    got: list[Released] = []
    failures: list[str] = []
    for sid in plan.servers:
        if len(got) >= plan.k:
            break
        try:
            rel = fetch(
                config.servers[sid],
                me,
                name,
                timeout_s=config.timeout_ms / 1000,
                attempts=config.attempts,
            )
        except ReleaseError as exc:
            failures.append(str(exc))
            continue
        got.append(rel)
        if on_release is not None:
            on_release(rel)
    if len(got) < plan.k:
        need = f"{len(got)} of {plan.k} release{'s' if plan.k > 1 else ''}"
        raise ReleaseError(f"{name}: {need}: " + "; ".join(failures))
    if plan.k == 1:
        return got[0].secret
    try:
        return shares.combine([r.secret for r in got])
    except ValueError as exc:
        raise ReleaseError(f"{name}: the released shares do not combine: {exc}") from None


def jwk_for(secret: bytes) -> dict[str, str]:
    """The A256KW key that the clevis pin wraps its content key with, derived from a secret."""
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=JWK_INFO).derive(secret)
    return {
        "kty": "oct",
        "alg": "A256KW",
        "k": base64.urlsafe_b64encode(k).rstrip(b"=").decode("ascii"),
    }
