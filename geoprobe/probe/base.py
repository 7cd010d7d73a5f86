"""What every probing method gives the scheduler: samples, failures and rejected replies."""

from __future__ import annotations

import asyncio
import errno
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from geoprobe.landmarks import Landmark


@dataclass(frozen=True, slots=True)
class Sample:
    rtt_ms: float
    clock_offset_ms: float | None = None  # landmark clock minus ours (signed echo only)
    evidence: dict[str, Any] | None = None  # the signed reply, for offline audit
    sent_at: float | None = None  # our wall clock at sending (UNIX s): orders a round's samples


class ProbeFailure(Exception):
    """One sample failed for a reason worth reporting ("refused", "unreachable", ...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def reason_for(exc: OSError) -> str:
    """Short, stable failure reasons for socket errors."""
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EHOSTDOWN):
        return "unreachable"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return "not permitted"
    return exc.strerror or type(exc).__name__


class Prober(Protocol):
    """One probing method over open sockets. ``send`` fires one probe now and returns its future."""

    method: str
    path: str
    rejected: defaultdict[str, Counter[str]]  # landmark id -> reason -> count

    def supports(self, landmark: Landmark) -> str | None:
        """None if the landmark can be probed this way, else the failure reason."""
        ...

    def send(self, landmark: Landmark, addr: str) -> asyncio.Future[Sample]: ...

    def close(self) -> None: ...
