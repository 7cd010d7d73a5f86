"""The defence's tables in the state store: which actions fired, and the full audit trail.

``defend_fired`` is keyed by (event id, action index). An action is *claimed* in one
``BEGIN IMMEDIATE`` transaction before it runs, so two processes handed the same event cannot
both fire it, and a restarted daemon replaying the event finds it claimed. A claim whose process
died before finishing (``kill -9`` mid-action) is *interrupted*: the next delivery of the event
runs that action again, because a half-done wipe must be finished; completed actions never rerun.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoprobe.defend.base import ActionResult
from geoprobe.store import connect

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


class AuditStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: str | Path) -> AuditStore:
        conn = connect(path)
        conn.executescript(SCHEMA)
        return cls(conn)

    @classmethod
    def open_readonly(cls, path: str | Path) -> AuditStore | None:
        """For --dry-run: read what fired without creating or changing anything."""
        p = Path(path)
        if not p.exists():
            return None
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("SELECT 1 FROM defend_fired LIMIT 1")
        except sqlite3.Error:
            conn.close()
            return None
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def record_event(self, event: Mapping[str, Any], verdict: str | None) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO defend_events (event_id, type, verdict, received_at, event) "
            "VALUES (?, ?, ?, ?, ?)",
            (str(event.get("id")), str(event.get("type")), verdict, time.time(), json.dumps(event)),
        )

    def status_of(self, event_id: str, index: int) -> str | None:
        """'done:<status>', 'running' (live owner), 'interrupted', or None (never claimed)."""
        row = self.conn.execute(
            "SELECT state, status, pid, pid_start FROM defend_fired "
            "WHERE event_id = ? AND action_index = ?",
            (event_id, index),
        ).fetchone()
        if row is None:
            return None
        if row["state"] == "done":
            return f"done:{row['status']}"
        return "running" if _alive(row["pid"], row["pid_start"]) else "interrupted"

    def claim(self, event_id: str, index: int, verdict: str, action: str) -> Claim | str:
        """Claim the action for this process, or return why not ('done:ok', 'running')."""
        pid = os.getpid()
        me = _start_time(pid)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            state = self.status_of(event_id, index)
            if state is None:
                self.conn.execute(
                    "INSERT INTO defend_fired (event_id, action_index, verdict, action, state, pid, "
                    "pid_start, claimed_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                    (event_id, index, verdict, action, pid, me, time.time()),
                )
                attempts = 1
            elif state == "interrupted":
                self.conn.execute(
                    "UPDATE defend_fired SET pid = ?, pid_start = ?, attempts = attempts + 1, "
                    "claimed_at = ? WHERE event_id = ? AND action_index = ?",
                    (pid, me, time.time(), event_id, index),
                )
                attempts = int(
                    self.conn.execute(
                        "SELECT attempts FROM defend_fired WHERE event_id = ? AND action_index = ?",
                        (event_id, index),
                    ).fetchone()[0]
                )
            else:
                self.conn.execute("COMMIT")
                return state
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return Claim(event_id, index, attempts)

    def complete(self, claim: Claim, result: ActionResult) -> None:
        """Mark the claim done and audit the result in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "UPDATE defend_fired SET state = 'done', status = ?, finished_at = ? "
                "WHERE event_id = ? AND action_index = ?",
                (result.status, time.time(), claim.event_id, claim.index),
            )
            self.audit_result(claim.event_id, result)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def audit_result(self, event_id: str, r: ActionResult) -> None:
        self.conn.execute(
            "INSERT INTO defend_audit (ts, event_id, verdict, action_index, action, status, detail, "
            "warnings, data, duration_s, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                event_id,
                r.verdict,
                r.index,
                r.action,
                r.status,
                r.detail,
                json.dumps(r.warnings),
                json.dumps(r.data, default=str),
                r.duration_s,
                os.getpid(),
            ),
        )

    def trail(self, event_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first, optionally for one event."""
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
        rows = self.conn.execute(
            "SELECT action_index, status FROM defend_fired WHERE event_id = ? AND state = 'done'",
            (event_id,),
        ).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}
