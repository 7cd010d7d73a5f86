"""The watch's tables in the state store: fixes, fingerprints, baselines, events and transitions.

A fix and the fingerprint it was solved from go in one transaction, so after ``kill -9`` the store
holds both or neither. Fixes are kept as their JSON record: readers (``check`` in cron mode,
reports) need the verdict and the RTTs, not the region geometry.

Every failure comes out as one ``StoreError`` naming the file. The watch uses
``FailSafeWatchStore``, which reports the first failure once and goes on without recording: watching
and acting matter more than the record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self, TypeVar

from geoprobe.geo.fix import Fix
from geoprobe.paths import open_private
from geoprobe.store import StoreError, connect, guarded, outbox_put

STORE_FAILED = "io.geoprobe.store.failed"
LOCK_WAIT_S = 60.0  # how long a one-shot command waits for another to release the state dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS watch_fixes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    source TEXT NOT NULL,            -- 'watch' or 'check'
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    error_radius_km REAL NOT NULL,
    bound TEXT NOT NULL,
    country TEXT,
    certified TEXT,
    probability REAL NOT NULL,
    landmarks INTEGER NOT NULL,
    fix_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watch_fixes_source_time ON watch_fixes(source, time);
CREATE TABLE IF NOT EXISTS watch_fingerprints (
    fix_id INTEGER PRIMARY KEY REFERENCES watch_fixes(id) ON DELETE CASCADE,
    rtts_json TEXT NOT NULL          -- landmark id -> min RTT (ms) of the round
);
CREATE TABLE IF NOT EXISTS watch_baselines (
    name TEXT PRIMARY KEY,           -- 'rtt' or a signal's name
    time REAL NOT NULL,
    data_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watch_events (
    id TEXT PRIMARY KEY,             -- the CloudEvent id
    time REAL NOT NULL,
    type TEXT NOT NULL,
    event_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watch_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reasons_json TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredFix:
    id: int
    time: float
    source: str
    lat: float
    lon: float
    error_radius_km: float
    bound: str
    country: str | None
    certified: str | None
    probability: float
    record: dict[str, Any]  # Fix.to_json()
    rtts: dict[str, float]


class WatchStore:
    """Open once per process; every method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        try:
            with self._tx() as c:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
        except StoreError:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with guarded(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def record_fix(
        self,
        fix: Fix,
        rtts: Mapping[str, float],
        *,
        source: str = "watch",
        time: float | None = None,
        event: Mapping[str, Any] | None = None,
        respond: bool = False,
    ) -> int:
        """The fix and its fingerprint, atomically; with ``event``, also the event the fix gave
        rise to, and with ``respond`` the event queued in the outbox for the policy.

        One transaction, so after a crash the store never holds the new fix without the event
        (which would hide the move from the next run) or the event without its queue entry
        (which would lose the response).
        """
        t = _time.time() if time is None else time
        with self._tx() as c:
            if event is not None:
                self._insert_event(c, event)
                if respond:
                    outbox_put(c, event)
            cur = c.execute(
                "INSERT INTO watch_fixes (time, source, lat, lon, error_radius_km, bound, country, certified,"
                " probability, landmarks, fix_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    t,
                    source,
                    fix.lat,
                    fix.lon,
                    fix.error_radius_km,
                    fix.bound,
                    fix.country,
                    fix.certified,
                    fix.probability,
                    len(fix.landmarks_used),
                    json.dumps(fix.to_json()),
                ),
            )
            fid = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO watch_fingerprints (fix_id, rtts_json) VALUES (?,?)",
                (fid, json.dumps({k: float(v) for k, v in rtts.items()})),
            )
        return fid

    def last_fix(self, source: str | None = None) -> StoredFix | None:
        with guarded(self.path):
            return self._last_fix(source)

    def _last_fix(self, source: str | None) -> StoredFix | None:
        q = "SELECT f.*, p.rtts_json FROM watch_fixes f JOIN watch_fingerprints p ON p.fix_id = f.id"
        args: tuple[Any, ...] = ()
        if source is not None:
            q += " WHERE f.source = ?"
            args = (source,)
        row = self.conn.execute(q + " ORDER BY f.id DESC LIMIT 1", args).fetchone()
        if row is None:
            return None
        return StoredFix(
            id=row["id"],
            time=row["time"],
            source=row["source"],
            lat=row["lat"],
            lon=row["lon"],
            error_radius_km=row["error_radius_km"],
            bound=row["bound"],
            country=row["country"],
            certified=row["certified"],
            probability=row["probability"],
            record=json.loads(row["fix_json"]),
            rtts=json.loads(row["rtts_json"]),
        )

    def count_fixes(self) -> int:
        with guarded(self.path):
            return int(self.conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0])

    def save_baseline(self, name: str, data: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO watch_baselines (name, time, data_json) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET time = excluded.time, data_json = excluded.data_json",
                (name, _time.time(), json.dumps(dict(data))),
            )

    def load_baseline(self, name: str) -> dict[str, Any] | None:
        with guarded(self.path):
            row = self.conn.execute(
                "SELECT data_json FROM watch_baselines WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else dict(json.loads(row["data_json"]))

    def record_event(self, event: Mapping[str, Any]) -> None:
        with self._tx() as c:
            self._insert_event(c, event)

    @staticmethod
    def _insert_event(c: sqlite3.Connection, event: Mapping[str, Any]) -> None:
        c.execute(
            "INSERT OR IGNORE INTO watch_events (id, time, type, event_json) VALUES (?,?,?,?)",
            (str(event["id"]), _time.time(), str(event["type"]), json.dumps(dict(event))),
        )

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        with guarded(self.path):
            return self._events(type_)

    def _events(self, type_: str | None) -> list[dict[str, Any]]:
        if type_ is None:
            rows = self.conn.execute(
                "SELECT event_json FROM watch_events ORDER BY rowid"
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT event_json FROM watch_events WHERE type = ? ORDER BY rowid", (type_,)
            ).fetchall()
        return [dict(json.loads(r["event_json"])) for r in rows]

    def record_transition(self, frm: str, to: str, reasons: list[str], time: float) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO watch_transitions (time, from_state, to_state, reasons_json) VALUES (?,?,?,?)",
                (time, frm, to, json.dumps(reasons)),
            )

    def transitions(self) -> list[tuple[str, str, list[str]]]:
        with guarded(self.path):
            rows = self.conn.execute(
                "SELECT from_state, to_state, reasons_json FROM watch_transitions ORDER BY id"
            ).fetchall()
        return [(r["from_state"], r["to_state"], list(json.loads(r["reasons_json"]))) for r in rows]


@contextmanager
def locked_store(
    state_dir: str | Path, *, timeout: float | None = None, what: str = "geoprobe"
) -> Iterator[WatchStore]:
    """The state dir's lock (waiting up to ``timeout``, default ``LOCK_WAIT_S``), then its store:
    for one-shot commands that read the last fix and record the next, which must not interleave."""
    from geoprobe import statelock
    from geoprobe.paths import private_dir
    from geoprobe.store import default_path

    wait = LOCK_WAIT_S if timeout is None else timeout
    with guarded(default_path(state_dir)):  # a dir that cannot be made names the store
        private_dir(state_dir)
    with (
        statelock.hold(state_dir, timeout=wait, what=what),
        WatchStore(default_path(state_dir)) as store,
    ):
        yield store


T = TypeVar("T")


class FailSafeWatchStore(WatchStore):
    """The watch's store: a failure to open, read or write is reported once and then absorbed.

    A read-only, corrupt or full store must not stop the watch that guards the machine. Writes
    that fail are dropped (reads answer "nothing stored"); the first failure of a run of failures
    goes to ``on_failure``, and the first success after it to ``on_recovery``. Nothing is deleted
    or recreated: the file is left as it was for the operator.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        on_failure: Callable[[StoreError], None],
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_failure = on_failure
        self.on_recovery = on_recovery
        self.failure: StoreError | None = None
        self.usable = False
        self._lock = threading.RLock()
        try:
            super().__init__(path)
            self.usable = True
        except StoreError as exc:
            self._failed(exc)

    def _failed(self, exc: StoreError) -> None:
        first = self.failure is None
        self.failure = exc
        if first:
            self.on_failure(exc)

    def _try(self, fn: Callable[[], T], default: T) -> T:
        if not self.usable:
            return default
        with self._lock:
            try:
                out = fn()
            except StoreError as exc:
                self._failed(exc)
                return default
            if self.failure is not None:
                self.failure = None
                if self.on_recovery is not None:
                    self.on_recovery()
            return out

    def close(self) -> None:
        if self.usable:
            self.conn.close()
            self.usable = False

    def record_fix(
        self,
        fix: Fix,
        rtts: Mapping[str, float],
        *,
        source: str = "watch",
        time: float | None = None,
        event: Mapping[str, Any] | None = None,
        respond: bool = False,
    ) -> int:
        base = super().record_fix
        return self._try(
            lambda: base(fix, rtts, source=source, time=time, event=event, respond=respond), 0
        )

    def last_fix(self, source: str | None = None) -> StoredFix | None:
        base = super().last_fix
        return self._try(lambda: base(source), None)

    def count_fixes(self) -> int:
        base = super().count_fixes
        return self._try(base, 0)

    def save_baseline(self, name: str, data: Mapping[str, Any]) -> None:
        base = super().save_baseline
        self._try(lambda: base(name, data), None)

    def load_baseline(self, name: str) -> dict[str, Any] | None:
        base = super().load_baseline
        return self._try(lambda: base(name), None)

    def record_event(self, event: Mapping[str, Any]) -> None:
        base = super().record_event
        self._try(lambda: base(event), None)

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        base = super().events
        return self._try(lambda: base(type_), [])

    def record_transition(self, frm: str, to: str, reasons: list[str], time: float) -> None:
        base = super().record_transition
        self._try(lambda: base(frm, to, reasons, time), None)

    def transitions(self) -> list[tuple[str, str, list[str]]]:
        base = super().transitions
        return self._try(base, [])


class EventFile:
    """The watch's event stream (a private file, or stdout) that a failing write cannot stop.

    A file gets each line in one ``write(2)`` on an ``O_APPEND`` descriptor, so no buffer holds a
    half-written line to repeat later. A full disk makes one write fail; the line is lost but the
    watch goes on, and the failure is reported once per run of failures through ``on_failure``.
    """

    def __init__(
        self,
        *,
        on_failure: Callable[[OSError], None],
        fd: int | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.fd = fd
        self.stream = stream
        self.on_failure = on_failure
        self.failing = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, *, on_failure: Callable[[OSError], None]) -> EventFile:
        """Append to ``path``, created 0600 (an existing file we own is tightened to 0600)."""
        return cls(fd=open_private(path), on_failure=on_failure)

    def _put(self, data: str) -> None:
        if self.fd is None:
            assert self.stream is not None
            self.stream.write(data)
            self.stream.flush()
            return
        buf = data.encode("utf-8")
        while buf:
            n = os.write(self.fd, buf)
            buf = buf[n:]

    def write(self, data: str) -> int:
        with self._lock:
            try:
                self._put(data)
            except OSError as exc:
                if not self.failing:
                    self.failing = True
                    self.on_failure(exc)
                return 0
            self.failing = False
        return len(data)

    def flush(self) -> None:
        """Each ``write`` is already out."""

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
