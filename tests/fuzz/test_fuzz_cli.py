"""Hostile files through the command line: one line naming the file, the documented exit code,
never a traceback and never the catch-all ``internal error`` (that would mean a loader let an
exception through that it should have named)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.hostile import EXAMPLES, FUZZ, dumps, mutate_json, raw_text
from fuzz.samples import POLICY, event_doc, signed_world
from geoprobe.cli import main
from geoprobe.cli.env import Environment

WORLD = signed_world(samples=2)
CATALOGUE = WORLD.catalogue_doc()
MEASUREMENTS = WORLD.measurement_doc()
EVENT = event_doc()
# `check` solves whatever loads, so it gets fewer cases.
FEW = settings(FUZZ, max_examples=max(10, EXAMPLES // 4))


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def assert_clean(self) -> None:
        for text in (self.out, self.err):
            assert "Traceback" not in text and "internal error" not in text, text


def run(tmp: Path, *argv: str) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdout=out,
        stderr=err,
        state_dir=tmp / "state",
        cache_dir=tmp / "cache",
        runtime_dir=tmp / "run",
    )
    code = main(list(argv), env=env)
    return Outcome(code, out.getvalue(), err.getvalue())


def _files(tmp: Path, **hostile: bytes) -> dict[str, Path]:
    good = {
        "cat": json.dumps(CATALOGUE).encode(),
        "m": json.dumps(MEASUREMENTS).encode(),
        "policy": POLICY.encode(),
        "event": json.dumps(EVENT).encode(),
    }
    good.update(hostile)
    paths = {}
    for name, data in good.items():
        p = tmp / f"{name}.in"
        p.write_bytes(data)
        paths[name] = p
    return paths


def _error_line(o: Outcome, file: Path) -> None:
    """A GeoprobeError: one line on stderr naming the file, exit 3."""
    assert o.code == 3, (o.code, o.out, o.err)
    lines = o.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoprobe: error: ") and str(file) in lines[0], (
        o.err
    )


_JSON_MEAS = raw_text(dumps(MEASUREMENTS)) | mutate_json(MEASUREMENTS).map(
    lambda d: dumps(d).encode()
)


def _with_id(lid: str) -> bytes:
    doc = json.loads(json.dumps(MEASUREMENTS))
    doc["results"][0]["landmark_id"] = lid
    for rec in doc["results"][0]["evidence"]:
        rec["landmark_id"] = lid
    return dumps(doc).encode()


_JSON_MEAS = _JSON_MEAS | st.text(alphabet="ab\n\r\x1b\x00 :OK", min_size=1, max_size=20).map(
    _with_id
)
_JSON_CAT = raw_text(dumps(CATALOGUE)) | mutate_json(CATALOGUE).map(lambda d: dumps(d).encode())
_JSON_EVENT = raw_text(dumps(EVENT)) | mutate_json(EVENT).map(lambda d: dumps(d).encode())
_TOML = raw_text(POLICY) | st.sampled_from(
    [
        b'[[on.unknown]]\naction = ["wipe"]\n',
        b"[[on.unknown]]\naction = { a = 1 }\n",
        b'[[on.suspected]]\naction = "delay"\nmemory = "' + b"9" * 400 + b'G"\n',
        b"[confidence]\nmin_landmarks = " + b"9" * 400 + b"\n",
        b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    ]
)


@FUZZ
@given(_JSON_MEAS)
def test_verify_hostile_measurements(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = _files(Path(d), m=data)
        o = run(Path(d), "verify", str(f["m"]), "--landmarks", str(f["cat"]))
        o.assert_clean()
        assert o.code in (0, 3)
        if o.code == 3 and "no signed evidence" in o.err:
            assert len(o.err.splitlines()) == 1
        elif o.code == 3 and o.err:
            _error_line(o, f["m"])
        elif o.code == 3:
            assert all(ln.startswith("BAD ") for ln in o.out.splitlines()[:-1])
            assert "problem(s) in" in o.out.splitlines()[-1]
        if o.code != 0:
            assert not any(ln.startswith("OK") for ln in o.out.splitlines())


@FUZZ
@given(_JSON_CAT)
def test_verify_against_a_hostile_catalogue(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = _files(Path(d), cat=data)
        o = run(Path(d), "verify", str(f["m"]), "--landmarks", str(f["cat"]))
        o.assert_clean()
        assert o.code in (0, 3)
        if o.code == 3 and o.err:
            _error_line(o, f["cat"])


@FUZZ
@given(_TOML)
def test_policy_check_hostile_policies(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = _files(Path(d), policy=data)
        o = run(Path(d), "policy", "check", str(f["policy"]))
        o.assert_clean()
        if o.code != 0:
            _error_line(o, f["policy"])
        else:
            tomllib.loads(data.decode())  # accepted only what is valid TOML


@FUZZ
@given(_JSON_EVENT)
def test_policy_fire_hostile_events(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = _files(Path(d), event=data)
        o = run(
            Path(d), "policy", "fire", str(f["policy"]), "--event", str(f["event"]), "--dry-run"
        )
        o.assert_clean()
        assert o.code in (0, 3), (o.code, o.out, o.err)
        if o.code == 3:
            _error_line(o, f["event"])


@FEW
@given(st.sampled_from(["cat", "policy", "m"]), st.data())
def test_check_is_unknown_on_any_hostile_input(which: str, data: st.DataObject) -> None:
    """Nagios reads stdout: bad input of any kind is one UNKNOWN line and exit 3."""
    strategy = {"cat": _JSON_CAT, "policy": _TOML, "m": _JSON_MEAS}[which]
    with tempfile.TemporaryDirectory() as d:
        f = _files(Path(d), **{which: data.draw(strategy)})
        o = run(
            Path(d),
            "check",
            "--landmarks",
            str(f["cat"]),
            "--policy",
            str(f["policy"]),
            "--replay",
            str(f["m"]),
            "--dry-run",
        )
        o.assert_clean()
        [line] = o.out.splitlines()
        assert o.code in (0, 1, 2, 3)
        if o.code == 3:
            assert line.startswith("GEOPROBE UNKNOWN - ")


@pytest.mark.parametrize(
    "argv, content",
    [
        (["policy", "check", "{f}"], b"x = " + b"[" * 100_000 + b"]" * 100_000),
        (["verify", "{f}", "--landmarks", "{f}"], b"[" * 100_000 + b"]" * 100_000),
        (["check", "--landmarks", "{f}", "--allow", "DE"], b"\xff\xfe{}"),
        (
            ["check", "--landmarks", "{cat}", "--allow", "DE", "--replay", "{f}"],
            b'[{"landmark_id": "fra", "sent": 100000000, "result": []}]',
        ),
        (
            ["locate", "--landmarks", "{cat}", "--replay", "{f}"],
            b'{"results": [{"landmark_id": "fra", "result": {"rtt": 1}}]}',
        ),
    ],
)
def test_in_a_real_process(tmp_path: Path, argv: list[str], content: bytes) -> None:
    """The same through a real interpreter: its recursion limit and stderr, not the test's."""
    f = tmp_path / "hostile.in"
    f.write_bytes(content)
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(CATALOGUE))
    args = [a.format(f=f, cat=cat) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "geoprobe", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")},
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    err = proc.stderr.splitlines()
    assert len(err) == 1 and str(f) in err[0], proc.stderr
    if args[0] == "check":
        assert proc.stdout.startswith("GEOPROBE UNKNOWN - ") and len(proc.stdout.splitlines()) == 1
