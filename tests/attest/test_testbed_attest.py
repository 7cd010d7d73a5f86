"""On the loopback testbed (real processes, real sockets): a watch's own rounds become a chain
that verifies offline; a VM that shrinks the RTTs it reports is caught, where today's VM-timed
evidence passes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from geoprobe.attest import dsse, identity, rounds
from geoprobe.attest.region import certify
from geoprobe.attest.statement import hour_label
from geoprobe.attest.verify import Entry, load_entries, verify_chain
from geoprobe.geo.countries import default_index
from geoprobe.landmarks import load_catalogue
from geoprobe.measurement import min_rtts, save_measurements
from geoprobe.probe import timed
from geoprobe.probe.protocol import ProtocolError, parse_reply
from geoprobe.probe.scheduler import measure_async
from geoprobe.probe.udp import UdpProber

from .attest_world import ELSEWHERE, HOME, cli, rtt_ms, running_testbed, subprocess_env

pytestmark = pytest.mark.slow
PERIODS = 24


def test_a_real_watch_run_gives_24_attestations_that_verify(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_testbed(tmp_path, HOME) as cat:
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geoprobe",
                "watch",
                "--attest",
                "--landmarks",
                str(cat),
                "--allow",
                "US",
                "--state",
                str(state),
                "--interval",
                "0.25",
                "--signals",
                "none",
                "--events",
                str(tmp_path / "events.jsonl"),
                "--timeout",
                "1",
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(PERIODS + 2.5)
        finally:
            watch.send_signal(signal.SIGTERM)
            out, _ = watch.communicate(timeout=30)
        assert watch.returncode == 0, out
        fixes = [
            ev["data"]
            for line in (tmp_path / "events.jsonl").read_text().splitlines()
            if (ev := json.loads(line))["type"] == "io.geoprobe.location.fix"
        ]
        assert fixes and all(f["timing"]["fix_rtts"] == "vm" for f in fixes)
        assert max(len(f["timing"]["landmark_timed"]) for f in fixes) == 7
        key = (state / "identity.key").stat()
        assert key.st_mode & 0o777 == 0o600
        code, out, err = cli(
            "attest",
            "run",
            "--state",
            str(state),
            "--landmarks",
            str(cat),
            "--allow",
            "US",
            "--period",
            "1",
            "--metrics",
            str(tmp_path / "attest.prom"),
        )
        assert code == 0, err
        chain_dir = state / "attest" / "chain"
        entries = load_entries(chain_dir)
        assert len(entries) >= PERIODS
        code, out, err = cli(
            "attest",
            "verify",
            str(chain_dir),
            "--vm-key",
            str(state / "identity.pub"),
            "--landmarks",
            str(cat),
        )
        assert code == 0, out + err
        assert out.splitlines()[-1].startswith(f"OK: {len(entries)} attestation(s) verified")
        preds = [json.loads(e.envelope.payload)["predicate"] for e in entries if e.envelope]
        rounds_seen = sum(len(p["rounds"]) for p in preds)
        assert rounds_seen >= PERIODS
        # The rounds rest on landmark-timed RTTs (a statement that came too late on a loaded
        # machine leaves one VM-timed), and the home is certified.
        rtts = [v for p in preds for r in p["rounds"] for v in r["rtts"].values()]
        assert sum(v["landmark_timed_ms"] is not None for v in rtts) >= 0.95 * len(rtts)
        assert sum(p["verdict"] == "inside" for p in preds) >= PERIODS // 2
        gauge = (tmp_path / "attest.prom").read_text()
        [value] = [
            float(ln.split()[1])
            for ln in gauge.splitlines()
            if ln.startswith("geoprobe_attest_last_period_end_timestamp_seconds ")
        ]
        assert value == preds[-1]["period"]["end"]
        # Any one removed, swapped or edited is reported naming its period.
        catalogue = load_catalogue(cat).by_id()
        pub = identity.load_public(str(state / "identity.pub"))
        countries = default_index()
        labels = [hour_label(p["period"]["start"], p["period"]["end"]) for p in preds]
        n = len(entries)
        for k in range(n):
            removed = entries[:k] + entries[k + 1 :]
            rep = verify_chain(removed, pub, catalogue, countries, until=preds[-1]["period"]["end"])
            assert any(labels[k] in p or labels[k].split("..")[0] in p for p in rep.problems), k
            if k + 1 < n:
                swapped = list(entries)
                swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
                rep = verify_chain(swapped, pub, catalogue, countries)
                assert any(labels[k] in p and "out of order" in p for p in rep.problems), k
            env = entries[k].envelope
            assert env is not None
            st = json.loads(env.payload)
            st["predicate"]["verdict"] = "inside" if st["predicate"]["verdict"] != "inside" else "x"
            edited = list(entries)
            edited[k] = Entry(
                entries[k].where,
                dsse.Envelope(env.payload_type, json.dumps(st).encode(), env.signatures),
            )
            rep = verify_chain(edited, pub, catalogue, countries)
            assert any(labels[k] in p and "signature" in p for p in rep.problems), k


def _shrinking_prober(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM patched to report, for every echo, the RTT it would have at home when that is smaller:
    its receive stamps are moved earlier, consistently with everything it records."""
    original = UdpProber._reply

    def shrunk(self: UdpProber, data: bytes, src: Any, t1: int, sock: Any = None) -> None:
        try:
            reply = parse_reply(data)
        except ProtocolError:
            return original(self, data, src, t1, sock)
        pending = self._pending.get(reply.nonce)
        if pending is not None:
            fake = rtt_ms(HOME, pending.landmark.id) if pending.landmark.id != HOME else 1.0
            t1 = min(t1, pending.t0_ns + reply.processing_ns + int(fake * 1e6))
        return original(self, data, src, t1, sock)

    monkeypatch.setattr(UdpProber, "_reply", shrunk)


def test_a_vm_that_shrinks_its_rtts_is_caught_where_todays_evidence_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    _shrinking_prober(monkeypatch)
    vm = identity.load_or_create(state)
    journal = rounds.Journal(rounds.journal_path(state))
    with running_testbed(tmp_path, ELSEWHERE) as catp:
        cat = load_catalogue(catp)
        timed.use_identity(vm)
        try:
            all_ms = []
            for _ in range(8):
                t = time.time()
                ms = asyncio.run(measure_async(cat.landmarks, "udp", samples=3, timeout=2.0))
                journal.round(t, ms)
                all_ms.extend(ms)
                time.sleep(0.2)
        finally:
            timed.use_identity(None)
    # Today's evidence passes: the signed replies verify and the shrunk RTTs follow from the
    # (shrunk) timestamps, and they certify the home country the VM has left.
    saved = tmp_path / "measurements.json"
    save_measurements(saved, all_ms[-len(cat.landmarks) :])
    code, out, _ = cli("verify", str(saved), "--landmarks", str(catp))
    assert code == 0 and out.startswith("OK"), out
    vm_timed = min_rtts(all_ms)
    countries = default_index()
    assert certify(cat.by_id(), vm_timed, countries).country == "US"
    landmark_timed = {
        m.landmark_id: min(m.landmark_timed_rtts_ms) for m in all_ms if m.landmark_timed_rtts_ms
    }
    assert len(landmark_timed) == len(cat.landmarks)
    assert certify(cat.by_id(), landmark_timed, countries).country is None

    # With landmark-timed echoes the VM is caught: as attested by the (unpatched) attester ...
    time.sleep(1.1)
    code, out, err = cli(
        "attest",
        "run",
        "--state",
        str(state),
        "--landmarks",
        str(catp),
        "--allow",
        "US",
        "--period",
        "1",
    )
    assert code == 0, err
    chain_dir = state / "attest" / "chain"
    verify = (
        "attest",
        "verify",
        str(chain_dir),
        "--vm-key",
        str(state / "identity.pub"),
        "--landmarks",
        str(catp),
    )
    code, out, _ = cli(*verify)
    assert code == 1 and "the VM shaped its own timing" in out, out
    # ... and when it forges the certificate its shrunk RTTs suggest, and signs that.
    for f in sorted(chain_dir.glob("*.dsse.json")):
        env = dsse.loads(f.read_bytes())
        st = env.statement()
        pred = st["predicate"]
        for r in pred["rounds"]:
            r["certificate"] = {"country": "US", "reason": "forged"}
        if pred["rounds"]:
            pred["verdict"] = "inside"
            pred["certificate"]["country"] = "US"
        f.write_text(dsse.dumps(dsse.sign(vm, st)))
    code, out, _ = cli(*verify)
    assert code == 1
    assert "certificate US is not what the landmark-timed RTTs give" in out, out
