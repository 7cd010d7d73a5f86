"""The server's decisions: release within the bound, refuse everything else, log each one."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from geoprobe.keyrelease import seal, wire
from tests.keyrelease.harness import Harness


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_release_within_the_bound_opens_to_the_secret(h: Harness) -> None:
    chal = h.challenge()
    reply = h.answer(chal, after_ms=2.0)
    assert wire.message_type(reply) == wire.RELEASE
    assert h.open(reply) == b"s3cret"
    rel = wire.parse_release(reply)
    assert rel.rtt_ns == 2_000_000 and rel.bound_ns == 5_000_000
    (rec,) = h.records
    assert rec["event"] == "release" and rec["rtt_ms"] == 2.0 and rec["bound_ms"] == 5.0
    assert rec["client"] == "vm-1" and rec["name"] == "vault" and rec["peer"] == "10.0.0.2:40000"


def test_a_slow_answer_is_refused_naming_the_bound_and_the_rtt(h: Harness) -> None:
    chal = h.challenge()
    reply = h.answer(chal, after_ms=20.0)
    reason = h.refusal(reply)
    assert reason == "round trip 20.000 ms exceeds the bound 5 ms for client 'vm-1'"
    assert wire.parse_refusal(reply).why is wire.Why.TOO_SLOW and wire.Why.TOO_SLOW.transient
    assert "\n" not in reason
    (rec,) = h.records
    assert rec["event"] == "refuse" and rec["rtt_ms"] == 20.0 and rec["bound_ms"] == 5.0


def test_the_bound_is_inclusive_and_one_nanosecond_more_is_refused(h: Harness) -> None:
    assert wire.message_type(h.answer(h.challenge(), after_ms=5.0)) == wire.RELEASE
    chal = h.challenge()
    h.now += 5_000_001
    signed = wire.answer_signed_bytes(chal.challenge, "vault", "ks-a", "vm-1")
    (reply,) = h.send(wire.build_answer(chal.challenge, h.me.sign_key.sign(signed)))
    assert "exceeds the bound" in h.refusal(reply)


def test_bound_in_km_is_100_km_per_ms(tmp_path: Path) -> None:
    h = Harness(tmp_path, bound="bound_km = 500")
    assert wire.message_type(h.answer(h.challenge(), after_ms=4.9)) == wire.RELEASE
    reason = h.refusal(h.answer(h.challenge(), after_ms=5.1))
    assert "5.100 ms exceeds the bound 5 ms (500 km)" in reason


def test_a_replayed_answer_is_refused_and_releases_nothing(h: Harness) -> None:
    chal = h.challenge()
    signed = wire.answer_signed_bytes(chal.challenge, "vault", "ks-a", "vm-1")
    answer = wire.build_answer(chal.challenge, h.me.sign_key.sign(signed))
    h.now += 1_000_000
    (first,) = h.send(answer)
    (second,) = h.send(answer)
    assert wire.message_type(first) == wire.RELEASE
    assert h.refusal(second) == "unknown, used or expired challenge"
    assert [r["event"] for r in h.records] == ["release", "refuse"]


def test_a_refused_answer_uses_the_challenge_up_too(h: Harness) -> None:
    chal = h.challenge()
    h.answer(chal, after_ms=30.0)
    h.now -= 29_000_000  # even were the clock to go back, the challenge is spent
    assert h.refusal(h.answer(chal, after_ms=0.0)) == "unknown, used or expired challenge"


def test_an_expired_challenge_is_refused_and_then_forgotten(h: Harness) -> None:
    chal = h.challenge()
    reason = h.refusal(h.answer(chal, after_ms=1500.0))
    assert reason.startswith("challenge expired: answered after 1500.000 ms")
    chal = h.challenge()
    h.now += 2_100_000_000  # past twice the lifetime: purged
    h.send(b"x")  # any datagram runs the purge
    assert h.refusal(h.answer(chal, after_ms=0.0)) == "unknown, used or expired challenge"
    assert h.server.pending == {}


def test_a_forged_answer_is_refused_and_leaves_the_challenge_to_the_client(h: Harness) -> None:
    chal = h.challenge()
    forged = h.answer(chal, after_ms=1.0, signer=Ed25519PrivateKey.generate())
    assert h.refusal(forged) == "bad signature for client 'vm-1'"
    assert wire.message_type(h.answer(chal, after_ms=1.0)) == wire.RELEASE


def test_a_signature_for_another_secret_or_server_does_not_verify(h: Harness) -> None:
    chal = h.challenge()
    assert "bad signature" in h.refusal(h.answer(chal, after_ms=1.0, name="other"))
    signed = wire.answer_signed_bytes(chal.challenge, "vault", "ks-b", "vm-1")
    (reply,) = h.send(wire.build_answer(chal.challenge, h.me.sign_key.sign(signed)))
    assert "bad signature" in h.refusal(reply)


def test_an_answer_from_another_address_is_refused(h: Harness) -> None:
    chal = h.challenge()
    reply = h.answer(chal, after_ms=1.0, addr=("10.9.9.9", 1))
    assert h.refusal(reply) == "answer from another address"
    assert wire.message_type(h.answer(chal, after_ms=0.0)) == wire.RELEASE


def test_unknown_clients_and_secrets_they_may_not_have_are_refused(h: Harness) -> None:
    import os

    rid = os.urandom(32)
    (reply,) = h.send(wire.build_request(rid, "intruder", "vault"))
    ref = wire.parse_refusal(reply)
    assert ref.ref == rid and ref.reason == "unknown client 'intruder'"
    assert ref.why is wire.Why.UNKNOWN_CLIENT and not ref.why.transient
    (reply,) = h.send(wire.build_request(rid, "vm-1", "other"))
    assert h.refusal(reply) == "client 'vm-1' may not have secret 'other'"
    assert h.server.pending == {} and h.server.released == 0


def test_refusals_are_signed_by_the_server(h: Harness) -> None:
    ref = wire.parse_refusal(h.answer(h.challenge(), after_ms=9.0))
    pub = Ed25519PublicKey.from_public_bytes(h.ref.pubkey)
    seal.verify_server(pub, ref.signature, ref.signed)
    with pytest.raises(seal.SealError):
        seal.verify_server(pub, ref.signature, ref.signed[:-1] + b"X")


def test_a_release_opens_only_with_this_clients_box_key_and_untampered(h: Harness) -> None:
    reply = h.answer(h.challenge(), after_ms=1.0)
    rel = wire.parse_release(reply)
    pub = Ed25519PublicKey.from_public_bytes(h.ref.pubkey)
    with pytest.raises(seal.SealError, match="does not decrypt"):
        seal.open_release(
            rel, pub, X25519PrivateKey.generate(), server_id="ks-a", client_id="vm-1", name="vault"
        )
    with pytest.raises(seal.SealError, match="does not decrypt"):
        seal.open_release(rel, pub, h.me.box_key, server_id="ks-a", client_id="vm-1", name="other")
    flipped = bytearray(reply)
    flipped[len(reply) - 70] ^= 1  # inside the ciphertext
    with pytest.raises(seal.SealError, match="server signature"):
        h.open(bytes(flipped))
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(seal.SealError, match="server signature"):
        seal.open_release(
            rel, other, h.me.box_key, server_id="ks-a", client_id="vm-1", name="vault"
        )


def test_nothing_the_server_sends_is_larger_than_what_caused_it(h: Harness) -> None:
    import os

    request = wire.build_request(os.urandom(32), "vm-1", "vault")
    (chal_msg,) = h.send(request)
    assert len(chal_msg) <= len(request)
    chal = wire.parse_challenge(chal_msg)
    reply = h.answer(chal, after_ms=1.0)
    assert len(reply) <= wire.PADDED_LEN
    assert h.send(b"GPKR\x01\x01\x00\x00short") == []  # small and malformed: no reply at all
    assert h.records[-1]["event"] == "refuse"


def test_open_challenges_are_capped_per_client(h: Harness) -> None:
    from geoprobe.keyrelease.server import MAX_PENDING_PER_CLIENT

    for _ in range(MAX_PENDING_PER_CLIENT):
        h.challenge()
    import os

    (reply,) = h.send(wire.build_request(os.urandom(32), "vm-1", "vault"))
    assert h.refusal(reply) == "busy: too many open challenges"
    assert len(h.server.pending) == MAX_PENDING_PER_CLIENT


def test_the_log_line_is_json_and_one_line(h: Harness, tmp_path: Path) -> None:
    import io
    import json

    from geoprobe.keyrelease.server import JsonLog

    buf = io.StringIO()
    JsonLog(buf)({"event": "refuse", "reason": "a\nb"})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["reason"] == "a\nb"


def test_the_kernel_receive_stamp_takes_the_servers_own_wait_out(h: Harness) -> None:
    """Read 7 ms after the challenge, but the kernel had it at 4 ms: the server was busy."""
    reply = h.answer(h.challenge(), after_ms=7.0, kernel_age_ms=3.0)
    assert wire.message_type(reply) == wire.RELEASE
    assert wire.parse_release(reply).rtt_ns == 4_000_000
    assert h.records[-1]["stamp"] == "kernel" and h.records[-1]["rtt_ms"] == 4.0


def test_a_realtime_clock_step_falls_back_to_the_read_time(h: Harness) -> None:
    """The stamp is realtime: after a step (here 1 ms forward) it could shorten the path."""
    reply = h.answer(h.challenge(), after_ms=7.0, kernel_age_ms=3.0, clock_step_ns=1_000_000)
    assert "round trip 7.000 ms exceeds" in h.refusal(reply)
    assert h.records[-1]["stamp"] == "read"
    back = h.answer(h.challenge(), after_ms=7.0, kernel_age_ms=3.0, clock_step_ns=-1_000_000)
    assert "round trip 7.000 ms exceeds" in h.refusal(back)


def test_a_stamp_older_than_the_challenge_is_ignored(h: Harness) -> None:
    reply = h.answer(h.challenge(), after_ms=7.0, kernel_age_ms=8.0)
    assert "round trip 7.000 ms exceeds" in h.refusal(reply)
    assert h.records[-1]["stamp"] == "read"
