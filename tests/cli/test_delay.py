"""`geoprobe delay` as a real process: JSON progress, caps, SIGTERM and the clear flag."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

CMD = [sys.executable, "-m", "geoprobe", "delay"]


def test_json_progress_and_summary_within_cap() -> None:
    res = subprocess.run(
        [*CMD, "--memory", "112M", "--cpu", "0.5", "--duration", "1.5", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    progress, summary = docs[:-1], docs[-1]["summary"]
    assert progress and all(p["pages_per_s"] > 0 for p in progress)
    assert summary["reason"] == "duration"
    assert summary["peak_rss_bytes"] <= 112 << 20
    assert summary["memory_cap"] == 112 << 20
    assert max(p["hwm_bytes"] for p in progress) <= 112 << 20


def test_sigterm_stops_it_with_a_summary() -> None:
    proc = subprocess.Popen(
        [*CMD, "--memory", "96M", "--duration", "300", "--json"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # first progress line: it is running
    assert json.loads(first)["pages"] > 0
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["summary"]["reason"] == "signal SIGTERM"


def test_until_clear_flag(tmp_path: Path) -> None:
    flag = tmp_path / "clear"
    proc = subprocess.Popen(
        [*CMD, "--memory", "96M", "--duration", "300", "--until-clear", str(flag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    flag.touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.startswith("stopped (cleared)") and "MiB cap" in out
    assert "buffer" in err


def test_memory_cap_too_small_is_one_line_error() -> None:
    res = subprocess.run(
        [*CMD, "--memory", "8M", "--duration", "1"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 3
    assert len(res.stderr.splitlines()) == 1 and "leaves no room" in res.stderr


def test_bad_size_is_usage_error() -> None:
    res = subprocess.run([*CMD, "--memory", "lots"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "--memory" in res.stderr


def test_content_option_is_passed_and_an_unknown_one_refused() -> None:
    res = subprocess.run(
        [*CMD, "--memory", "96M", "--duration", "0.5", "--content", "byte"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "byte pages" in res.stderr
    bad = subprocess.run([*CMD, "--content", "zeros"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "zeros" in bad.stderr and "Traceback" not in bad.stderr
