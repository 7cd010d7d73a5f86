"""``geoprobe landmark keygen|serve`` and the ``geoprobe landmarks`` hook."""

from __future__ import annotations

import base64
import io
import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import click

from geoprobe.cli import cli, main
from geoprobe.cli.env import Environment
from geoprobe.cli.sync import add_landmarks_command
from geoprobe.landmarks import parse_landmark
from geoprobe.probe import keys, measure


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(list(argv), env=Environment(stdout=out, stderr=io.StringIO()))
    return rc, out.getvalue()


def test_keygen(tmp_path: Path) -> None:
    rc, out = _run("landmark", "keygen", "--out", str(tmp_path / "k"))
    assert rc == 0
    priv = tmp_path / "k" / "landmark.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    raw = keys.public_raw(keys.load_private(priv))
    assert base64.b64encode(raw).decode() in out and keys.key_id(raw) in out
    rc, _ = _run("landmark", "keygen", "--out", str(tmp_path / "k"))
    assert rc == 3  # never overwrites a landmark's key


def test_serve_answers_until_sigterm(tmp_path: Path) -> None:
    _run("landmark", "keygen", "--out", str(tmp_path))
    proc = _serve(tmp_path)
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()
        assert header.startswith("serving landmark 'my-dc' on udp 127.0.0.240:"), (
            header + proc.stderr.read()
        )
        assert "(20/s per source, burst 100)" in header
        lines = []
        while not (line := proc.stdout.readline()).startswith("}"):
            lines.append(line)
        entry = json.loads("".join(lines) + "}")
        lm = parse_landmark(entry)  # the printed entry is a valid catalogue entry as it stands
        [m] = measure([lm], "udp", samples=2)
        assert m.ok and len(m.evidence) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    assert rc == 0
    assert "stopped after 2 replies" in proc.stdout.read()


def test_serve_limits_each_source(tmp_path: Path) -> None:
    _run("landmark", "keygen", "--out", str(tmp_path))
    proc = _serve(tmp_path, "--rate-limit", "0.5", "--burst", "3")
    try:
        assert proc.stdout is not None
        assert "(0.5/s per source, burst 3)" in proc.stdout.readline()
        lines = []
        while not (line := proc.stdout.readline()).startswith("}"):
            lines.append(line)
        lm = parse_landmark(json.loads("".join(lines) + "}"))
        [m] = measure([lm], "udp", samples=8, timeout=0.5)
        assert len(m.rtts_ms) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert "stopped after 3 replies (5 requests over the rate limit dropped)" in proc.stdout.read()


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "landmark",
            "serve",
            "--key",
            str(tmp_path / "landmark.key"),
            "--id",
            "my-dc",
            "--lat",
            "52.52",
            "--lon",
            "13.405",
            "--country",
            "DE",
            "--bind",
            "127.0.0.240",
            "--port",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_refuses_a_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("nope")
    rc, _ = _run("landmark", "serve", "--key", str(bad), "--id", "x", "--lat", "1", "--lon", "2")
    assert rc == 3
    # An endless file (a device, a FIFO fed forever) is refused after a bounded read.
    rc, _ = _run("landmark", "serve", "--key", "/dev/zero", "--id", "x", "--lat", "1", "--lon", "2")
    assert rc == 3


def test_landmarks_group_hook() -> None:
    @click.command("hello")
    def hello() -> None:
        click.echo("hi from a hooked command")

    add_landmarks_command(hello)
    group = cli.get_command(click.Context(cli), "landmarks")
    assert isinstance(group, click.Group) and "hello" in group.commands
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["landmarks", "hello"], obj=Environment())
    assert result.exit_code == 0 and "hi from a hooked command" in result.output
    group.commands.pop("hello")
