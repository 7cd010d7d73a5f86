"""The watch tables: a fix and its fingerprint are stored together or not at all, even under kill
-9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from watch_world import make_fix

from geoprobe import events
from geoprobe.watch.state import WatchStore

HERE = Path(__file__).resolve().parent


def test_fix_round_trip(tmp_path: Path) -> None:
    with WatchStore(tmp_path / "s.sqlite") as st:
        assert st.last_fix() is None
        st.record_fix(
            make_fix(50.1, 8.7, countries=[("DE", 0.98)]), {"a": 1.5, "b": 7.25}, source="check"
        )
        st.record_fix(
            make_fix(48.9, 2.3, countries=[("FR", 0.9)], certified="FR"), {"a": 9.0}, source="watch"
        )
        last = st.last_fix()
        assert last is not None and last.certified == "FR" and last.rtts == {"a": 9.0}
        chk = st.last_fix("check")
        assert chk is not None and chk.country == "DE" and chk.rtts == {"a": 1.5, "b": 7.25}
        assert chk.record["position"]["lat"] == pytest.approx(50.1)
        assert st.count_fixes() == 2


def test_baselines_events_and_transitions(tmp_path: Path) -> None:
    with WatchStore(tmp_path / "s.sqlite") as st:
        st.save_baseline("rtt", {"rounds": 1})
        st.save_baseline("rtt", {"rounds": 2})
        assert st.load_baseline("rtt") == {"rounds": 2}
        assert st.load_baseline("clock") is None
        ev = events.make_event(events.CONFIRMED, {"crossing": True})
        st.record_event(ev)
        st.record_event(ev)  # the same event id is stored once
        st.record_event(events.make_event(events.FIX, {}))
        assert [e["id"] for e in st.events(events.CONFIRMED)] == [ev["id"]]
        assert len(st.events()) == 2
        st.record_transition("normal", "suspect", ["20 landmarks changed"], 1.0)
        assert st.transitions() == [("normal", "suspect", ["20 landmarks changed"])]


def test_store_survives_kill_9_with_no_half_recorded_fix(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from watch_world import make_fix
        from geoprobe.watch.state import WatchStore
        st = WatchStore({str(db)!r})
        fix = make_fix(50.1, 8.7, countries=[("DE", 0.98)])
        rtts = {{f"lm{{i}}": float(i) for i in range(200)}}
        print("ready", flush=True)
        while True:
            st.record_fix(fix, rtts)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with WatchStore(db) as st:
                if st.count_fixes() >= 20:
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fixes = conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0]
    orphans = conn.execute(
        "SELECT COUNT(*) FROM watch_fixes f LEFT JOIN watch_fingerprints p "
        "ON p.fix_id = f.id WHERE p.fix_id IS NULL"
    ).fetchone()[0]
    conn.close()
    assert fixes >= 20
    assert orphans == 0
    with WatchStore(db) as st:
        last = st.last_fix()
        assert last is not None and len(last.rtts) == 200


def test_a_move_its_event_and_its_queue_entry_are_one_transaction(tmp_path: Path) -> None:
    from geoprobe.defend.audit import AuditStore

    db = tmp_path / "s.sqlite"
    ev = events.make_event(events.CONFIRMED, {"crossing": True})
    with WatchStore(db) as st:
        st.record_fix(make_fix(40.4, -3.7), {"a": 9.0}, source="check", event=ev, respond=True)
        assert [e["id"] for e in st.events()] == [ev["id"]]
    store = AuditStore.open(db)
    try:
        assert [e["id"] for e in store.pending()] == [ev["id"]]
        store.settle(ev["id"])
        assert store.pending() == []
    finally:
        store.close()


def test_a_corrupt_store_is_said_once_and_left_as_it_was(tmp_path: Path) -> None:
    from geoprobe.store import StoreError
    from geoprobe.watch.state import FailSafeWatchStore

    db = tmp_path / "s.sqlite"
    junk = os.urandom(4096)
    db.write_bytes(junk)
    with pytest.raises(StoreError, match="corrupt"):
        WatchStore(db)
    said: list[StoreError] = []
    st = FailSafeWatchStore(db, on_failure=said.append)
    st.record_fix(make_fix(50.1, 8.7), {"a": 1.0})
    st.record_event(events.make_event(events.FIX, {}))
    st.save_baseline("rtt", {"x": 1})
    assert st.last_fix() is None and st.load_baseline("rtt") is None and st.events() == []
    st.close()
    assert len(said) == 1 and said[0].path == db and "corrupt" in said[0].problem
    assert db.read_bytes() == junk


def test_an_event_file_on_a_full_disk_is_said_once_and_never_raises(tmp_path: Path) -> None:
    from geoprobe.watch.state import EventFile

    if not Path("/dev/full").exists():
        pytest.skip("/dev/full (a device that is always full) is not present")
    said: list[OSError] = []
    f = EventFile.open("/dev/full", on_failure=said.append)
    try:
        for _ in range(3):
            events.write_event(f, events.make_event(events.FIX, {}))  # type: ignore[arg-type]
    finally:
        f.close()
    assert len(said) == 1 and "space" in (said[0].strerror or "")
    ok = EventFile.open(tmp_path / "ev.jsonl", on_failure=said.append)
    events.write_event(ok, events.make_event(events.FIX, {"n": 1}))  # type: ignore[arg-type]
    ok.close()
    assert (tmp_path / "ev.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "ev.jsonl").stat().st_mode & 0o777 == 0o600
