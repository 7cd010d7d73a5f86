"""TCP connect timing and ICMP echo on loopback; ICMP's fallback to datagram sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from loopback_world import next_host

from geoprobe.errors import MeasurementError
from geoprobe.landmarks import Landmark
from geoprobe.probe import measure
from geoprobe.probe.icmp import open_icmp


def test_tcp_connect_to_a_listener_and_to_a_closed_port() -> None:
    host = next_host()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(16)
    closed_host = next_host()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((closed_host, 0))
    closed_port = s.getsockname()[1]
    s.close()
    up = Landmark(id="up", lat=1.0, lon=2.0, address=host, tcp_port=listener.getsockname()[1])
    refused = Landmark(id="rst", lat=1.0, lon=2.0, address=closed_host, tcp_port=closed_port)
    udp_only = Landmark(id="udp-only", lat=1.0, lon=2.0, address=host, udp_port=7207)
    try:
        ms = {m.landmark_id: m for m in measure([up, refused, udp_only], "tcp", samples=3)}
    finally:
        listener.close()
    assert ms["up"].ok and len(ms["up"].rtts_ms) == 3 and ms["up"].path == "tcp-connect"
    # A RST is a full round trip too, so a closed port still measures the path.
    assert ms["rst"].ok and len(ms["rst"].rtts_ms) == 3
    assert ms["udp-only"].failure == "no tcp port in catalogue"


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.mark.root
@pytest.mark.skipif(not _is_root(), reason="raw ICMP sockets need root or CAP_NET_RAW")
def test_icmp_raw_path_to_loopback() -> None:
    lms = [
        Landmark(id=f"ping{i}", lat=1.0, lon=2.0, address=next_host(), icmp=True) for i in range(3)
    ]
    lms.append(Landmark(id="no-icmp", lat=1.0, lon=2.0, address=next_host(), tcp_port=80))
    ms = measure(lms, "icmp", samples=2)
    for m in ms[:3]:
        assert m.ok and m.path == "icmp-raw" and len(m.rtts_ms) == 2, m
    assert ms[3].failure == "no icmp in catalogue"


_CHILD = textwrap.dedent("""
    import json, sys
    from geoprobe.errors import MeasurementError
    from geoprobe.landmarks import Landmark
    from geoprobe.probe import measure
    lms = [Landmark(id="a", lat=1.0, lon=2.0, address="127.0.0.7", icmp=True)]
    try:
        [m] = measure(lms, "icmp", samples=2)
        print(json.dumps({"path": m.path, "rtts": m.rtts_ms, "failure": m.failure}))
    except MeasurementError as exc:
        print(json.dumps({"error": str(exc)}))
""")


def _in_private_netns(ping_range: str) -> dict[str, object]:
    """Run the child in a network namespace of its own (its ping_group_range is private, so the
    host's sysctl is never touched) without CAP_NET_RAW, so the raw socket is refused."""
    if not (
        _is_root() and shutil.which("unshare") and shutil.which("setpriv") and shutil.which("ip")
    ):
        pytest.skip("needs root, unshare, setpriv and ip to build a private network namespace")
    script = (
        f"ip link set lo up && sysctl -qw net.ipv4.ping_group_range='{ping_range}' && "
        f'exec setpriv --bounding-set -net_raw --inh-caps -net_raw {sys.executable} -c "$CHILD"'
    )
    env = {**os.environ, "CHILD": _CHILD}
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {out.stderr.strip()[:200]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.root
def test_icmp_falls_back_to_datagram_socket_without_cap_net_raw() -> None:
    result = _in_private_netns("0 2147483647")
    assert result.get("path") == "icmp-dgram", result
    assert isinstance(result["rtts"], list) and len(result["rtts"]) == 2


@pytest.mark.root
def test_icmp_without_any_path_is_a_measurement_error() -> None:
    result = _in_private_netns("1 0")
    assert "error" in result, result
    assert "ping_group_range" in str(result["error"]) and "raw socket" in str(result["error"])


@pytest.mark.root
@pytest.mark.skipif(not _is_root(), reason="needs root")
def test_open_icmp_tries_paths_in_order() -> None:
    prober_paths = []

    async def open_and_close(paths: tuple[str, ...]) -> str:
        p = open_icmp(paths)
        p.close()
        return p.path

    import asyncio

    prober_paths.append(asyncio.run(open_and_close(("raw", "dgram"))))
    assert prober_paths == ["icmp-raw"]
    with pytest.raises(ValueError):
        asyncio.run(open_and_close(("smoke-signals",)))
    if Path("/proc/sys/net/ipv4/ping_group_range").read_text().split() == ["1", "0"]:
        with pytest.raises(MeasurementError, match="dgram socket"):
            asyncio.run(open_and_close(("dgram",)))
