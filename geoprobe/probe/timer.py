"""A precise timer thread: fires callbacks within tens of microseconds of their due time.

asyncio's timers are only about 1 ms precise (epoll's timeout is in whole milliseconds), which
is too coarse to emulate path latency to 0.3 ms. This thread sleeps on a condition variable until
shortly before the due time (with the thread's timer slack cut to 1 µs) and spins the rest.
One timer serves any number of responders, so a testbed of hundreds of landmarks needs one thread.
Callbacks run on the timer thread: they must be short and thread-safe (sending a datagram is).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Self

log = logging.getLogger(__name__)

_PR_SET_TIMERSLACK = 29


def _cut_timer_slack(ns: int) -> None:
    """Linux rounds sleeps up by the thread's timer slack (50 µs by default); cut it for this
    thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
        pass


class PreciseTimer:
    """Run callbacks at ``time.monotonic_ns()`` deadlines on one background thread."""

    def __init__(self, spin_ns: int = 300_000, switch_interval: float | None = 0.0005) -> None:
        self._spin_ns = spin_ns
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The GIL holder is asked to let go only after the switch interval (5 ms by default): a busy
        # event loop could hold a due callback back that long. Shorten it for this process.
        if switch_interval is not None and sys.getswitchinterval() > switch_interval:
            sys.setswitchinterval(switch_interval)

    @staticmethod
    def now() -> int:
        return time.monotonic_ns()

    def start(self) -> Self:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="geoprobe-precise-timer", daemon=True
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call_at(self, due_ns: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the timer thread at monotonic time ``due_ns`` (at once if already past)."""
        with self._cond:
            heapq.heappush(self._heap, (due_ns, next(self._seq), fn))
            if self._heap[0][0] == due_ns:
                self._cond.notify()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        self.call_at(time.monotonic_ns() + int(delay_s * 1e9), fn)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        _cut_timer_slack(1000)
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._heap:
                    self._cond.wait()
                    continue
                due = self._heap[0][0]
                wait_ns = due - time.monotonic_ns() - self._spin_ns
                if wait_ns > 0:
                    self._cond.wait(wait_ns / 1e9)
                    continue
            while time.monotonic_ns() < due:
                pass
            with self._cond:
                ready: list[Callable[[], None]] = []
                now = time.monotonic_ns()
                while self._heap and self._heap[0][0] <= now:
                    ready.append(heapq.heappop(self._heap)[2])
            for fn in ready:
                try:
                    fn()
                except Exception:  # a bad callback must not stop every other landmark
                    log.exception("precise timer callback failed")


_shared: PreciseTimer | None = None
_shared_lock = threading.Lock()


def shared_timer() -> PreciseTimer:
    """The process-wide timer (started on first use), shared by every responder in the process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PreciseTimer().start()
        return _shared
