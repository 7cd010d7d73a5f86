"""Encrypting a released secret to one client, and the server's signature over what it sends.

A release is sealed to the client's X25519 key from the server's config: a fresh ephemeral key
per release (so past releases stay secret if the server's long-term key leaks), HKDF-SHA256 over
the shared secret bound to the challenge and both parties' ids, then ChaCha20-Poly1305.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geoprobe.keyrelease import wire

SEAL_INFO = b"geoprobe-keyrelease/1 seal\x00"


def x25519_raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key(
    shared: bytes,
    challenge: bytes,
    server_id: str,
    client_id: str,
    name: str,
    ephemeral: bytes,
    recipient: bytes,
) -> bytes:
    info = (
        SEAL_INFO
        + bytes([len(server_id)])
        + server_id.encode("ascii")
        + bytes([len(client_id)])
        + client_id.encode("ascii")
        + bytes([len(name)])
        + name.encode("ascii")
        + ephemeral
        + recipient
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=challenge, info=info).derive(shared)


def build_release(
    server_key: Ed25519PrivateKey,
    recipient: X25519PublicKey,
    *,
    challenge: bytes,
    rtt_ns: int,
    bound_ns: int,
    server_id: str,
    client_id: str,
    name: str,
    secret: bytes,
) -> bytes:
    """The signed RELEASE datagram carrying ``secret`` sealed to ``recipient``."""
    if not 1 <= len(secret) <= wire.MAX_SECRET_LEN:
        raise ValueError(f"a secret is 1-{wire.MAX_SECRET_LEN} bytes")
    eph = X25519PrivateKey.generate()
    eph_pub = x25519_raw(eph.public_key())
    rcpt = x25519_raw(recipient)
    key = _key(eph.exchange(recipient), challenge, server_id, client_id, name, eph_pub, rcpt)
    nonce = os.urandom(wire.NONCE_LEN)
    aad = wire.release_fixed(
        challenge, rtt_ns, bound_ns, eph_pub, nonce, len(secret) + wire.TAG_LEN
    )
    body = aad + ChaCha20Poly1305(key).encrypt(nonce, secret, aad)
    return body + server_key.sign(wire.SERVER_CONTEXT + body)


class SealError(ValueError):
    """A release that does not verify or does not decrypt: never a secret."""


def open_release(
    release: wire.Release,
    server_pub: Ed25519PublicKey,
    client_box: X25519PrivateKey,
    *,
    server_id: str,
    client_id: str,
    name: str,
) -> bytes:
    """The secret from a release, after checking the server's signature and the AEAD tag."""
    verify_server(server_pub, release.signature, release.signed)
    rcpt = x25519_raw(client_box.public_key())
    try:
        shared = client_box.exchange(X25519PublicKey.from_public_bytes(release.ephemeral))
    except ValueError:
        raise SealError("bad ephemeral key in the release") from None
    key = _key(shared, release.challenge, server_id, client_id, name, release.ephemeral, rcpt)
    try:
        return ChaCha20Poly1305(key).decrypt(release.nonce, release.ciphertext, release.aad)
    except InvalidTag:
        raise SealError("the release does not decrypt with this client's key") from None


def sign_server(server_key: Ed25519PrivateKey, body: bytes) -> bytes:
    return body + server_key.sign(wire.SERVER_CONTEXT + body)


def verify_server(server_pub: Ed25519PublicKey, signature: bytes, signed: bytes) -> None:
    try:
        server_pub.verify(signature, wire.SERVER_CONTEXT + signed)
    except InvalidSignature:
        raise SealError("bad server signature") from None
