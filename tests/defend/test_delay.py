"""The memory dirtier: caps (memory, CPU, rate, duration), stop conditions, background action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.defend import clear, respond
from geoprobe.defend.delay import PAGE, Dirtier, proc_status, xbzrle_size
from geoprobe.errors import InputError
from geoprobe.events import SUSPECTED, make_event
from geoprobe.policy import load_policy

IN_CHILD = """
import json, sys
from geoprobe.defend.delay import Dirtier
cap, kw = int(sys.argv[1]), json.loads(sys.argv[2])
content = kw.pop("content", "random")
d = Dirtier(cap, content=content)
sums = lambda: d.buffer.view("u8").reshape(d.pages, -1).sum(axis=1, dtype="u8")
before = sums()  # one number per page, so the check below sees what run() changed
s = d.run(**kw)
written = int((sums() != before).sum())
print(json.dumps({**s.to_json(), "written": written, "n": len(d.view)}))
"""


def run_in_child(cap: int, **kw: object) -> dict[str, Any]:
    """A fresh process, so VmHWM is this run's peak and not pytest's."""
    out = subprocess.run(
        [sys.executable, "-c", IN_CHILD, str(cap), json.dumps(kw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


@pytest.mark.parametrize("content", ["random", "byte"])
def test_peak_rss_stays_under_cap_and_every_page_is_written(content: str) -> None:
    cap = 96 << 20
    s = run_in_child(cap, cpu=1.0, duration=1.5, content=content)
    assert s["peak_rss_bytes"] <= cap
    assert s["buffer_bytes"] > 16 << 20
    assert s["passes"] >= 1 and s["written"] == s["n"]
    assert s["pages"] >= s["n"]


def _pages(d: Dirtier, first: int, n: int) -> list[bytes]:
    return [d.buffer[i * PAGE : (i + 1) * PAGE].tobytes() for i in range(first, first + n)]


@pytest.fixture(scope="module")
def small() -> Dirtier:
    """A dirtier in this process: a cap far above pytest's own RSS leaves a small buffer."""
    return Dirtier(proc_status()["VmHWM"] + (24 << 20))


def test_pages_do_not_compress_and_random_rewrites_defeat_xbzrle(small: Dirtier) -> None:
    before = _pages(small, 0, 64)
    small.write(0, 64)
    after = _pages(small, 0, 64)
    stream = b"".join(after)
    # multifd compresses a stream of pages: distinct random pages leave it nothing to find
    assert len(zlib.compress(stream, 1)) >= 0.99 * len(stream)
    assert len(set(after)) == 64 and not any(p == bytes(PAGE) for p in after)
    # XBZRLE against the copy sent before: the whole page changed, so it is sent whole
    assert all(xbzrle_size(b, a) is None for b, a in zip(before, after, strict=True))


def test_one_byte_changes_defeat_compression_but_not_xbzrle(small: Dirtier) -> None:
    small.content = "byte"
    try:
        before = _pages(small, 64, 32)
        small.write(64, 96)
        after = _pages(small, 64, 32)
    finally:
        small.content = "random"
    stream = b"".join(after)
    assert len(zlib.compress(stream, 1)) >= 0.99 * len(stream)
    sizes = [xbzrle_size(b, a) for b, a in zip(before, after, strict=True)]
    assert sizes == [3] * 32  # zero-length unchanged run, one changed byte, the byte


def test_unknown_content_is_refused() -> None:
    with pytest.raises(InputError, match="random, byte"):
        Dirtier(1 << 40, content="zeros")


def _xbzrle_reference(old: bytes, new: bytes) -> int | None:
    """Byte-by-byte transcription of QEMU's encoder, to check the vectorised one."""

    def uleb(n: int) -> int:
        k = 1
        while n >= 0x80:
            n >>= 7
            k += 1
        return k

    i, size, n = 0, 0, len(old)
    while i < n:
        z = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun = i - z
        nz = i
        while i < n and old[i] != new[i]:
            i += 1
        size += uleb(zrun) + uleb(i - nz) + (i - nz)
        if size > n:
            return None
    return size


@given(st.binary(min_size=1, max_size=300), st.data())
@settings(max_examples=300, deadline=None)
def test_xbzrle_size_matches_the_reference_encoder(old: bytes, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.integers(0, len(old) - 1), max_size=len(old)))
    new = bytearray(old)
    for i in flips:
        new[i] ^= data.draw(st.integers(1, 255))
    assert xbzrle_size(old, bytes(new)) == _xbzrle_reference(old, bytes(new))


def test_rate_cap_is_an_upper_bound() -> None:
    s = run_in_child(64 << 20, cpu=1.0, duration=1.0, rate=5000)
    # token bucket: never more than rate x elapsed, plus the one chunk written before sleeping
    assert s["pages"] <= 5000 * s["elapsed_s"] + 100
    assert s["pages"] > 0


def test_cpu_cap_bounds_the_writers_cpu_time() -> None:
    s = run_in_child(64 << 20, cpu=0.2, duration=1.5)
    assert s["cpu_s"] <= 0.2 * s["elapsed_s"] + 0.05


def test_cap_below_current_rss_is_refused() -> None:
    rss = proc_status()["VmRSS"]
    with pytest.raises(InputError, match="leaves no room"):
        Dirtier(rss)


STOP_IN_CHILD = """
import json, sys, threading
from pathlib import Path
from geoprobe.defend.delay import PAGE, Dirtier, flag_stop
flag = Path(sys.argv[1])
d = Dirtier(64 << 20)
threading.Timer(0.3, flag.touch).start()
s = d.run(cpu=0.5, duration=60, should_stop=flag_stop(flag))
print(json.dumps({**s.to_json(), "aligned": s.buffer_bytes % PAGE == 0}))
"""


def test_stop_flag_file_ends_the_run(tmp_path: Path) -> None:
    # In a child: pytest's own peak RSS may already exceed any small cap, which Dirtier refuses.
    flag = tmp_path / "clear"
    out = subprocess.run(
        [sys.executable, "-c", STOP_IN_CHILD, str(flag)], capture_output=True, text=True, check=True
    ).stdout
    s = json.loads(out)
    assert s["reason"] == "cleared" and s["elapsed_s"] < 60
    assert s["aligned"]


def _wait_pid_gone(pid: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_delay_as_policy_action_runs_in_background_until_cleared(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(
        '[jurisdiction]\nallow = ["DE"]\n'
        '[[on.suspected]]\naction = "delay"\nmemory = "80M"\ncpu = 0.2\nduration = 120\n'
    )
    pol = load_policy(p)
    store = tmp_path / "state" / "geoprobe.sqlite"
    ev = make_event(SUSPECTED, {"signals": ["first_write"]})
    (r,) = respond(ev, pol, store_path=store)
    assert r.status == "ok", r.detail
    pid = int(r.data["pid"])
    try:
        time.sleep(0.5)
        status = proc_status(f"/proc/{pid}/status")
        assert 0 < status["VmHWM"] <= 80 << 20
        assert respond(ev, pol, store_path=store)[0].status == "skipped"
    finally:
        stopped = clear(store)
    assert stopped == 1
    assert _wait_pid_gone(pid)
    log = Path(r.data["log"]).read_text().splitlines()
    summary = json.loads(log[-1])["summary"]
    assert summary["reason"] in ("stopped", "cleared")
    assert summary["peak_rss_bytes"] <= 80 << 20


def test_clear_flag_stops_a_delay_started_by_another_process(tmp_path: Path) -> None:
    """After a daemon restart the new process has no handle on the child: the flag file stops it."""
    store = tmp_path / "geoprobe.sqlite"
    code = "import sys, json; from geoprobe.defend.delay import child_main; sys.exit(child_main())"
    cfg = {
        "memory": 64 << 20,
        "cpu": 0.2,
        "duration": 120,
        "rate": None,
        "until_clear": str(tmp_path / "delay.clear"),
        "parent_pid": None,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["started"]
    clear(store)  # touches delay.clear beside the store; the child is not ours
    out, _ = proc.communicate(timeout=30)
    assert json.loads(out.splitlines()[-1])["summary"]["reason"] == "cleared"
