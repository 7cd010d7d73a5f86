"""Platform listeners: rtnetlink and uevent bytes from this kernel, balloon hints, clock set."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.watch.signals.base import Reading
from geoprobe.watch.signals.netlink import (
    IFLA_EVENT,
    NLMSG_HDR,
    RTATTR,
    RTM_NEWLINK,
    NetlinkError,
    dump_request,
    link_socket,
    parse_link,
    parse_messages,
    parse_uevent,
)
from geoprobe.watch.signals.platform import (
    BalloonHintSignal,
    BalloonState,
    ClockSetSignal,
    LinkEventSignal,
    LinkTracker,
    VmGenIdSignal,
    config_interrupts,
    hinting_balloons,
    unexplained_config_interrupts,
)

# -- rtnetlink, from this kernel ------------------------------------------------------------------


def _real_dump() -> list[bytes]:
    """RTM_NEWLINK messages for this namespace's links, as the kernel sends them (no root)."""
    s = link_socket(timeout=1.0)
    try:
        s.send(dump_request(7))
        out: list[bytes] = []
        while True:
            data = s.recv(65536)
            msgs = parse_messages(data)
            out.append(data)
            if any(m.type == 3 for m in msgs):  # NLMSG_DONE
                return out
    finally:
        s.close()


def test_a_real_link_dump_parses_to_named_links() -> None:
    links = [
        parse_link(m.payload)
        for d in _real_dump()
        for m in parse_messages(d)
        if m.type == RTM_NEWLINK
    ]
    lo = [link for link in links if link.name == "lo"]
    assert lo and lo[0].index > 0 and lo[0].address == bytes(6) and lo[0].event is None


CAPTURE = """
import subprocess, sys, time
from geoprobe.watch.signals.netlink import link_socket
s = link_socket(timeout=0.3)
for c in sys.argv[1:]:
    subprocess.run(c, shell=True, check=True, capture_output=True)
end = time.monotonic() + 1.0
while time.monotonic() < end:
    try:
        print(s.recv(65536).hex())
    except TimeoutError:
        pass
"""

MAC = "02:00:00:00:00:01"
BRIDGE_UNPLUG = [
    f"ip link add br0 address {MAC} type bridge",
    "ip tuntap add ta mode tap",
    "ip tuntap add tb mode tap",
    f"ip link set ta address {MAC}",
    f"ip link set tb address {MAC}",
    "ip link set ta master br0",
    "ip link set tb master br0",
    "ip link del ta",
]


def _capture(commands: list[str]) -> list[bytes]:
    """Link notifications the kernel sends while ``commands`` run in a new network namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to build links in a private network namespace")
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CAPTURE, *commands],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build the links here: {proc.stderr.strip()[-200:]}")
    return [bytes.fromhex(line) for line in proc.stdout.split()]


def test_a_bridge_port_leaving_is_no_failover_unplug() -> None:
    """Bridge ports share the bridge's MAC like failover slaves, but a bridge has a link kind."""
    sig = LinkEventSignal()
    for d in _capture(BRIDGE_UNPLUG):
        sig.feed(d)
    assert sig.events() == []
    assert {link.name for link in sig.tracker.links.values()} >= {"br0", "tb"}
    assert "ta" not in {link.name for link in sig.tracker.links.values()}


def test_the_same_unplug_under_a_kindless_master_is_a_failover_unplug() -> None:
    """net_failover's master has no rtnl link kind: the same real messages, with the master's
    kind gone, are the primary NIC leaving at migration setup."""
    datagrams = _capture(BRIDGE_UNPLUG)
    sig = LinkEventSignal()
    real_feed = sig.tracker.feed

    def kindless(typ: int, link: object) -> object:
        out = real_feed(typ, link)  # type: ignore[arg-type]
        for idx, known in list(sig.tracker.links.items()):
            if known.name == "br0":
                sig.tracker.links[idx] = type(known)(**{**_fields(known), "kind": ""})
        return out

    sig.tracker.feed = kindless  # type: ignore[method-assign]
    for d in datagrams:
        sig.feed(d)
    (ev,) = sig.events()
    assert ev.kind == "failover_unplug" and ev.precopy
    assert "ta left failover master br0 (standby tb stays)" in ev.detail
    r = sig_reading(sig)
    assert r.anomalous and r.precopy and r.decisive


def _fields(link: object) -> dict[str, object]:
    return {k: getattr(link, k) for k in link.__slots__}  # type: ignore[attr-defined]


def sig_reading(sig: LinkEventSignal) -> Reading:
    sig._thread = object()  # type: ignore[assignment]  # reading only
    try:
        return sig.sample()
    finally:
        sig._thread = None


def _with_event(datagram: bytes, event: int) -> bytes:
    """A real RTM_NEWLINK with an IFLA_EVENT attribute appended, as rtnetlink_event() sends it."""
    (msg,) = [m for m in parse_messages(datagram) if m.type == RTM_NEWLINK][:1]
    attr = RTATTR.pack(RTATTR.size + 4, IFLA_EVENT) + struct.pack("=I", event)
    payload = msg.payload + attr
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), RTM_NEWLINK, 0, 0, 0) + payload


def test_notify_peers_on_a_plain_nic_is_an_announce_not_precopy() -> None:
    lo = next(
        d
        for d in _real_dump()
        if any(
            m.type == RTM_NEWLINK and parse_link(m.payload).name == "lo" for m in parse_messages(d)
        )
    )
    sig = LinkEventSignal()
    sig.feed(_with_event(lo, 2))  # IFLA_EVENT_FEATURES: not a migration
    assert sig.events() == []
    sig.feed(_with_event(lo, 4))  # IFLA_EVENT_NOTIFY_PEERS
    (ev,) = sig.events()
    assert ev.kind == "announce" and not ev.precopy and "lo: peers notified" in ev.detail
    assert sig.changed.is_set()


def test_notify_peers_on_a_bond_is_its_own_failover_not_a_migration() -> None:
    t = LinkTracker()
    link = parse_link(parse_messages(_with_event(_real_dump()[0], 4))[0].payload)
    t.links[link.index] = type(link)(**{**_fields(link), "event": None, "kind": "bond"})
    assert t.feed(RTM_NEWLINK, link) is None


def test_link_socket_sees_nothing_without_a_change() -> None:
    sig = LinkEventSignal()
    sig.start()
    try:
        time.sleep(0.6)
        r = sig.sample()
        assert r.available and not r.anomalous and r.value == 0.0
        assert sig.tracker.links  # the initial dump arrived
    finally:
        sig.stop()


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_netlink_parsers_only_raise_netlink_error(data: bytes) -> None:
    try:
        for m in parse_messages(data):
            parse_link(m.payload)
    except NetlinkError:
        pass
    sig = LinkEventSignal()
    sig.feed(data)  # never raises


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_link_payload_parser_only_raises_netlink_error(payload: bytes) -> None:
    try:
        parse_link(payload)
    except NetlinkError:
        pass


# -- VM generation ID ---------------------------------------------------------------------------

VMGENID = b"change@/devices/platform/VMGENCTR:00\0ACTION=change\0DEVPATH=/devices/platform/VMGENCTR:00\0SUBSYSTEM=platform\0NEW_VMGENID=1\0SEQNUM=4242\0"  # noqa: E501


def test_vmgenid_uevent_is_recorded() -> None:
    sig = VmGenIdSignal()
    sig.feed(VMGENID)
    (ev,) = sig.events()
    assert ev.kind == "vmgenid" and not ev.precopy and "VMGENCTR:00" in ev.detail


@pytest.mark.parametrize(
    "data",
    [
        VMGENID.replace(b"NEW_VMGENID=1", b"NEW_VMGENID=0"),
        VMGENID.replace(b"change@", b"add@"),
        VMGENID + b"SYNTH_UUID=0\0",  # written to a sysfs uevent file, not from the driver
        VMGENID.replace(b"VMGENCTR:00", b"virtual/net/eth0"),
        b"libudev\0" + VMGENID,
        b"",
        b"no header",
    ],
)
def test_other_uevents_are_not_a_generation_change(data: bytes) -> None:
    sig = VmGenIdSignal()
    sig.feed(data)
    assert sig.events() == []


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_uevent_parser_only_raises_netlink_error(data: bytes) -> None:
    try:
        ev = parse_uevent(data)
        assert isinstance(ev.env, dict)
    except NetlinkError:
        pass


def test_vmgenid_is_unavailable_without_the_device(tmp_path: Path) -> None:
    sig = VmGenIdSignal(sys_root=tmp_path)
    sig.start()
    r = sig.sample()
    assert not r.available and "vmgenid" in r.reason


def test_a_real_kernel_uevent_parses() -> None:
    """A uevent from this kernel (a tap device created in a private network namespace)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    code = (
        "import sys\n"
        "from geoprobe.watch.signals.netlink import uevent_socket\n"
        "s = uevent_socket(timeout=2.0)\n"
        "import subprocess\n"
        "subprocess.run('ip tuntap add tq mode tap', shell=True, check=True)\n"
        "print(s.recv(65536).hex())\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"no uevent here: {proc.stderr.strip()[-200:]}")
    ev = parse_uevent(bytes.fromhex(proc.stdout.strip()))
    assert ev.action == "add" and "tq" in ev.devpath and ev.env.get("INTERFACE") == "tq"


# -- virtio-balloon free-page hints ---------------------------------------------------------------

INTERRUPTS = """           CPU0       CPU1
 24:          0          0   PCI-MSI 65536-edge      virtio0-config
 25:        117         42   PCI-MSI 65537-edge      virtio0-input.0
 28:          3          4   PCI-MSI 98304-edge      virtio3-config
 29:          9          0   PCI-MSI 98305-edge      virtio3-inflate
"""


def test_config_interrupt_lines_are_summed_over_cpus() -> None:
    assert config_interrupts(INTERRUPTS, "virtio3") == 7
    assert config_interrupts(INTERRUPTS, "virtio0") == 0
    assert config_interrupts(INTERRUPTS, "virtio9") is None


@given(st.text(max_size=400), st.sampled_from(["virtio0", "virtio3"]))
@settings(max_examples=300, deadline=None)
def test_interrupts_parser_never_raises(text: str, dev: str) -> None:
    n = config_interrupts(text, dev)
    assert n is None or n >= 0


def test_only_config_interrupts_without_a_resize_are_hints() -> None:
    a = BalloonState(7, 10, 0, 4_000_000)
    b = BalloonState(9, 10, 0, 4_000_000)
    assert unexplained_config_interrupts(a, b, b) == 2
    inflated = BalloonState(9, 12, 0, 3_999_992)  # the host asked for a smaller balloon
    assert unexplained_config_interrupts(a, b, inflated) == 0
    assert unexplained_config_interrupts(a, a, a) == 0


def _fake_balloon(root: Path, features: str) -> tuple[Path, Path]:
    sys_root, proc = root / "sys", root / "proc"
    drv = sys_root / "bus/virtio/drivers/virtio_balloon"
    dev = sys_root / "bus/virtio/devices/virtio3"
    drv.mkdir(parents=True)
    dev.mkdir(parents=True)
    (drv / "virtio3").symlink_to(dev)
    (dev / "features").write_text(features + "\n")
    proc.mkdir()
    (proc / "interrupts").write_text(INTERRUPTS)
    (proc / "vmstat").write_text("balloon_inflate 10\nballoon_deflate 0\n")
    (proc / "meminfo").write_text("MemTotal:        4000000 kB\n")
    return sys_root, proc


def test_balloon_without_free_page_hinting_is_unavailable(tmp_path: Path) -> None:
    sys_root, proc = _fake_balloon(tmp_path, "0110000")  # bit 3 clear
    assert hinting_balloons(sys_root) == []
    sig = BalloonHintSignal(sys_root=sys_root, proc_root=proc)
    sig.start()
    assert not sig.sample().available


def test_balloon_hint_rounds_are_precopy(tmp_path: Path) -> None:
    sys_root, proc = _fake_balloon(tmp_path, "0111000")
    sig = BalloonHintSignal(sys_root=sys_root, proc_root=proc, period_s=0.05)
    sig.start()
    try:
        time.sleep(0.3)
        assert not sig.sample().anomalous
        (proc / "interrupts").write_text(INTERRUPTS.replace(" 3          4 ", " 5          4 "))
        end = time.monotonic() + 5
        while not sig.events() and time.monotonic() < end:
            time.sleep(0.05)
        r = sig.sample()
        assert r.anomalous and r.precopy and "free-page hinting" in r.reason
    finally:
        sig.stop()


# -- clock set ------------------------------------------------------------------------------------


class FakeTimer:
    """The timerfd boundary: reports one clock set, then nothing."""

    def __init__(self) -> None:
        self.armed = 0
        self.sets = [True]

    def arm(self) -> None:
        self.armed += 1

    def wait(self, timeout: float) -> bool:
        if self.sets:
            return self.sets.pop()
        time.sleep(min(timeout, 0.05))
        return False

    def close(self) -> None:
        pass


def test_clock_set_is_recorded_rearmed_and_never_decisive() -> None:
    timer = FakeTimer()
    sig = ClockSetSignal(timer=lambda: timer)
    sig.start()
    try:
        end = time.monotonic() + 5
        while not sig.events() and time.monotonic() < end:
            time.sleep(0.02)
        r = sig.sample()
        assert r.anomalous and not r.decisive and not r.precopy
        assert timer.armed == 2  # armed, then re-armed after the set
    finally:
        sig.stop()


def test_a_real_timerfd_arms_and_stays_quiet() -> None:
    from geoprobe.watch.signals.platform import TimerFd

    t = TimerFd()
    try:
        t.arm()
        assert t.wait(0.05) is False
    finally:
        t.close()


def test_timerfd_errors_other_than_canceled_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoprobe.watch.signals import platform

    t = platform.TimerFd()
    try:
        t.arm()
        monkeypatch.setattr(platform.select, "select", lambda r, w, x, to: (r, [], []))

        def canceled(fd: int, n: int) -> bytes:
            raise OSError(errno.ECANCELED, "canceled")

        monkeypatch.setattr(platform.os, "read", canceled)
        assert t.wait(0.01) is True

        def bad(fd: int, n: int) -> bytes:
            raise OSError(errno.EBADF, "bad")

        monkeypatch.setattr(platform.os, "read", bad)
        with pytest.raises(OSError):
            t.wait(0.01)
    finally:
        monkeypatch.undo()
        t.close()


def test_a_resize_request_is_not_a_hint_and_a_hint_is_heard_within_a_second(
    tmp_path: Path,
) -> None:
    sys_root, proc = _fake_balloon(tmp_path, "0111000")
    sig = BalloonHintSignal(sys_root=sys_root, proc_root=proc)  # the defaults
    sig.start()
    try:
        time.sleep(0.3)
        # The host asks for a bigger balloon: a config interrupt, then the driver inflates.
        (proc / "interrupts").write_text(INTERRUPTS.replace(" 3          4 ", " 4          4 "))
        time.sleep(0.1)
        (proc / "vmstat").write_text("balloon_inflate 74\nballoon_deflate 0\n")
        time.sleep(1.0)
        assert sig.events() == []
        hinted = time.monotonic()
        (proc / "interrupts").write_text(INTERRUPTS.replace(" 3          4 ", " 6          4 "))
        while not sig.events() and time.monotonic() - hinted < 5:
            time.sleep(0.02)
        assert sig.events() and time.monotonic() - hinted < 1.0
        assert "2 config interrupts" in sig.events()[0].detail
    finally:
        sig.stop()
