"""The watch's tables in the state store: fixes, fingerprints, baselines, events and transitions.

A fix and the fingerprint it was solved from go in one transaction, so after ``kill -9`` the store
holds both or neither. Fixes are kept as their JSON record: readers (``check`` in cron mode, reports)
need the verdict and the RTTs, not the region geometry.
"""

from __future__ import annotations

import json
import sqlite3
import time as _time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from geoprobe.geo.fix import Fix
from geoprobe.store import connect

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
        with self._tx() as c:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
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
    ) -> int:
        """The fix and its fingerprint, atomically."""
        t = _time.time() if time is None else time
        with self._tx() as c:
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
        return int(self.conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0])

    def save_baseline(self, name: str, data: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO watch_baselines (name, time, data_json) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET time = excluded.time, data_json = excluded.data_json",
                (name, _time.time(), json.dumps(dict(data))),
            )

    def load_baseline(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT data_json FROM watch_baselines WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else dict(json.loads(row["data_json"]))

    def record_event(self, event: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO watch_events (id, time, type, event_json) VALUES (?,?,?,?)",
                (str(event["id"]), _time.time(), str(event["type"]), json.dumps(dict(event))),
            )

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
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
        rows = self.conn.execute(
            "SELECT from_state, to_state, reasons_json FROM watch_transitions ORDER BY id"
        )
        return [(r["from_state"], r["to_state"], list(json.loads(r["reasons_json"]))) for r in rows]
