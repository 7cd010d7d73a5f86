"""The clevis pin on a real LUKS2 header, with client, relay and key server in three namespaces.

The relay is the only path between the client's namespace and the server's, and it holds every
datagram: 2 ms of round trip releases the key (500 km bound) and the passphrase clevis recovers
opens the header; 20 ms is refused with the bound and the measured round trip. This kernel has
no device-mapper, so the header lives in a plain file and `cryptsetup open --test-passphrase`
checks the passphrase; activating and mounting a volume happens in the QEMU lab guest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.keyserver import Topology, start_relay, start_server
from tests.keyrelease.world import add_server, make_world

REPO = Path(__file__).resolve().parents[2]
PIN_DIR = REPO / "contrib" / "clevis"
TOOLS = ("cryptsetup", "clevis", "jose", "clevis-luks-bind", "clevis-luks-pass")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(Topology.available() is not None, reason=str(Topology.available())),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="needs Debian's cryptsetup, clevis, clevis-luks and jose",
    ),
]


def _geoprobe() -> str:
    exe = Path(sys.executable).parent / "geoprobe"
    return str(exe) if exe.exists() else shutil.which("geoprobe") or "geoprobe"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{PIN_DIR}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["GEOPROBE"] = _geoprobe()
    return env


def _format(header: Path, passphrase: bytes) -> None:
    with header.open("wb") as f:
        f.truncate(20 << 20)
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file=-",
            str(header),
        ],
        input=passphrase,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _opens(header: Path, passphrase: bytes) -> bool:
    done = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(header)],
        input=passphrase,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode == 0


def test_bind_near_then_pass_opens_the_header_and_far_is_refused(tmp_path: Path) -> None:
    topo = Topology.named(f"t{os.getpid()}")
    w = make_world(tmp_path)
    spec = add_server(
        w,
        "ks-fra",
        os.urandom(32),
        bound="bound_km = 500",
        listen=f"{topo.server_addr}:7208",
        extra='log = "release.jsonl"\n',
    )
    header = tmp_path / "volume.luks"
    _format(header, b"initial passphrase")
    client_cfg = w.client_config({"ks-fra": f"{topo.relay_addr}:7208"}, timeout_ms=1000, attempts=3)
    pin_cfg = json.dumps({"name": "vault", "config": str(client_cfg)})
    in_client = [*topo.wrap(topo.cli, [])]

    with topo.up(), start_server(spec.config_path, wrap=topo.wrap(topo.srv, [])) as srv:
        # the client's namespace has no route to the server except through the relay
        direct = subprocess.run(
            [*in_client, sys.executable, "-m", "geoprobe", "unlock", "vault"]
            + ["--config", str(w.client_config({"ks-fra": srv.address}, timeout_ms=200))],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert direct.returncode == 3 and direct.stdout == b""

        relay_at = f"{topo.relay_addr}:7208"
        with start_relay(relay_at, srv.address, 2.0, wrap=topo.wrap(topo.rly, [])):
            bind = subprocess.run(
                [*in_client, "clevis", "luks", "bind", "-y", "-k", "-", "-d", str(header)]
                + ["geoprobe", pin_cfg],
                input=b"initial passphrase",
                env=_env(),
                capture_output=True,
                timeout=300,
                check=False,
            )
            assert bind.returncode == 0, bind.stderr.decode()
            listed = subprocess.run(
                ["clevis", "luks", "list", "-d", str(header)],
                env=_env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            # clevis luks list describes only the pins it ships, and names ours as unknown
            m = re.search(r"^(\d+): (?:geoprobe |unknown pin 'geoprobe')", listed, re.MULTILINE)
            assert m, listed
            slot = m.group(1)
            near = subprocess.run(
                [*in_client, "clevis", "luks", "pass", "-d", str(header), "-s", slot],
                env=_env(),
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert near.returncode == 0, near.stderr.decode()
            assert near.stdout and _opens(header, near.stdout)
            assert not _opens(header, near.stdout + b"x")

        with start_relay(relay_at, srv.address, 20.0, wrap=topo.wrap(topo.rly, [])):
            far = subprocess.run(
                [*in_client, "clevis", "luks", "pass", "-d", str(header), "-s", slot],
                env=_env(),
                capture_output=True,
                timeout=120,
                check=False,
            )
    assert far.returncode != 0 and far.stdout == b""
    lines = [x for x in far.stderr.decode().splitlines() if "geoprobe" in x]
    assert len(lines) == 1, far.stderr.decode()
    assert re.search(r"round trip 2\d\.\d{3} ms exceeds the bound 5 ms \(500 km\)", lines[0])
    records = [json.loads(x) for x in (spec.dir / "release.jsonl").read_text().splitlines()]
    releases = [r for r in records if r["event"] == "release"]
    refusals = [r for r in records if r["event"] == "refuse"]
    assert len(releases) == 2  # bind and the near pass
    assert all(2.0 <= float(r["rtt_ms"]) <= 5.0 for r in releases)
    # a loaded machine may make a near attempt slow (refused, then asked again); far ones all are
    far_refusals = [r for r in refusals if float(r["rtt_ms"]) >= 20.0]
    assert len(far_refusals) >= 3 and all(r["code"] == "too_slow" for r in refusals)
