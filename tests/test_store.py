"""The shared SQLite store: settings every subsystem relies on."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from geoprobe.store import connect


def _open(path: str, go: Any, out: Any) -> None:
    go.wait()
    try:
        conn = connect(path)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        out.put(str(mode))
    except Exception as exc:  # noqa: BLE001  (the parent reports it)
        out.put(repr(exc))


def test_processes_opening_a_new_store_at_once_all_get_wal(tmp_path: Path) -> None:
    """The watch and a policy run can create the file together: SQLite tells the loser of the
    journal-mode switch "database is locked" without waiting (it did so in 11 of 200 pairs)."""
    ctx = mp.get_context("fork")
    results: list[str] = []
    for i in range(40):
        go, out = ctx.Event(), ctx.Queue()
        path = str(tmp_path / f"s{i}" / "geoprobe.sqlite")
        procs = [ctx.Process(target=_open, args=(path, go, out)) for _ in range(3)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        results += [out.get(timeout=5) for _ in procs]
    assert results == ["wal"] * len(results)
