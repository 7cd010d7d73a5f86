"""The state store: one SQLite file (WAL) under the state dir.

Every write is one transaction, so a fix is recorded in full or not at all, and the file
survives ``kill -9``. Subsystems own their tables; they share the connection settings here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from geoprobe.paths import state_dir

DB_NAME = "geoprobe.sqlite"


def default_path(directory: str | Path | None = None) -> Path:
    return Path(directory) / DB_NAME if directory is not None else state_dir() / DB_NAME


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating the directory) with WAL and full sync: durable across crashes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(p, timeout=30.0, isolation_level=None)  # autocommit; use explicit BEGIN
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
