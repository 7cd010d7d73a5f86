"""The state store: one SQLite file (WAL) under the state dir.

Every write is one transaction, so a fix is recorded in full or not at all, and the file
survives ``kill -9``. Subsystems own their tables; they share the connection settings here, the
outbox (events whose response has not finished) and the translation of every way the store can
fail into one line that names the file and the problem.

A store that cannot be opened or written is reported, never deleted, recreated or moved aside:
what it holds (the audit of what was destroyed) outlives any one run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geoprobe.errors import GeoprobeError
from geoprobe.paths import make_private, open_private, private_dir, state_dir

DB_NAME = "geoprobe.sqlite"
BUSY_TIMEOUT_S = 30.0

OUTBOX_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    " event_id TEXT PRIMARY KEY,"
    " queued_at REAL NOT NULL,"
    " delivered_at REAL,"  # NULL until every action of the event has finished
    " event_json TEXT NOT NULL)"
)


class StoreError(GeoprobeError):
    """The state store cannot be opened, read or written: one line naming the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"state store {self.path}: {problem}")


def _read_only_reason(path: Path) -> str | None:
    """Why ``path`` cannot be written, when that is the cause SQLite's message hides."""
    where = path if path.exists() else path.parent
    try:
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            return "read-only (its filesystem is mounted read-only)"
    except OSError:
        return None
    if not os.access(where, os.W_OK) or (path.exists() and not os.access(path.parent, os.W_OK)):
        return "read-only (no write permission)"
    return None


def describe(exc: BaseException, path: Path | None = None) -> str:
    """What went wrong, in words an operator can act on."""
    text = str(exc).strip() or type(exc).__name__
    if path is not None and ("unable to open" in text or "readonly" in text):
        reason = _read_only_reason(path)
        if reason is not None:
            return reason
    low = text.lower()
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        low = text.lower()
    if "malformed" in low or "not a database" in low or "file is encrypted" in low:
        return f"corrupt ({text}); left as it is: move it aside or restore it from a backup"
    if "readonly" in low or "read-only" in low:
        return f"read-only ({text})"
    if "disk is full" in low or "no space" in low or "file too large" in low:
        return f"disk full ({text})"
    if "unable to open" in low or "permission denied" in low:
        return f"cannot open ({text})"
    if "locked" in low or "busy" in low:
        return f"busy ({text})"
    return text


STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)


@contextmanager
def guarded(path: str | Path) -> Iterator[None]:
    """Turn any SQLite or OS error inside into one ``StoreError`` naming ``path``."""
    try:
        yield
    except StoreError:
        raise
    except STORE_ERRORS as exc:
        raise StoreError(path, describe(exc, Path(path))) from None


def default_path(directory: str | Path | None = None) -> Path:
    return Path(directory) / DB_NAME if directory is not None else state_dir() / DB_NAME


def _private_files(p: Path) -> None:
    """The database 0600 before SQLite opens it (its -wal and -shm copy the database's mode)."""
    if not p.exists():
        os.close(open_private(p, os.O_RDWR | os.O_CREAT))
    for name in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
        make_private(name)


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating the private directory) with WAL and full sync: durable across crashes.

    Raises ``StoreError`` for a directory or file that cannot be created, a read-only file, or a
    file that is not a SQLite database.
    """
    p = Path(path)
    with guarded(p):
        private_dir(p.parent)
        _private_files(p)
        conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_S, isolation_level=None)  # explicit BEGIN
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA schema_version").fetchone()  # "file is not a database" shows here
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
    return conn


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing store for reading only: creates nothing, changes nothing.

    Raises ``StoreError`` when the file is missing, unreadable or not a database.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(p, "does not exist")
    with guarded(p):
        uri = f"{p.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = p.with_name(p.name + "-wal")
            if "unable to open" not in str(exc) or (wal.exists() and wal.stat().st_size > 0):
                raise
            # A WAL database in a directory we cannot write (no -shm can be made): with no WAL
            # content to miss, read the main file as it is.
            conn = sqlite3.connect(f"{p.resolve().as_uri()}?immutable=1", uri=True)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    return conn


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


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


# -- the outbox: events handed to the policy whose actions have not all finished -----------------


def outbox_put(conn: sqlite3.Connection, event: Mapping[str, Any]) -> None:
    """Queue ``event`` for the policy; call inside the caller's transaction so the event and what
    caused it (a fix, a transition) are recorded together."""
    conn.execute(OUTBOX_SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO outbox (event_id, queued_at, event_json) VALUES (?, ?, ?)",
        (str(event["id"]), time.time(), json.dumps(dict(event))),
    )


def outbox_done(conn: sqlite3.Connection, event_id: str) -> None:
    """Every action of the event has finished (or was settled as interrupted)."""
    conn.execute(OUTBOX_SCHEMA)
    conn.execute(
        "UPDATE outbox SET delivered_at = ? WHERE event_id = ? AND delivered_at IS NULL",
        (time.time(), event_id),
    )


def outbox_pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Queued events whose actions did not all finish, oldest first."""
    if not has_table(conn, "outbox"):
        return []
    rows = conn.execute(
        "SELECT event_json FROM outbox WHERE delivered_at IS NULL ORDER BY queued_at, rowid"
    ).fetchall()
    return [dict(json.loads(r[0])) for r in rows]
