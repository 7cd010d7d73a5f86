"""Probe many landmarks at once: N samples each, spaced with jitter, under a global packet rate.

Samples to one landmark are pipelined: the next one leaves after a short jittered gap, without
waiting for the previous reply, so a whole run takes about (samples - 1) x gap + the largest RTT
+ the time the rate cap needs to send everything. Each sample has its own timeout; a landmark that
answers none of them gets a failure reason ("timeout", "refused", ...).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence

from geoprobe.errors import InputError
from geoprobe.landmarks import METHODS, Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe.base import ProbeFailure, Prober, Sample

Progress = Callable[[int, int], None]  # (landmarks finished, landmarks in total)

SAMPLE_GAP = 0.02  # mean gap between samples to one landmark (s); each gap is drawn from 0.5-1.5x
# When several samples fail differently, report the most telling reason.
_REASON_ORDER = ("refused", "unreachable", "not permitted")


class Pacer:
    """A global packets-per-second cap: each send takes the next free slot."""

    def __init__(self, pps: float) -> None:
        self.interval = 1.0 / pps
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def open_prober(method: str) -> Prober:
    if method == "udp":
        from geoprobe.probe.udp import UdpProber

        return UdpProber()
    if method == "tcp":
        from geoprobe.probe.tcp import TcpProber

        return TcpProber()
    if method == "icmp":
        from geoprobe.probe.icmp import open_icmp

        return open_icmp()
    raise InputError(
        f"unknown probe method {method!r} (known: {', '.join(METHODS)})", field="method"
    )


async def resolve(landmark: Landmark, timeout: float) -> str:
    """The landmark's address, resolving its host name if it has no address."""
    target = landmark.target
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(target, None, type=socket.SOCK_DGRAM), timeout
        )
    except (TimeoutError, OSError):
        raise ProbeFailure(f"cannot resolve {target}") from None
    if not infos:
        raise ProbeFailure(f"cannot resolve {target}")
    return str(infos[0][4][0])


def _failure(reasons: Sequence[str], rejected: Counter[str]) -> str:
    for r in _REASON_ORDER:
        if r in reasons:
            return r
    other = [r for r in reasons if r != "timeout"]
    if other:
        return other[0]
    if rejected:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items()))
        return f"timeout (rejected replies: {detail})"
    return "timeout"


async def measure_async(
    landmarks: Sequence[Landmark],
    method: str = "udp",
    samples: int = 3,
    timeout: float = 2.0,
    pps: float = 200.0,
    progress: Progress | None = None,
    gap: float = SAMPLE_GAP,
) -> list[Measurement]:
    """Probe ``landmarks`` concurrently; one Measurement per landmark, in the given order."""
    if samples < 1:
        raise InputError(f"must be at least 1, got {samples}", field="samples")
    if not timeout > 0:
        raise InputError(f"must be positive, got {timeout}", field="timeout")
    if not pps > 0:
        raise InputError(f"must be positive, got {pps}", field="pps")
    prober = await open_prober(method)
    pacer = Pacer(pps)
    total = len(landmarks)
    finished = 0

    async def one(lm: Landmark) -> Measurement:
        nonlocal finished
        m = Measurement(landmark_id=lm.id, method=method, path=prober.path)
        try:
            await _probe(lm, m)
        finally:
            finished += 1
            if progress is not None:
                progress(finished, total)
        return m

    async def _probe(lm: Landmark, m: Measurement) -> None:
        unsupported = prober.supports(lm)
        if unsupported:
            m.failure = unsupported
            return
        try:
            addr = await resolve(lm, timeout)
        except ProbeFailure as exc:
            m.failure = exc.reason
            return
        m.dst_addr = addr
        waits: list[asyncio.Task[Sample]] = []
        for k in range(samples):
            if k:
                await asyncio.sleep(gap * random.uniform(0.5, 1.5))
            await pacer.wait()
            m.sent += 1
            waits.append(asyncio.ensure_future(asyncio.wait_for(prober.send(lm, addr), timeout)))
        reasons: list[str] = []
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, ProbeFailure):
                reasons.append(outcome.reason)
            elif isinstance(outcome, TimeoutError):
                reasons.append("timeout")
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                m.rtts_ms.append(outcome.rtt_ms)
                if outcome.sent_at is not None:
                    m.sent_at.append(outcome.sent_at)
                if outcome.clock_offset_ms is not None:
                    m.clock_offsets_ms.append(outcome.clock_offset_ms)
                if outcome.evidence is not None:
                    m.evidence.append(outcome.evidence)
        if not m.rtts_ms:
            m.failure = _failure(reasons, prober.rejected.get(lm.id, Counter()))

    try:
        results = await asyncio.gather(*(one(lm) for lm in landmarks))
    finally:
        prober.close()
    for m in results:
        rejected = prober.rejected.get(m.landmark_id)
        if rejected:
            m.rejected = dict(rejected)
    return list(results)


def measure(
    landmarks: Sequence[Landmark],
    method: str = "udp",
    samples: int = 3,
    timeout: float = 2.0,
    pps: float = 200.0,
    progress: Progress | None = None,
) -> list[Measurement]:
    """Blocking wrapper of :func:`measure_async` for callers without an event loop."""
    return asyncio.run(measure_async(landmarks, method, samples, timeout, pps, progress))
