"""Listeners for what the platform itself tells the guest about a migration.

Each is a background signal (``start()``/``stop()``) that keeps the events it saw for ``hold_s``
and reports them as one Reading. None needs root.

* ``link_events`` (rtnetlink): a failover NIC's primary (the VF) removed from its failover master,
  which QEMU asks for at migration *setup*, before any RAM moves (``precopy``); and
  ``IFLA_EVENT_NOTIFY_PEERS`` on a plain NIC, which virtio-net raises when the host asks it to
  announce itself *after* the switchover (QEMU's self-announce).
* ``vmgenid``: the kernel's ``NEW_VMGENID=1`` uevent when the VM generation ID changes: the
  destination QEMU ran with ``-device vmgenid,guid=auto`` (after the switchover; libvirt keeps the
  ID across live migration, so there it stays silent).
* ``balloon_hint``: config interrupts of a virtio balloon that negotiated free-page hinting, not
  followed by any inflate or deflate: QEMU starts a hint round at every dirty sync (``precopy``).
* ``clock_set``: a ``timerfd`` with ``TFD_TIMER_CANCEL_ON_SET`` wakes when CLOCK_REALTIME is set
  (chrony stepping the clock back after a pause, an agent's ``guest-set-time``). Not decisive:
  an administrator or NTP at boot does the same. It tells the clock signal why a step vanished.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from geoprobe.watch.signals.base import Reading
from geoprobe.watch.signals.netlink import (
    IFLA_EVENT_NAMES,
    IFLA_EVENT_NOTIFY_PEERS,
    NLMSG_DONE,
    RTM_DELLINK,
    RTM_NEWLINK,
    Link,
    NetlinkError,
    dump_request,
    link_socket,
    parse_link,
    parse_messages,
    parse_uevent,
    uevent_socket,
)


@dataclass(frozen=True, slots=True)
class PlatformEvent:
    time: float  # wall clock, for the Reading
    mono: float  # monotonic, for the hold window
    kind: str
    detail: str
    precopy: bool


class EventListener:
    """What every listener shares: a thread, the events kept for ``hold_s``, one Reading."""

    decisive = True

    def __init__(self, name: str, *, hold_s: float = 300.0) -> None:
        self.name = name
        self.hold_s = hold_s
        self._events: deque[PlatformEvent] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error = ""
        self.changed = threading.Event()  # set on every event: a daemon may measure at once

    def _open(self) -> str:
        """Open what the loop reads; return why it cannot be, or ""."""
        return ""

    def _loop(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._error = self._open()
        if self._error:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except OSError as exc:
            if not self._stop.is_set():
                self._error = f"listener stopped: {exc}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def reset(self) -> None:
        with self._lock:
            self._events.clear()

    def record(self, kind: str, detail: str, *, precopy: bool) -> None:
        with self._lock:
            self._events.append(PlatformEvent(time.time(), time.monotonic(), kind, detail, precopy))
        self.changed.set()

    def events(self) -> list[PlatformEvent]:
        now = time.monotonic()
        with self._lock:
            return [e for e in self._events if now - e.mono <= self.hold_s]

    def sample(self) -> Reading:
        if self._error:
            return Reading.unavailable(self.name, self._error, decisive=self.decisive)
        if self._thread is None:
            return Reading.unavailable(self.name, "not started", decisive=self.decisive)
        recent = self.events()
        now = time.monotonic()
        return Reading(
            self.name,
            value=float(len(recent)),
            baseline=0.0,
            score=float(len(recent)),
            anomalous=bool(recent),
            unit="events",
            decisive=self.decisive,
            reason="; ".join(e.detail for e in recent[-3:]),
            detail={"events": [{"kind": e.kind, "ago_s": round(now - e.mono, 2)} for e in recent]},
            precopy=any(e.precopy for e in recent),
        )


# -- rtnetlink: failover unplug and self-announce -------------------------------------------------


class SocketListener(EventListener):
    """A listener fed datagrams from one netlink socket that ``_open`` sets (timeouts on it let
    the loop see ``stop``)."""

    _sock: socket.socket | None = None

    def feed(self, datagram: bytes) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            self.feed(data)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class LinkTracker:
    """Pure: fed link messages, says which ones are migration events."""

    BONDS = ("bond", "team")

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self.reported: set[int] = set()  # one event per unplugged link

    def feed(self, typ: int, link: Link) -> tuple[str, str] | None:
        """(kind, description) when this message is a migration event, else None.

        Only the link's own messages count (``family`` AF_UNSPEC): the bridge module's AF_BRIDGE
        copies carry no link kind.
        """
        if link.family != socket.AF_UNSPEC:
            return None
        old = self.links.get(link.index)
        if typ == RTM_NEWLINK:
            if old is not None and not link.kind and old.kind:
                link = replace(link, kind=old.kind)
            self.links[link.index] = link
            if link.master is not None:
                self.reported.discard(link.index)  # plugged back: the next unplug counts again
            if link.event == IFLA_EVENT_NOTIFY_PEERS and link.kind not in self.BONDS:
                return "announce", f"{link.name or link.index}: peers notified (self-announce)"
            if old is not None and old.master is not None and link.master is None:
                return self._left_failover(link, old.master)  # released before it goes
            return None
        if typ != RTM_DELLINK:
            return None
        self.links.pop(link.index, None)
        master = link.master if link.master is not None else (old.master if old else None)
        if master is None:
            return None
        return self._left_failover(link if link.address else (old or link), master)

    def _left_failover(self, link: Link, master_idx: int) -> tuple[str, str] | None:
        """A failover master (no link kind, unlike bond/team/bridge) lost a slave with its MAC
        while another slave with that MAC (the standby) stays."""
        master = self.links.get(master_idx)
        if link.index in self.reported:
            return None
        if master is None or master.kind or not link.address or master.address != link.address:
            return None
        standby = [
            s
            for s in self.links.values()
            if s.master == master.index and s.address == link.address and s.index != link.index
        ]
        if not standby:
            return None
        self.reported.add(link.index)
        why = (
            f"{link.name or link.index} left failover master {master.name} "
            f"(standby {standby[0].name} stays): primary NIC unplugged for a migration"
        )
        return "failover_unplug", why


class LinkEventSignal(SocketListener):
    """rtnetlink link notifications (see the module docstring)."""

    def __init__(self, name: str = "link_events", *, hold_s: float = 300.0) -> None:
        super().__init__(name, hold_s=hold_s)
        self.tracker = LinkTracker()

    def _open(self) -> str:
        try:
            self._sock = link_socket()
            self._sock.send(dump_request())
        except OSError as exc:
            return f"cannot open rtnetlink: {exc}"
        return ""

    def feed(self, datagram: bytes) -> None:
        try:
            messages = parse_messages(datagram)
        except NetlinkError:
            return
        for m in messages:
            if m.type == NLMSG_DONE or m.type not in (RTM_NEWLINK, RTM_DELLINK):
                continue
            try:
                link = parse_link(m.payload)
            except NetlinkError:
                continue
            if link.event is not None and link.event not in IFLA_EVENT_NAMES:
                continue
            hit = self.tracker.feed(m.type, link)
            if hit is not None:
                self.record(hit[0], hit[1], precopy=hit[0] == "failover_unplug")


# -- VM generation ID -----------------------------------------------------------------------------


def vmgenid_present(sys_root: Path = Path("/sys")) -> bool:
    """A vmgenid driver is bound to a device (ACPI ``VMGENCTR``/``QEMUVGID``)."""
    for bus in ("platform", "acpi"):
        d = sys_root / "bus" / bus / "drivers" / "vmgenid"
        try:
            if any(p.is_symlink() for p in d.iterdir()):
                return True
        except OSError:
            continue
    return False


class VmGenIdSignal(SocketListener):
    """The kernel's uevent for a changed VM generation ID."""

    def __init__(
        self, name: str = "vmgenid", *, hold_s: float = 300.0, sys_root: Path = Path("/sys")
    ) -> None:
        super().__init__(name, hold_s=hold_s)
        self.sys_root = sys_root

    def _open(self) -> str:
        if not vmgenid_present(self.sys_root):
            return "no VM generation ID device (QEMU: -device vmgenid)"
        try:
            self._sock = uevent_socket()
        except OSError as exc:
            return f"cannot open the uevent socket: {exc}"
        return ""

    def feed(self, datagram: bytes) -> None:
        try:
            ev = parse_uevent(datagram)
        except NetlinkError:
            return
        # A uevent written to a sysfs ``uevent`` file (root) carries SYNTH_UUID: not the driver's.
        device = ev.devpath.lower()
        if (
            ev.action == "change"
            and ev.env.get("NEW_VMGENID") == "1"
            and "SYNTH_UUID" not in ev.env
            and ("vmgen" in device or "qemuvgid" in device)
        ):
            self.record(
                "vmgenid",
                f"VM generation ID changed ({ev.devpath}): resumed as a new VM",
                precopy=False,
            )


# -- virtio-balloon free-page hinting -------------------------------------------------------------

FREE_PAGE_HINT_BIT = 3  # VIRTIO_BALLOON_F_FREE_PAGE_HINT


def hinting_balloons(sys_root: Path = Path("/sys")) -> list[str]:
    """virtio device names (``virtio3``) of balloons that negotiated free-page hinting."""
    out = []
    drv = sys_root / "bus" / "virtio" / "drivers" / "virtio_balloon"
    try:
        entries = sorted(p.name for p in drv.iterdir() if p.name.startswith("virtio"))
    except OSError:
        return []
    for dev in entries:
        try:
            bits = (sys_root / "bus" / "virtio" / "devices" / dev / "features").read_text().strip()
        except OSError:
            continue
        if len(bits) > FREE_PAGE_HINT_BIT and bits[FREE_PAGE_HINT_BIT] == "1":
            out.append(dev)
    return out


def config_interrupts(text: str, device: str) -> int | None:
    """Total of the ``<device>-config`` line of /proc/interrupts (MSI-X), None without one."""
    label = f"{device}-config"
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[-1] != label or not parts[0].endswith(":"):
            continue
        total = 0
        for p in parts[1:]:
            if not p.isdigit():
                break
            total += int(p)
        return total
    return None


@dataclass(frozen=True, slots=True)
class BalloonState:
    interrupts: int
    inflate: int  # /proc/vmstat balloon_inflate
    deflate: int
    mem_total: int  # /proc/meminfo, kB


def unexplained_config_interrupts(
    before: BalloonState, during: BalloonState, after: BalloonState
) -> int:
    """Config interrupts between ``before`` and ``during`` with no balloon resize from
    ``before`` to ``after`` (the driver may act one poll late): free-page hint rounds."""
    rose = during.interrupts - before.interrupts
    if rose <= 0:
        return 0
    resized = (
        after.inflate != before.inflate
        or after.deflate != before.deflate
        or after.mem_total != before.mem_total
    )
    return 0 if resized else rose


def _counters(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.replace(":", " ").split()
            if len(parts) >= 2 and parts[0] in keys and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


class BalloonHintSignal(EventListener):
    """Free-page-hint config interrupts of the virtio balloon.

    Polls /proc/interrupts every ``period_s`` (0.25 s: a pre-copy of an idle guest can last under
    two seconds) and reports a rise once a poll at least ``settle_s`` later shows no balloon
    resize: a resize request is a config interrupt too, and the driver starts inflating or
    deflating within milliseconds of it.
    """

    def __init__(
        self,
        name: str = "balloon_hint",
        *,
        hold_s: float = 300.0,
        period_s: float = 0.25,
        settle_s: float = 0.5,
        sys_root: Path = Path("/sys"),
        proc_root: Path = Path("/proc"),
    ) -> None:
        super().__init__(name, hold_s=hold_s)
        self.period_s = period_s
        self.settle_s = settle_s
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.device = ""

    def read_state(self) -> BalloonState | None:
        try:
            text = (self.proc_root / "interrupts").read_text()
        except OSError:
            return None
        n = config_interrupts(text, self.device)
        if n is None:
            return None
        vm = _counters(self.proc_root / "vmstat", ("balloon_inflate", "balloon_deflate"))
        mem = _counters(self.proc_root / "meminfo", ("MemTotal",))
        return BalloonState(
            n, vm.get("balloon_inflate", 0), vm.get("balloon_deflate", 0), mem.get("MemTotal", 0)
        )

    def _open(self) -> str:
        devices = hinting_balloons(self.sys_root)
        if not devices:
            return "no virtio balloon with free-page hinting (QEMU: free-page-hint=on)"
        self.device = devices[0]
        if self.read_state() is None:
            return f"no {self.device}-config line in /proc/interrupts (no MSI-X)"
        return ""

    def _loop(self) -> None:
        last: BalloonState | None = None
        rises: deque[tuple[float, BalloonState, BalloonState]] = deque()  # (when, before, during)
        while not self._stop.wait(0 if last is None else self.period_s):
            st = self.read_state()
            if st is None:
                continue
            now = time.monotonic()
            if last is not None and st.interrupts > last.interrupts:
                rises.append((now, last, st))
            last = st
            while rises and now - rises[0][0] >= self.settle_s:
                _, before, during = rises.popleft()
                n = unexplained_config_interrupts(before, during, st)
                if n:
                    self.record(
                        "free_page_hint",
                        f"{n} config interrupts of {self.device} without a balloon resize: "
                        "free-page hinting at a dirty sync",
                        precopy=True,
                    )


# -- clock set: timerfd with TFD_TIMER_CANCEL_ON_SET -----------------------------------------------

CLOCK_REALTIME = 0
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class ClockTimer(Protocol):
    """The syscall boundary: ``arm()`` then ``wait(timeout)`` -> True when the clock was set."""

    def arm(self) -> None: ...

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class TimerFd:
    """A CLOCK_REALTIME timerfd that expires only when the clock is set (read fails ECANCELED)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        if name is None:
            raise OSError(errno.ENOSYS, "no C library")
        self._libc = ctypes.CDLL(name, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd = int(fd)

    def arm(self) -> None:
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(2**62, 0))  # never expires by itself
        flags = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
        if self._libc.timerfd_settime(self.fd, flags, ctypes.byref(spec), None) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            os.read(self.fd, 8)
        except OSError as exc:
            if exc.errno == errno.ECANCELED:
                return True
            raise
        return False

    def close(self) -> None:
        os.close(self.fd)


class ClockSetSignal(EventListener):
    """CLOCK_REALTIME was set (see the module docstring); not decisive."""

    decisive = False

    def __init__(
        self,
        name: str = "clock_set",
        *,
        hold_s: float = 300.0,
        timer: Callable[[], ClockTimer] = TimerFd,
    ) -> None:
        super().__init__(name, hold_s=hold_s)
        self._factory = timer
        self._timer: ClockTimer | None = None

    def _open(self) -> str:
        try:
            self._timer = self._factory()
            self._timer.arm()
        except OSError as exc:
            return f"cannot arm a timerfd: {exc}"
        return ""

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _loop(self) -> None:
        assert self._timer is not None
        while not self._stop.is_set():
            if self._timer.wait(0.5):
                self.record("clock_set", "CLOCK_REALTIME was set", precopy=False)
                self._timer.arm()


LISTENERS: Mapping[str, Callable[[], EventListener]] = {
    "link_events": LinkEventSignal,
    "vmgenid": VmGenIdSignal,
    "balloon_hint": BalloonHintSignal,
    "clock_set": ClockSetSignal,
}
