"""One collection path, part by part: attestations from saved measurements, posted as CloudEvents
to a webhook, appended to a log by the collector, verified from that log in a nightly job; the
gauge of the last attested period; and the identity key's file checks."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cloudevents.v1.http import from_http
from hypothesis import given
from hypothesis import strategies as st

from geoprobe.attest import identity, publish
from geoprobe.landmarks import Catalogue
from geoprobe.measurement import save_measurements
from geoprobe.probe import timed
from geoprobe.probe.scheduler import measure_async
from tests.defend.receiver import receiver
from tests.fuzz.hostile import FUZZ

from .attest_world import cli
from .conftest import Landmarks

ROUNDS = 3


def _measured(landmarks: Landmarks, state: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Saved measurement files (one per round) of landmark-timed echoes, and the catalogue."""
    lms = [
        landmarks.add("Denver", 39.74, -104.99, 0.008)[0],
        landmarks.add("Dallas", 32.78, -96.80, 0.006)[0],
        landmarks.add("StLouis", 38.63, -90.20, 0.007)[0],
        landmarks.add("Omaha", 41.26, -95.94, 0.004)[0],
    ]
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(Catalogue(landmarks=lms, name="loop").to_json()))
    d = tmp_path / "measurements"
    d.mkdir()
    timed.use_identity(identity.load_or_create(state))
    try:
        for k in range(ROUNDS):
            ms = asyncio.run(measure_async(lms, "udp", samples=2, timeout=2.0))
            save_measurements(d / f"round{k}.json", ms)
            time.sleep(1.0)  # one round per 1 s period at least
    finally:
        timed.use_identity(None)
    return d, cat


def test_webhook_log_and_nightly_verification(landmarks: Landmarks, tmp_path: Path) -> None:
    state = tmp_path / "state"
    measurements, cat = _measured(landmarks, state, tmp_path)
    prom = tmp_path / "attest.prom"
    with receiver() as hook:
        code, out, err = cli(
            "attest",
            "run",
            "--state",
            str(state),
            "--from-measurements",
            str(measurements),
            "--landmarks",
            str(cat),
            "--allow",
            "US",
            "--period",
            "1",
            "--webhook",
            hook.url,
            "--metrics",
            str(prom),
        )
        assert code == 0, err
        assert hook.requests and all(
            r.headers["Content-Type"] == "application/cloudevents+json" for r in hook.requests
        )
    events = [from_http(r.headers, r.body) for r in hook.requests]
    assert {e["type"] for e in events} == {publish.ATTESTED}
    chain = sorted((state / "attest" / "chain").glob("*.dsse.json"))
    assert len(events) == len(chain) >= 1
    # The collector appends each body to a log; the nightly job verifies that log.
    log = tmp_path / "collected.jsonl"
    log.write_bytes(b"".join(r.body + b"\n" for r in hook.requests))
    code, out, _ = cli(
        "attest",
        "verify",
        str(log),
        "--vm-key",
        str(state / "identity.pub"),
        "--landmarks",
        str(cat),
    )
    assert code == 0, out
    last_end = max(json.loads(_payload(e.data))["predicate"]["period"]["end"] for e in events)
    [value] = [
        float(ln.split()[1]) for ln in prom.read_text().splitlines() if ln.startswith(publish.GAUGE)
    ]
    assert value == last_end
    # A lost event is a gap in the log, named by its period.
    lines = log.read_bytes().splitlines(keepends=True)
    if len(lines) >= 3:
        log.write_bytes(b"".join(lines[:1] + lines[2:]))
        code, out, _ = cli(
            "attest",
            "verify",
            str(log),
            "--vm-key",
            str(state / "identity.pub"),
            "--landmarks",
            str(cat),
        )
        assert code == 1 and "gap" in out


def _payload(envelope: dict) -> str:  # type: ignore[type-arg]
    import base64

    return base64.b64decode(envelope["payload"]).decode()


def test_a_failing_webhook_keeps_the_attestation(landmarks: Landmarks, tmp_path: Path) -> None:
    state = tmp_path / "state"
    measurements, cat = _measured(landmarks, state, tmp_path)
    with receiver() as hook:
        hook.statuses = [400] * 10
        code, _, err = cli(
            "attest",
            "run",
            "--state",
            str(state),
            "--from-measurements",
            str(measurements),
            "--landmarks",
            str(cat),
            "--allow",
            "US",
            "--period",
            "1",
            "--webhook",
            hook.url,
        )
    assert code == 0
    assert "webhook: POST" in err and "400" in err and "Traceback" not in err
    assert list((state / "attest" / "chain").glob("*.dsse.json"))


def test_the_key_command_prints_the_public_key_once_created(tmp_path: Path) -> None:
    code, out, _ = cli("attest", "key", "--state", str(tmp_path))
    assert code == 0
    assert (tmp_path / "identity.pub").read_text() == out
    assert (tmp_path / "identity.key").stat().st_mode & 0o777 == 0o600
    assert cli("attest", "key", "--state", str(tmp_path))[1] == out  # same key next time


def test_an_identity_key_open_to_others_is_refused(tmp_path: Path) -> None:
    identity.load_or_create(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    code, _, err = cli("attest", "key", "--state", str(tmp_path))
    assert code == 3 and "open to others" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the key to another user")
def test_root_refuses_a_key_another_user_owns(tmp_path: Path) -> None:
    import pwd

    identity.load_or_create(tmp_path)
    nobody = pwd.getpwnam("nobody")
    os.chown(tmp_path / "identity.key", nobody.pw_uid, nobody.pw_gid)
    code, _, err = cli("attest", "key", "--state", str(tmp_path))
    assert code == 3 and "another user" in err


def test_a_damaged_journal_line_is_skipped_and_counted(tmp_path: Path) -> None:
    from geoprobe.attest import rounds
    from geoprobe.measurement import Measurement

    j = rounds.Journal(tmp_path / "rounds.jsonl")
    j.round(100.0, [Measurement("a", "udp", rtts_ms=[5.0])])
    with open(j.path, "a") as f:
        f.write('{"round": 101, "measurements": [{"landmark_id": 7}]}\n{"round": NaN}\n{"rou')
    j.event({"type": "io.geoprobe.migration.suspected", "id": "e1", "time": "x"})
    got, evs = j.read(0.0, {}, "0" * 16)
    assert [r.time for r in got] == [100.0] and got[0].vm_timed == {"a": 5.0}
    assert j.skipped == 3 and [e["id"] for e in evs] == ["e1"]


def test_follow_attests_as_periods_close_until_sigterm(
    landmarks: Landmarks, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    from geoprobe.attest import rounds

    from .attest_world import subprocess_env

    state = tmp_path / "state"
    lm, _ = landmarks.add("Denver", 39.74, -104.99, 0.004)
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(Catalogue(landmarks=[lm], name="loop").to_json()))
    timed.use_identity(identity.load_or_create(state))
    try:
        ms = asyncio.run(measure_async([lm], "udp", samples=2, timeout=2.0))
    finally:
        timed.use_identity(None)
    rounds.Journal(rounds.journal_path(state)).round(time.time(), ms)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "attest",
            "run",
            "--follow",
            "--state",
            str(state),
            "--landmarks",
            str(cat),
            "--allow",
            "US",
            "--period",
            "1",
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    chain_dir = state / "attest" / "chain"
    deadline = time.monotonic() + 60
    while not list(chain_dir.glob("*.dsse.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.5)  # at least two more periods close while it follows
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    chain = sorted((state / "attest" / "chain").glob("*.dsse.json"))
    # The round's period and the empty ones after it, each once, while it ran.
    assert len(chain) >= 2 and len(out.splitlines()) == len(chain)
    code, vout, _ = cli(
        "attest",
        "verify",
        str(state / "attest" / "chain"),
        "--vm-key",
        str(state / "identity.pub"),
        "--landmarks",
        str(cat),
    )
    assert code == 0, vout
    assert "inside 1" in vout or "unproven" in vout


def test_the_policys_actions_are_read_from_the_audit_trail(tmp_path: Path) -> None:
    from geoprobe.attest.actions import actions_since
    from geoprobe.defend.audit import AuditStore
    from geoprobe.defend.base import ActionResult
    from geoprobe.store import default_path

    path = default_path(tmp_path)
    assert actions_since(path, 0.0) == []  # no store yet: nothing, and nothing created
    assert not path.exists()
    store = AuditStore.open(path)
    store.audit_result("ev-1", ActionResult(0, "webhook", "confirmed", "ok", "POST -> 200"))
    store.close()
    (act,) = actions_since(path, 0.0)
    assert (act["event_id"], act["action"], act["status"]) == ("ev-1", "webhook", "ok")
    assert actions_since(path, time.time() + 60) == []


def test_a_journal_that_cannot_be_written_does_not_stop_the_caller(tmp_path: Path) -> None:
    from geoprobe.attest import rounds
    from geoprobe.measurement import Measurement

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    j = rounds.Journal(blocker / "attest" / "rounds.jsonl")
    j.round(1.0, [Measurement("a", "udp", rtts_ms=[5.0])])
    j.event({"type": "io.geoprobe.migration.suspected", "id": "e"})
    assert j.write_errors == 2


@FUZZ
@given(lines=st.lists(st.binary(max_size=120), max_size=6))
def test_the_journal_reader_survives_any_lines(tmp_path_factory: Any, lines: list[bytes]) -> None:
    from geoprobe.attest import rounds

    path = tmp_path_factory.mktemp("j") / "rounds.jsonl"
    path.write_bytes(b"\n".join(lines))
    j = rounds.Journal(path)
    got, evs = j.read(0.0, {}, "0" * 16)
    assert len(got) + len(evs) + j.skipped <= len(path.read_text(errors="replace").splitlines())


def test_a_damaged_chain_head_is_not_extended(tmp_path: Path) -> None:
    from geoprobe.attest import chain
    from geoprobe.errors import InputError

    (tmp_path / "00000000-x.dsse.json").write_text('{"payloadType": "applic')
    with pytest.raises(InputError, match="refusing to extend"):
        chain.head(tmp_path)
