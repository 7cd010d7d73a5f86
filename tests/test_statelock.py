"""The state dir's lock: exclusive, bounded waits, the holder named, dropped with its holder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from geoprobe import statelock


def test_a_held_lock_refuses_at_once_and_names_the_holder(tmp_path: Path) -> None:
    with statelock.hold(tmp_path / "state", what="geoprobe watch"):
        t0 = time.monotonic()
        with pytest.raises(statelock.StateLocked) as err:
            statelock.hold(tmp_path / "state")
        assert time.monotonic() - t0 < 1.0
    msg = str(err.value)
    assert str(tmp_path / "state") in msg and f"pid {os.getpid()}, geoprobe watch" in msg
    statelock.hold(tmp_path / "state").release()  # free again once released
    mode = stat.S_IMODE((tmp_path / "state" / statelock.LOCK_NAME).stat().st_mode)
    assert mode == 0o600


def test_a_waiter_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    first = statelock.hold(tmp_path)
    threading.Timer(0.3, first.release).start()
    t0 = time.monotonic()
    second = statelock.hold(tmp_path, timeout=10)
    waited = time.monotonic() - t0
    second.release()
    assert 0.2 < waited < 5


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    with statelock.hold(tmp_path):
        t0 = time.monotonic()
        with pytest.raises(statelock.StateLocked, match="after waiting 0.3 s"):
            statelock.hold(tmp_path, timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 3


def test_the_kernel_drops_a_killed_holders_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from geoprobe import statelock; "
        "statelock.hold(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(statelock.StateLocked, match=f"pid {proc.pid}"):
            statelock.hold(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    statelock.hold(tmp_path).release()


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    state = tmp_path / "state"
    state.mkdir()
    (state / statelock.LOCK_NAME).symlink_to(target)
    with pytest.raises(statelock.StateLockError, match="cannot open the lock file"):
        statelock.hold(state)
    assert target.read_text() == "keep me"
