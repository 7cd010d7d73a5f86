"""The defence's tables in the state store: which actions fired, and the full audit trail.

``defend_fired`` is keyed by (event id, action index). An action is *claimed* in one
``BEGIN IMMEDIATE`` transaction before it runs, and that transaction also writes the audit's
``started`` row, so two processes handed the same event cannot both fire it and the audit shows
every action that began. Finishing writes the end row (``ok``, ``failed``, ``timeout``) and marks
the claim done, again in one transaction.

A claim whose process died before finishing (``kill -9``, power loss) is *interrupted*. The next
delivery of the event settles it: the audit gets an ``interrupted`` end row for the attempt that
died, then an action that is safe to repeat runs again (a half-done wipe must be finished), and
one that is not (a hook, a webhook) is closed as ``interrupted`` and never run again. So no
claim stays ``running`` once its process is gone and the event is delivered again, which the
outbox (``geoprobe.store``) guarantees on the next start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionResult
from geoprobe.store import (
    StoreError,
    connect,
    connect_readonly,
    describe,
    guarded,
    has_table,
    outbox_done,
    outbox_pending,
    outbox_put,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS defend_fired (
    event_id TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status TEXT,
    pid INTEGER NOT NULL,
    pid_start TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    claimed_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (event_id, action_index)
);
CREATE TABLE IF NOT EXISTS defend_events (
    event_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    verdict TEXT,
    received_at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS defend_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    event_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    warnings TEXT NOT NULL,
    data TEXT NOT NULL,
    duration_s REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS defend_audit_event ON defend_audit (event_id, action_index);
"""

STARTED = "started"
INTERRUPTED = "interrupted"


def _start_time(pid: int) -> str:
    """Process start time in clock ticks since boot (field 22 of /proc/PID/stat): pid + this
    identifies a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str) -> bool:
    return bool(start) and _start_time(pid) == start


@dataclass(frozen=True)
class Claim:
    event_id: str
    index: int
    attempts: int  # > 1 when an interrupted run is being resumed


@dataclass(frozen=True)
class Interrupted:
    """An interrupted action that is not run again: what the caller reports instead."""

    detail: str
    attempts: int


class AuditStore:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> AuditStore:
        """Open for the defence, creating the tables; ``StoreError`` when that fails."""
        p = Path(path)
        conn = connect(p)
        try:
            with guarded(p):
                conn.executescript(SCHEMA)
        except StoreError:
            conn.close()
            raise
        return cls(conn, p)

    @classmethod
    def open_readonly(cls, path: str | Path) -> AuditStore | None:
        """For --dry-run: read what fired without creating or changing anything (None when
        there is nothing readable to consult)."""
        try:
            store = cls.read(path)
        except StoreError:
            return None
        if not has_table(store.conn, "defend_fired"):
            store.close()
            return None
        return store

    @classmethod
    def read(cls, path: str | Path) -> AuditStore:
        """For ``policy audit``: an existing store, read-only and checked whole; ``StoreError``
        when it cannot be read or is damaged, so an unreadable audit is never shown as empty."""
        p = Path(path)
        conn = connect_readonly(p)
        try:
            with guarded(p):
                problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)")]
        except StoreError:
            conn.close()
            raise
        if problems != ["ok"]:
            conn.close()
            raise StoreError(
                p, describe(sqlite3.DatabaseError("; ".join(problems) + " (malformed)"))
            )
        return cls(conn, p)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with guarded(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- events and the outbox ----------------------------------------------------------------
    def record_event(self, event: Mapping[str, Any], verdict: str | None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO defend_events (event_id, type, verdict, received_at, event) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    str(event.get("id")),
                    str(event.get("type")),
                    verdict,
                    time.time(),
                    json.dumps(event),
                ),
            )

    def queue(self, event: Mapping[str, Any]) -> None:
        """Put the event in the outbox: until ``settle``, every start delivers it again."""
        with self._tx() as c:
            outbox_put(c, event)

    def settle(self, event_id: str) -> None:
        with self._tx() as c:
            outbox_done(c, event_id)

    def pending(self) -> list[dict[str, Any]]:
        with guarded(self.path):
            return outbox_pending(self.conn)

    # -- claims -------------------------------------------------------------------------------
    def status_of(self, event_id: str, index: int) -> str | None:
        """'done:<status>', 'running' (live owner), 'interrupted', or None (never claimed)."""
        with guarded(self.path):
            row = self.conn.execute(
                "SELECT state, status, pid, pid_start FROM defend_fired "
                "WHERE event_id = ? AND action_index = ?",
                (event_id, index),
            ).fetchone()
        if row is None:
            return None
        if row["state"] == "done":
            return f"done:{row['status']}"
        return "running" if _alive(row["pid"], row["pid_start"]) else INTERRUPTED

    def claim(
        self, event_id: str, index: int, verdict: str, action: str, *, rerun: bool
    ) -> Claim | Interrupted | str:
        """Claim the action for this process and audit its start.

        Returns a ``Claim`` to run it; ``Interrupted`` when an earlier attempt died and the action
        is not to be repeated (``rerun`` false); else why not ('done:ok', 'running').
        """
        pid = os.getpid()
        me = _start_time(pid)
        now = time.time()
        with self._tx() as c:
            state = self.status_of(event_id, index)
            if state is None:
                c.execute(
                    "INSERT INTO defend_fired (event_id, action_index, verdict, action, state, pid, "
                    "pid_start, claimed_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                    (event_id, index, verdict, action, pid, me, now),
                )
                self._audit(event_id, verdict, index, action, STARTED, "attempt 1", {"attempt": 1})
                return Claim(event_id, index, 1)
            if state != INTERRUPTED:
                return state
            old = c.execute(
                "SELECT pid, attempts, claimed_at FROM defend_fired "
                "WHERE event_id = ? AND action_index = ?",
                (event_id, index),
            ).fetchone()
            attempts = int(old["attempts"])
            died = (
                f"attempt {attempts} (pid {old['pid']}) was interrupted: its process died before "
                "the action finished"
            )
            if not rerun:
                detail = (
                    f"{died}; a {action} is not run again after a crash, so it may have done all, "
                    "part or none of its work"
                )
                c.execute(
                    "UPDATE defend_fired SET state = 'done', status = ?, finished_at = ? "
                    "WHERE event_id = ? AND action_index = ?",
                    (INTERRUPTED, now, event_id, index),
                )
                self._audit(
                    event_id,
                    verdict,
                    index,
                    action,
                    INTERRUPTED,
                    detail,
                    {"attempt": attempts, "rerun": False},
                    duration_s=now - float(old["claimed_at"]),
                )
                return Interrupted(detail, attempts)
            self._audit(
                event_id,
                verdict,
                index,
                action,
                INTERRUPTED,
                f"{died}; running it again",
                {"attempt": attempts, "rerun": True},
                duration_s=now - float(old["claimed_at"]),
            )
            c.execute(
                "UPDATE defend_fired SET pid = ?, pid_start = ?, attempts = attempts + 1, "
                "claimed_at = ? WHERE event_id = ? AND action_index = ?",
                (pid, me, now, event_id, index),
            )
            self._audit(
                event_id,
                verdict,
                index,
                action,
                STARTED,
                f"attempt {attempts + 1}",
                {"attempt": attempts + 1},
            )
            return Claim(event_id, index, attempts + 1)

    def complete(self, claim: Claim, result: ActionResult) -> None:
        """Mark the claim done and audit the result in one transaction."""
        with self._tx() as c:
            c.execute(
                "UPDATE defend_fired SET state = 'done', status = ?, finished_at = ? "
                "WHERE event_id = ? AND action_index = ?",
                (result.status, time.time(), claim.event_id, claim.index),
            )
            self._audit_result(claim.event_id, result)

    def audit_result(self, event_id: str, r: ActionResult) -> None:
        with self._tx():
            self._audit_result(event_id, r)

    def _audit_result(self, event_id: str, r: ActionResult) -> None:
        self._audit(
            event_id,
            r.verdict,
            r.index,
            r.action,
            r.status,
            r.detail,
            r.data,
            warnings=r.warnings,
            duration_s=r.duration_s,
        )

    def _audit(
        self,
        event_id: str,
        verdict: str,
        index: int,
        action: str,
        status: str,
        detail: str,
        data: Mapping[str, Any],
        *,
        warnings: list[str] | None = None,
        duration_s: float = 0.0,
    ) -> None:
        self.conn.execute(
            "INSERT INTO defend_audit (ts, event_id, verdict, action_index, action, status, detail, "
            "warnings, data, duration_s, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                event_id,
                verdict,
                index,
                action,
                status,
                detail,
                json.dumps(warnings or []),
                json.dumps(dict(data), default=str),
                duration_s,
                os.getpid(),
            ),
        )

    # -- reading ------------------------------------------------------------------------------
    def trail(self, event_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first, optionally for one event (empty when nothing ever
        fired: a store without the defence's tables)."""
        with guarded(self.path):
            if not has_table(self.conn, "defend_audit"):
                return []
            sql = "SELECT * FROM defend_audit"
            args: tuple[Any, ...] = ()
            if event_id is not None:
                sql += " WHERE event_id = ?"
                args = (event_id,)
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["warnings"] = json.loads(d["warnings"])
            d["data"] = json.loads(d["data"])
            out.append(d)
        return out

    def fired(self, event_id: str) -> dict[int, str]:
        """action index -> final status, for the actions of ``event_id`` that completed."""
        with guarded(self.path):
            rows = self.conn.execute(
                "SELECT action_index, status FROM defend_fired "
                "WHERE event_id = ? AND state = 'done'",
                (event_id,),
            ).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}
