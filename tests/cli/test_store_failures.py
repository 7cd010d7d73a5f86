"""A corrupt, read-only or full state store: one line naming the file, no traceback, nothing lost.

`check` says `GEOPROBE UNKNOWN - state store PATH: problem` and exits 3; `policy audit` refuses
to show an audit it could not read; the store's bytes are never changed behind the operator's
back. The watch's own behaviour with a failing store, under a real move, is in
tests/watch/test_store_failure.py.

Read-only stores are a read-only bind mount, which needs root (root ignores file modes).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from .synthetic import FRANKFURT, MADRID, make_catalogue, replay

GEOPROBE = [sys.executable, "-m", "geoprobe"]
UNKNOWN = "GEOPROBE UNKNOWN - state store "


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_catalogue(tmp_path_factory.mktemp("cat") / "catalogue.json")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GEOPROBE, *args], capture_output=True, text=True, timeout=120, check=False
    )


def check(catalogue: Path, state: Path, m: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "check",
        "--landmarks",
        str(catalogue),
        "--allow",
        "DE",
        "--state",
        str(state),
        "--replay",
        str(m),
        *extra,
    )


def digest(d: Path) -> str:
    """The database file's bytes (SQLite may add an empty -wal and a -shm beside it)."""
    return hashlib.sha256((d / "geoprobe.sqlite").read_bytes()).hexdigest()


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.splitlines()
    return line


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("a read-only store is made with a read-only bind mount, which needs root")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def real_store(catalogue: Path, tmp_path: Path) -> Path:
    """A state dir with two recorded fixes and a reported move."""
    state = tmp_path / "state"
    assert check(catalogue, state, replay(tmp_path, FRANKFURT, 1)).returncode == 0
    assert check(catalogue, state, replay(tmp_path, MADRID, 2)).returncode == 2
    return state


def test_a_file_that_is_no_database_is_unknown_and_left_alone(
    catalogue: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "geoprobe.sqlite").write_bytes(os.urandom(8192))
    before = digest(state)
    res = check(catalogue, state, replay(tmp_path, FRANKFURT, 1))
    assert res.returncode == 3
    assert res.stdout.startswith(f"{UNKNOWN}{state / 'geoprobe.sqlite'}: corrupt"), res.stdout
    assert res.stdout.count("\n") == 1
    assert "corrupt" in one_line(res)
    audit = run("policy", "audit", "--state", str(state))
    assert audit.returncode == 3 and audit.stdout == ""
    assert "corrupt" in one_line(audit) and str(state / "geoprobe.sqlite") in audit.stderr
    assert digest(state) == before


def test_damaged_pages_are_unknown_and_left_alone(catalogue: Path, tmp_path: Path) -> None:
    state = real_store(catalogue, tmp_path)
    db = state / "geoprobe.sqlite"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    for off in range(page, len(data), page):  # every page but the header's
        data[off : off + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))
    before = digest(state)
    res = check(catalogue, state, replay(tmp_path, MADRID, 3))
    assert res.returncode == 3 and res.stdout.startswith(UNKNOWN), res.stdout
    assert "corrupt" in res.stdout and "malformed" in res.stdout
    one_line(res)
    audit = run("policy", "audit", "--state", str(state))
    assert audit.returncode == 3 and audit.stdout == "" and "corrupt" in one_line(audit)
    assert digest(state) == before


def test_a_missing_store_is_no_empty_audit(tmp_path: Path) -> None:
    audit = run("policy", "audit", "--state", str(tmp_path / "nowhere"))
    assert audit.returncode == 3 and audit.stdout == ""
    assert "does not exist" in one_line(audit)
    assert not (tmp_path / "nowhere").exists()


def test_a_store_without_defence_rows_is_an_empty_audit(catalogue: Path, tmp_path: Path) -> None:
    state = real_store(catalogue, tmp_path)
    audit = run("policy", "audit", "--state", str(state), "--json")
    assert audit.returncode == 0 and audit.stdout.strip() == "[]", audit.stderr


def test_a_read_only_store_is_unknown_for_check_and_readable_for_audit(
    catalogue: Path, tmp_path: Path
) -> None:
    got = tmp_path / "hook.log"
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncat >> {got}\necho >> {got}\n")
    hook.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[jurisdiction]\nallow = ["DE"]\n[[on.confirmed_crossing]]\naction = "hook"\n'
        f'command = ["{hook}"]\n'
    )
    state = tmp_path / "state"
    base = ["--policy", str(policy)]
    assert check(catalogue, state, replay(tmp_path, FRANKFURT, 1), *base).returncode == 0
    assert check(catalogue, state, replay(tmp_path, MADRID, 2), *base).returncode == 2
    before = digest(state)
    with read_only(state):
        res = check(catalogue, state, replay(tmp_path, MADRID, 3), *base)
        assert res.returncode == 3 and res.stdout.startswith(UNKNOWN), res.stdout
        assert "read-only" in res.stdout
        one_line(res)
        audit = run("policy", "audit", "--state", str(state), "--json")
    assert audit.returncode == 0, audit.stderr
    import json

    assert [r["status"] for r in json.loads(audit.stdout)] == ["started", "ok"]
    assert digest(state) == before


def test_state_files_are_private(catalogue: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    old = os.umask(0o022)
    try:
        assert check(catalogue, state, replay(tmp_path, FRANKFURT, 1)).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for p in state.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    db = state / "geoprobe.sqlite"
    os.chmod(db, 0o644)
    assert check(catalogue, state, replay(tmp_path, FRANKFURT, 2)).returncode == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM watch_fixes").fetchone()[0] == 2


def test_a_shared_sticky_dir_is_not_made_private(tmp_path: Path) -> None:
    from geoprobe.paths import private_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    private_dir(shared / "mine" / "state")
    assert stat.S_IMODE((shared / "mine" / "state").stat().st_mode) == 0o700
