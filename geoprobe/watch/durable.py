"""What keeps the watch's record and its response whole across crashes, races and failing disks.

- ``WatchRecord`` opens, in this order, the event stream, the state dir's lock (a second watch on
  the dir refuses; see ``geoprobe.statelock``) and the fail-safe store (a corrupt, read-only or
  full store is said once, on stderr and as an ``io.geoprobe.store.failed`` event, and the watch
  goes on without recording), and closes them together.
- ``accepting`` queues each event that calls for actions in the store's outbox before handing it
  to the response thread; ``redeliver`` hands that thread, at start, every queued event whose
  actions a crash cut short. Together they make the response to an event happen even when the
  process dies part-way through it (``geoprobe.defend.runner`` keeps each action to one run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TextIO, cast

from geoprobe import statelock
from geoprobe.errors import InputError
from geoprobe.events import make_event, write_event
from geoprobe.store import DB_NAME, StoreError
from geoprobe.watch.state import STORE_FAILED, EventFile, FailSafeWatchStore

Deliver = Callable[[dict[str, Any]], None]
FAILED = "watching and acting on without recording"


class WatchRecord:
    """The watch's event stream, state dir lock and store, opened and closed together."""

    def __init__(
        self, state_dir: Path, events_path: Path | None, stdout: IO[str], log: logging.Logger
    ) -> None:
        self.log = log
        self.store_path = Path(state_dir) / DB_NAME
        self.stream = _event_stream(events_path, stdout, log)
        self.lock: statelock.StateLock | None = None
        try:
            self.lock = statelock.hold(state_dir, what="geoprobe watch")
        except statelock.StateLockError as exc:
            # A dir where no lock file can be made (read-only): watched unlocked, not unwatched.
            log.error("%s; watching without the lock", exc)
        except BaseException:
            self.stream.close()
            raise
        self.store = FailSafeWatchStore(
            self.store_path,
            on_failure=self._store_failed,
            on_recovery=lambda: log.warning("state store %s: writable again", self.store_path),
        )

    @property
    def text_stream(self) -> TextIO:
        """The event stream for ``geoprobe.events.write_event`` (it only writes and flushes)."""
        return cast(TextIO, self.stream)

    def _store_failed(self, exc: StoreError) -> None:
        """Said once per run of failures: on stderr and as an event in the event stream."""
        self.log.error("%s; %s", exc, FAILED)
        ev = make_event(STORE_FAILED, {"store": str(exc.path), "problem": exc.problem})
        write_event(self.text_stream, ev)

    def emit(self, event: dict[str, Any]) -> None:
        """Record the event (if the store takes it), then write it to the stream."""
        self.store.record_event(event)
        write_event(self.text_stream, event)

    def close(self) -> None:
        self.store.close()
        self.stream.close()
        if self.lock is not None:
            self.lock.release()


def _event_stream(path: Path | None, stdout: IO[str], log: logging.Logger) -> EventFile:
    def failed(exc: OSError) -> None:
        where = path if path is not None else "stdout"
        log.error("cannot write events to %s: %s; watching on", where, exc.strerror or exc)

    if path is None:
        return EventFile(stream=stdout, on_failure=failed)
    try:
        return EventFile.open(path, on_failure=failed)
    except OSError as exc:
        raise InputError(
            f"cannot open: {exc.strerror or exc}", file=path, field="--events"
        ) from None


def accepting(
    deliver: Deliver, policy: Any, store_path: Path, log: logging.Logger
) -> Callable[[Mapping[str, Any]], None]:
    """Queue each event in the store's outbox, then hand it to the response thread."""
    from geoprobe import defend

    def on_event(ev: Mapping[str, Any]) -> None:
        defend.accept(ev, policy, store_path=store_path, log=lambda m: log.error("%s", m))
        deliver(dict(ev))

    return on_event


def redeliver(deliver: Deliver, store_path: Path, log: logging.Logger) -> int:
    """Hand the response thread every queued event whose actions did not all finish; returns
    how many."""
    from geoprobe import defend

    try:
        again = defend.pending(store_path)
    except StoreError as exc:
        log.error("%s; cannot look for events to deliver again", exc)
        return 0
    for ev in again:
        log.warning(
            "event %s (%s): its actions did not all finish before the last stop; delivering it "
            "again",
            ev.get("id"),
            ev.get("type"),
        )
        deliver(ev)
    return len(again)
