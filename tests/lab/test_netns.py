"""Sites are network namespaces with only loopback: a process inside sees its own 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from benchmarks.lab.netns import Namespace, remove_stale

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 for network namespaces",
    ),
]


def test_namespace_has_only_lo_and_its_own_loopback() -> None:
    ns = Namespace(f"geoprobe-labtest-{os.getpid()}").create()
    try:
        assert ns.exists()
        assert ns.links() == ["lo"]
        # a UDP port bound on the host's loopback is not visible from inside the namespace
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
        port = host.getsockname()[1]
        code = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('127.0.0.1', {port})); print('bound')"
        )
        out = subprocess.run(
            ns.wrap([sys.executable, "-c", code]),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout.strip() == "bound"  # the same port is free in there: separate stacks
        host.close()
    finally:
        ns.delete()
    assert not ns.exists()


def test_namespaces_of_dead_runs_are_removed_and_live_ones_kept() -> None:
    dead = Namespace("geoprobe-labtest-stale-999999999").create()  # no such pid
    live = Namespace(f"geoprobe-labtest-stale-{os.getpid()}").create()
    try:
        assert remove_stale("geoprobe-labtest-stale-") == [dead.name]
        assert not dead.exists() and live.exists()
    finally:
        dead.delete()
        live.delete()
