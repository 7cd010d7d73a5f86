"""Shamir shares over GF(256): any k rebuild the secret, fewer do not."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.keyrelease import shares


def _slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication reduced by the AES polynomial, bit by bit."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return out


def test_field_multiplication_matches_the_bitwise_definition() -> None:
    for a in range(256):
        for b in range(256):
            assert shares.gf_mul(a, b) == _slow_mul(a, b)


def test_division_inverts_multiplication() -> None:
    for a in range(256):
        for b in range(1, 256):
            assert shares.gf_div(shares.gf_mul(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        shares.gf_div(1, 0)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(2, 5), st.integers(0, 3))
def test_every_k_subset_rebuilds_the_secret(secret: bytes, k: int, extra: int) -> None:
    n = k + extra
    parts = shares.split(secret, k, n)
    assert len(parts) == n and all(len(p) == len(secret) + 1 for p in parts)
    for subset in itertools.combinations(parts, k):
        assert shares.combine(list(subset)) == secret
    assert shares.combine(parts) == secret  # more than k is fine too


def test_fewer_than_k_shares_do_not_rebuild_it() -> None:
    secret = bytes(range(32))
    parts = shares.split(secret, 3, 5)
    for subset in itertools.combinations(parts, 2):
        assert shares.combine(list(subset)) != secret


def test_one_share_alone_is_not_the_secret_and_varies_between_splits() -> None:
    secret = b"\x00" * 32
    first = {shares.split(secret, 2, 2)[0][1:] for _ in range(20)}
    assert len(first) == 20  # random polynomials: no fixed relation to the secret
    assert secret not in first


def test_bad_shares_and_parameters_are_refused() -> None:
    parts = shares.split(b"abc", 2, 3)
    with pytest.raises(ValueError, match="same index"):
        shares.combine([parts[0], parts[0]])
    with pytest.raises(ValueError, match="differ in length"):
        shares.combine([parts[0], parts[1][:-1]])
    with pytest.raises(ValueError, match="index 0"):
        shares.combine([b"\x00abc", parts[1]])
    with pytest.raises(ValueError):
        shares.split(b"abc", 3, 2)
    with pytest.raises(ValueError):
        shares.split(b"", 2, 2)
