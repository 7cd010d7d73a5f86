"""Host fingerprint: parsing real and built /proc trees, what counts as a change, and a real
gateway whose MAC changes inside network namespaces the test creates (root only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoprobe.watch.signals.fingerprint import FingerprintSignal, HostFingerprint, compare, take

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
stepping\t: 7
microcode\t: {microcode}
flags\t\t: fpu vme de pse tsc msr {extra}

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
"""
ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ens5\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
ens5\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.0.1      0x1         {flags}         {mac}     *        ens5
"""


def _tree(
    root: Path,
    microcode: str = "0x5003604",
    extra: str = "avx2",
    clock: str = "tsc",
    mac: str = "06:AA:BB:CC:DD:01",
    flags: str = "0x2",
) -> Path:
    (root / "proc/net").mkdir(parents=True, exist_ok=True)
    cs = root / "sys/devices/system/clocksource/clocksource0"
    cs.mkdir(parents=True, exist_ok=True)
    (root / "sys/devices/system/cpu/cpu0").mkdir(parents=True, exist_ok=True)
    (root / "proc/cpuinfo").write_text(CPUINFO.format(microcode=microcode, extra=extra))
    (root / "proc/net/route").write_text(ROUTE)
    (root / "proc/net/arp").write_text(ARP.format(mac=mac, flags=flags))
    (cs / "current_clocksource").write_text(clock + "\n")
    (cs / "available_clocksource").write_text("tsc kvm-clock acpi_pm \n")
    (root / "sys/devices/system/cpu/cpu0/tsc_freq_khz").write_text("2499998\n")
    return root


def test_this_machine_has_a_fingerprint() -> None:
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo here")
    fp = take()
    assert fp.cpu_model and fp.cpu_flags and fp.cpu_flags_list
    r = FingerprintSignal().sample()
    assert r.available and not r.anomalous and r.value == 0.0


def test_a_built_tree_parses(tmp_path: Path) -> None:
    fp = take(_tree(tmp_path))
    assert (
        fp.cpu_vendor == "GenuineIntel"
        and fp.cpu_signature == "6/85/7"
        and fp.microcode == "0x5003604"
    )
    assert fp.cpu_model is not None and "8259CL" in fp.cpu_model
    assert "avx2" in fp.cpu_flags_list and fp.clocksource == "tsc" and fp.tsc_khz == "2499998"
    assert (fp.gateway_ip, fp.gateway_iface, fp.gateway_mac) == (
        "192.168.0.1",
        "ens5",
        "06:aa:bb:cc:dd:01",
    )
    assert fp.clocksources == "acpi_pm kvm-clock tsc"
    again = HostFingerprint.from_json(json.loads(json.dumps(fp.to_json())))
    assert again == fp and again.cpu_flags_list == fp.cpu_flags_list


def test_changes_are_named_and_unknowns_are_not_changes(tmp_path: Path) -> None:
    a = take(_tree(tmp_path / "a"))
    b = take(_tree(tmp_path / "b", microcode="0x5003605", extra="avx512f", clock="kvm-clock"))
    assert set(compare(a, b)) == {"microcode", "cpu_flags", "clocksource"}
    assert compare(a, b)["clocksource"] == ("tsc", "kvm-clock")
    c = take(_tree(tmp_path / "c", flags="0x0", mac="00:00:00:00:00:00"))  # incomplete ARP entry
    assert c.gateway_mac is None and compare(a, c) == {}


def test_signal_fires_on_a_changed_host_and_rebaselines(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    sig = FingerprintSignal(root=root)
    assert not sig.sample().anomalous
    _tree(root, mac="06:aa:bb:cc:dd:02")
    r = sig.sample()
    assert r.anomalous and r.detail["changed"] == {
        "gateway_mac": ["06:aa:bb:cc:dd:01", "06:aa:bb:cc:dd:02"]
    }
    assert "gateway_mac" in r.reason
    sig.rebaseline()
    assert not sig.sample().anomalous


def test_unavailable_when_nothing_is_readable(tmp_path: Path) -> None:
    r = FingerprintSignal(root=tmp_path).sample()
    assert not r.available and "no host fingerprint" in r.reason


# -- real network namespaces -------------------------------------------------------------------

CLIENT = """
import json, socket, sys
from geoprobe.watch.signals.fingerprint import take, first_hops, arp_lookup
what = sys.argv[1]
if what == "poke":  # any packet towards the far side makes the kernel resolve the gateway
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("203.0.113.2", 9))
    import time; time.sleep(0.3)
elif what == "take":
    print(json.dumps(take().to_json()))
elif what == "hops":
    print(json.dumps(first_hops("203.0.113.2", 3, timeout=2)))
elif what == "arp":
    print(json.dumps(arp_lookup("198.51.100.1", "gpc0", timeout=2)))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """client --(198.51.100.0/24)-- router --(203.0.113.0/24)-- target, all created here."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = f"gp{os.getpid() % 100000}"
    ns = {"c": f"{tag}c", "r": f"{tag}r", "t": f"{tag}t"}
    try:
        for n in ns.values():
            _ip("netns", "add", n)
    except subprocess.CalledProcessError as exc:
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)
        pytest.skip(f"cannot create network namespaces: {exc.stderr.decode().strip()}")
    try:
        _ip(
            "link",
            "add",
            "gpc0",
            "netns",
            ns["c"],
            "type",
            "veth",
            "peer",
            "gpr0",
            "netns",
            ns["r"],
        )
        _ip(
            "link",
            "add",
            "gpr1",
            "netns",
            ns["r"],
            "type",
            "veth",
            "peer",
            "gpt0",
            "netns",
            ns["t"],
        )
        _ip("-n", ns["r"], "link", "set", "gpr0", "address", "02:00:00:00:0a:01")
        for n, dev, addr in (
            (ns["c"], "gpc0", "198.51.100.2/24"),
            (ns["r"], "gpr0", "198.51.100.1/24"),
            (ns["r"], "gpr1", "203.0.113.1/24"),
            (ns["t"], "gpt0", "203.0.113.2/24"),
        ):
            _ip("-n", n, "addr", "add", addr, "dev", dev)
            _ip("-n", n, "link", "set", dev, "up")
            _ip("-n", n, "link", "set", "lo", "up")
        _ip("-n", ns["c"], "route", "add", "default", "via", "198.51.100.1")
        _ip("-n", ns["t"], "route", "add", "default", "via", "203.0.113.1")
        subprocess.run(
            ["ip", "netns", "exec", ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        yield ns
    finally:
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)


def _in(ns: str, what: str) -> object:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, what],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout) if out.stdout.strip() else None


@pytest.mark.root
def test_gateway_mac_change_is_seen_for_real(namespaces: dict[str, str]) -> None:
    c, r = namespaces["c"], namespaces["r"]
    _in(c, "poke")
    before = HostFingerprint.from_json(_in(c, "take"))  # type: ignore[arg-type]
    assert (before.gateway_ip, before.gateway_iface, before.gateway_mac) == (
        "198.51.100.1",
        "gpc0",
        "02:00:00:00:0a:01",
    )
    _ip(
        "-n", r, "link", "set", "gpr0", "address", "02:00:00:00:0b:02"
    )  # a new router behind the same IP
    _ip("-n", c, "neigh", "flush", "dev", "gpc0")
    _in(c, "poke")
    after = HostFingerprint.from_json(_in(c, "take"))  # type: ignore[arg-type]
    assert compare(before, after) == {"gateway_mac": ("02:00:00:00:0a:01", "02:00:00:00:0b:02")}


@pytest.mark.root
def test_active_arp_and_first_hops_inside_namespaces(namespaces: dict[str, str]) -> None:
    c = namespaces["c"]
    assert _in(c, "arp") == "02:00:00:00:0a:01"
    assert _in(c, "hops") == ["198.51.100.1", "203.0.113.2"]


def test_a_silent_hop_is_not_a_route_change() -> None:
    a = HostFingerprint(hops="203.0.113.2:198.51.100.1,203.0.113.2")
    assert compare(a, HostFingerprint(hops="203.0.113.2:*,203.0.113.2")) == {}
    moved = HostFingerprint(hops="203.0.113.2:198.51.100.9,203.0.113.2")
    assert set(compare(a, moved)) == {"hops"}
