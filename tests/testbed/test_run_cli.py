"""``geoprobe testbed run`` in a real subprocess, steered by ``testbed move``, probed for real over
loopback."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.landmarks import Catalogue, load_catalogue
from geoprobe.measurement import min_rtts
from geoprobe.probe import measure
from geoprobe.status import ExitStatus

REPO = Path(__file__).resolve().parents[2]


def free_port_block(n: int) -> int:
    """A first port such that it and the n - 1 after it are free on loopback (UDP and TCP) now."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports on loopback")


@contextmanager
def running_testbed(runtime: Path, catalogue: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, GEOPROBE_RUNTIME_DIR=str(runtime), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoprobe", "testbed", "run", "--catalogue", str(catalogue), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not catalogue.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"testbed exited early: {proc.stdout.read() if proc.stdout else ''}"
                )
            assert time.monotonic() < deadline, "catalogue never appeared"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cli(runtime: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env=Environment(stdout=out, stderr=err, runtime_dir=runtime))
    return code, out.getvalue(), err.getvalue()


def probe(cat: Catalogue) -> dict[str, float]:
    return min_rtts(measure(cat.landmarks, "udp", samples=3, timeout=2.0))


def test_run_move_and_probe(tmp_path: Path, small_dataset_dir: Path) -> None:
    rt, catp = tmp_path / "rt", tmp_path / "cat.json"
    with running_testbed(
        rt, catp, "--dataset", str(small_dataset_dir), "--at-server", "Frankfurt"
    ) as proc:
        cat = load_catalogue(catp)
        assert sorted(lm.id for lm in cat) == ["Madrid", "NewYork", "Paris", "Tokyo", "Warsaw"]
        assert all(
            lm.pubkey and lm.key_id and lm.udp_port and lm.address.startswith("127.0.")
            for lm in cat
        )
        assert len({lm.address for lm in cat}) == 5
        assert ("Paris", "Madrid", 18.0) in cat.rtts
        assert {lm.id: lm.country for lm in cat}["Tokyo"] == "JP"

        # Only coarse bounds here (a loaded CI machine answers late); precision is benchmarked in
        # benchmarks/testbed_accuracy.py. A reply is never early: the hold counts from its arrival.
        before = probe(cat)
        assert 8.95 <= before["Paris"] < 100.0 and before["Tokyo"] >= 229.95

        code, out, _ = cli(rt, "testbed", "move", "--to-server", "Tokyo")
        assert code == 0 and "Tokyo" in out
        after = probe(cat)
        assert after["Paris"] >= 224.95 and after["Tokyo"] < 100.0

        code, out, _ = cli(rt, "testbed", "status")
        status = json.loads(out)
        assert (
            status["vm"]["server"] == "Tokyo" and status["moves"] == 1 and status["answered"] >= 20
        )

        code, _, err = cli(rt, "testbed", "move", "--to-server", "Atlantis")
        assert code == ExitStatus.ERROR and "Atlantis" in err and err.count("\n") == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not list(rt.glob("testbed-*"))  # unregistered on exit
    code, _, err = cli(rt, "testbed", "move", "--to-server", "Paris")
    assert code == ExitStatus.ERROR and "no testbed is running" in err


def test_move_to_a_position_uses_the_model(tmp_path: Path, small_dataset_dir: Path) -> None:
    rt, catp = tmp_path / "rt", tmp_path / "cat.json"
    with running_testbed(
        rt, catp, "--dataset", str(small_dataset_dir), "--at", "40.7,-74.0", "--no-jitter"
    ):
        cat = load_catalogue(catp)
        assert len(cat) == 6  # placed by position: every server is a landmark
        near_ny = probe(cat)
        assert near_ny["NewYork"] < near_ny["Paris"] < near_ny["Tokyo"]
        assert cli(rt, "testbed", "move", "--to", "35.7,139.7")[0] == 0
        near_tokyo = probe(cat)
        assert near_tokyo["Tokyo"] < near_tokyo["NewYork"] < near_tokyo["Madrid"]


def test_lab_mode_one_address_shared_keys_and_advertised_address(
    tmp_path: Path, small_dataset_dir: Path
) -> None:
    base = free_port_block(6)  # one port per server of the small dataset
    keys = tmp_path / "keys"
    common = [
        "--dataset",
        str(small_dataset_dir),
        "--bind",
        "127.0.0.1",
        "--advertise",
        "10.0.2.2",
        "--base-port",
        str(base),
        "--keys-dir",
        str(keys),
    ]
    with running_testbed(tmp_path / "rt", tmp_path / "a.json", *common, "--at-server", "Paris"):
        a = load_catalogue(tmp_path / "a.json")
    with running_testbed(tmp_path / "rt", tmp_path / "b.json", *common, "--at-server", "Madrid"):
        b = load_catalogue(tmp_path / "b.json")
    assert {lm.address for lm in a} == {"10.0.2.2"}
    order = ["Frankfurt", "Paris", "Madrid", "Warsaw", "NewYork", "Tokyo"]
    assert {lm.id: lm.udp_port for lm in a} == {
        n: base + i for i, n in enumerate(order) if n != "Paris"
    }
    shared = set(a.by_id()) & set(b.by_id())
    assert shared == {"Frankfurt", "Warsaw", "NewYork", "Tokyo"}
    for lid in shared:
        la, lb = a.by_id()[lid], b.by_id()[lid]
        assert (la.pubkey, la.key_id, la.udp_port) == (lb.pubkey, lb.key_id, lb.udp_port)


def test_two_testbeds_without_names_both_register(tmp_path: Path, small_dataset_dir: Path) -> None:
    rt = tmp_path / "rt"
    ds = ["--dataset", str(small_dataset_dir)]
    with (
        running_testbed(rt, tmp_path / "a.json", *ds, "--at-server", "Paris"),
        running_testbed(rt, tmp_path / "b.json", *ds, "--at-server", "Tokyo") as second,
    ):
        names = sorted(p.name for p in rt.glob("*.pid"))
        assert names == sorted(["testbed-default.pid", f"testbed-default-{second.pid}.pid"])
        _, out, _ = cli(rt, "testbed", "status")
        assert json.loads(out)["vm"]["server"] == "Paris"
        _, out, _ = cli(rt, "testbed", "status", "--name", f"default-{second.pid}")
        assert json.loads(out)["vm"]["server"] == "Tokyo"
