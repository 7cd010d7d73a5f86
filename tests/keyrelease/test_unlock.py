"""`geoprobe keyserver serve` and `geoprobe unlock` as processes on loopback: k of n, a relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.keyserver import start_relay, start_server
from geoprobe.keyrelease import shares
from tests.keyrelease.world import add_server, make_world

LOG = 'log = "release.jsonl"\n'


def _unlock(cfg: Path, name: str = "vault", *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "geoprobe", "unlock", name, "--config", str(cfg), *extra],
        capture_output=True,
        timeout=60,
        check=False,
    )


def _records(server_dir: Path) -> list[dict[str, object]]:
    path = server_dir / "release.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_unlock_prints_the_secret_bytes_and_nothing_else(tmp_path: Path) -> None:
    secret = bytes(range(256))  # every byte value, no newline added
    w = make_world(tmp_path)
    spec = add_server(w, "ks-a", secret, bound="bound_ms = 50", extra=LOG)
    with start_server(spec.config_path) as srv:
        cfg = w.client_config({"ks-a": srv.address}, attempts=3)
        done = _unlock(cfg)
        assert done.returncode == 0, done.stderr
        assert done.stdout == secret and done.stderr == b""
        jwk = _unlock(cfg, "vault", "--jwk")
        key = json.loads(jwk.stdout)
        assert key["kty"] == "oct" and key["alg"] == "A256KW" and len(key["k"]) == 43
        refused = _unlock(cfg, "other")
    assert refused.returncode == 3 and refused.stdout == b""
    assert refused.stderr.decode().count("\n") == 1
    assert "may not have secret 'other'" in refused.stderr.decode()
    recs = _records(spec.dir)
    # a refusal that no fresh challenge can change is final: asked once, not three times
    assert [r["event"] for r in recs] == ["release", "release", "refuse"]
    assert recs[2]["code"] == "not_allowed"
    assert all(isinstance(r.get("rtt_ms"), float) for r in recs[:2])


def test_two_of_three_servers_rebuild_the_secret_and_one_does_not(tmp_path: Path) -> None:
    secret = os.urandom(32)
    parts = shares.split(secret, 2, 3)
    w = make_world(tmp_path)
    specs = [
        add_server(w, f"ks-{i}", part, bound="bound_ms = 50", extra=LOG)
        for i, part in enumerate(parts)
    ]
    with start_server(specs[0].config_path) as a, start_server(specs[1].config_path) as b:
        # ks-2 is down: its port is one nobody listens on
        dead = "127.0.0.1:9"
        cfg = w.client_config({"ks-0": a.address, "ks-1": b.address, "ks-2": dead}, k=2)
        done = _unlock(cfg)
        assert done.returncode == 0, done.stderr
        assert done.stdout == secret
        one = w.client_config({"ks-2": dead, "ks-0": a.address}, k=2, timeout_ms=200)
        failed = _unlock(one)
    err = failed.stderr.decode()
    assert failed.returncode == 3 and failed.stdout == b""
    assert err.count("\n") == 1
    assert "vault: 1 of 2 releases: ks-2: no challenge after 1 attempt" in err


def test_a_server_with_the_wrong_key_is_never_believed(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    spec = add_server(w, "ks-a", b"s", bound="bound_ms = 50")
    impostor = add_server(w, "ks-b", b"s", bound="bound_ms = 50")
    with start_server(spec.config_path) as srv:
        cfg = w.client_config({"ks-b": srv.address}, timeout_ms=300)
        # the client pins ks-b's key but the real server answers as ks-a
        done = _unlock(cfg)
    assert done.returncode == 3 and done.stdout == b""
    assert "calls itself 'ks-a'" in done.stderr.decode()
    assert impostor.server_id == "ks-b"


def test_a_client_behind_20_ms_of_path_is_refused_with_bound_and_rtt(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    spec = add_server(w, "ks-a", b"s3cret", bound="bound_km = 500", extra=LOG)
    with (
        start_server(spec.config_path) as srv,
        start_relay("127.0.0.1:0", srv.address, rtt_ms=20.0) as rly,
    ):
        cfg = w.client_config({"ks-a": rly.address}, timeout_ms=1000, attempts=2)
        done = _unlock(cfg)
    err = done.stderr.decode()
    assert done.returncode == 3 and done.stdout == b""
    assert err.count("\n") == 1
    assert "exceeds the bound 5 ms (500 km)" in err and "round trip 2" in err
    assert "(after 2 attempts)" in err
    recs = _records(spec.dir)
    assert [r["code"] for r in recs] == ["too_slow", "too_slow"]
    assert all(20.0 <= float(r["rtt_ms"]) < 100 for r in recs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_jitter_never_lets_a_far_client_through(tmp_path: Path) -> None:
    """A small version of the benchmark: 50 attempts at 6 ms plus jitter against 5 ms."""
    w = make_world(tmp_path)
    spec = add_server(w, "ks-bench", b"s3cret", bound="bound_ms = 5", extra=LOG)
    with (
        start_server(spec.config_path) as srv,
        start_relay("127.0.0.1:0", srv.address, rtt_ms=6.0, jitter_ms=2.0) as rly,
    ):
        cfg = w.client_config({"ks-bench": rly.address}, timeout_ms=1000)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.keyserver", "--attempt-loop", str(cfg), "50"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    counts = json.loads(out.stdout)
    assert counts["released"] == 0 and counts["refused"] + counts["silent"] == 50
    recs = _records(spec.dir)
    assert recs and all(r["event"] == "refuse" for r in recs)
    assert min(float(r["rtt_ms"]) for r in recs) >= 6.0  # type: ignore[arg-type]
