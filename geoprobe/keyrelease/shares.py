"""Shamir secret sharing over GF(256).

A secret split across n key servers, any k of which rebuild it.

Each byte of the secret is the constant term of its own random polynomial of degree k-1; share
``x`` holds the polynomials' values at ``x``. Fewer than k shares say nothing about the secret
(every value of it is equally likely), so one compromised server cannot release it alone.
A share is stored and sent as one byte ``x`` (1-255) followed by the values.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

MAX_SHARES = 255


def _tables() -> tuple[list[int], list[int]]:
    """Exponent and log tables for GF(2^8) with the AES polynomial x^8+x^4+x^3+x+1, generator 3."""
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        # multiply by the generator 3 = x + 1
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] - _LOG[b] + 255]


def split(secret: bytes, k: int, n: int) -> list[bytes]:
    """n shares of ``secret``; any k rebuild it.

    k = 1 gives n copies (each server alone releases).
    """
    if not 1 <= k <= n <= MAX_SHARES:
        raise ValueError(f"need 1 <= k <= n <= {MAX_SHARES}, got k={k} n={n}")
    if not secret:
        raise ValueError("the secret is empty")
    coeffs = [[b, *secrets.token_bytes(k - 1)] for b in secret]
    shares = []
    for x in range(1, n + 1):
        out = bytearray([x])
        for poly in coeffs:
            y = 0
            for c in reversed(poly):  # Horner
                y = gf_mul(y, x) ^ c
            out.append(y)
        shares.append(bytes(out))
    return shares


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret from k or more distinct shares (Lagrange interpolation at 0).

    Given fewer than k shares it returns a value unrelated to the secret: the count is the
    caller's to check (the client config says k).
    """
    if not shares:
        raise ValueError("no shares")
    xs = [s[0] if s else 0 for s in shares]
    if 0 in xs:
        raise ValueError("a share is empty or has index 0")
    if len(set(xs)) != len(xs):
        raise ValueError("two shares have the same index")
    size = len(shares[0])
    if size < 2 or any(len(s) != size for s in shares):
        raise ValueError("the shares differ in length")
    # Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); in GF(2^8) minus is xor.
    basis = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = gf_mul(num, xj)
                den = gf_mul(den, xj ^ xi)
        basis.append(gf_div(num, den))
    out = bytearray(size - 1)
    for pos in range(1, size):
        acc = 0
        for share, li in zip(shares, basis, strict=True):
            acc ^= gf_mul(share[pos], li)
        out[pos - 1] = acc
    return bytes(out)
