"""The state store: one SQLite file (WAL) under the state dir.

Every write is one transaction, so a fix is recorded in full or not at all, and the file
survives ``kill -9``. Subsystems own their tables; they share the connection settings here.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from geoprobe.paths import state_dir

DB_NAME = "geoprobe.sqlite"
BUSY_TIMEOUT_S = 30.0


def default_path(directory: str | Path | None = None) -> Path:
    return Path(directory) / DB_NAME if directory is not None else state_dir() / DB_NAME


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating the directory) with WAL and full sync: durable across crashes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        p, timeout=BUSY_TIMEOUT_S, isolation_level=None
    )  # autocommit; explicit BEGIN
    conn.row_factory = sqlite3.Row
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out another process doing the same.

    Two processes opening a new file at once (the watch and a ``geoprobe policy run`` racing on one
    event) both try to change the journal mode; SQLite answers the loser "database is locked" at
    once instead of calling the busy handler, so the wait is ours to do.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            contended = "locked" in str(exc) or "busy" in str(exc)
            if not contended or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
