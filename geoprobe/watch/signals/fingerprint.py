"""Host fingerprint: what the guest can see of the machine under it, and which parts changed.

Fields and what a change means:

* ``cpu_vendor``, ``cpu_model``, ``cpu_signature`` (family/model/stepping), ``cpu_flags`` (a digest
  of the flag set; ``cpu_flags_list`` keeps them), ``microcode`` -- from /proc/cpuinfo. The guest's
  CPU is virtual and fixed when the VM starts, so these change across a reboot or cold migration
  (or a late microcode load), rarely across a live one. A change is strong evidence of a new host.
* ``clocksource`` (current) and ``clocksources`` (available) -- from sysfs. A guest that finds its
  TSC unreliable after a move switches clocksource (``tsc`` -> ``kvm-clock``/``hpet``).
* ``tsc_khz`` -- sysfs ``tsc_freq_khz`` where the kernel exposes it, else the kernel log's
  calibration line (readable when ``dmesg_restrict`` allows). Fixed at boot, like the CPU.
* ``gateway_ip``/``gateway_iface``/``gateway_mac`` -- /proc/net/route and /proc/net/arp, read
  passively. An active ARP request (scapy) is sent only when ``active_arp=True``. Many clouds
  answer ARP with one virtual MAC everywhere, so an unchanged MAC proves little; a changed one
  means a new L2 neighbourhood.
* ``hops`` -- the first routers towards configured targets (UDP with a small TTL and
  ``IP_RECVERR``, no raw socket), only when targets are given.

Unknown fields (None) never count as changes: a platform that hides a field degrades the
fingerprint, it does not fire it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import select
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geoprobe.watch.signals.base import Reading

STRONG_FIELDS = (
    "cpu_vendor",
    "cpu_model",
    "cpu_signature",
    "cpu_flags",
    "microcode",
    "tsc_khz",
    "clocksource",
    "gateway_mac",
    "hops",
)


@dataclass(frozen=True, slots=True)
class HostFingerprint:
    cpu_vendor: str | None = None
    cpu_model: str | None = None
    cpu_signature: str | None = None
    cpu_flags: str | None = None  # sha256 of the sorted flag set, short
    microcode: str | None = None
    clocksource: str | None = None
    clocksources: str | None = None
    tsc_khz: str | None = None
    gateway_ip: str | None = None
    gateway_iface: str | None = None
    gateway_mac: str | None = None
    hops: str | None = None  # "target:hop1,hop2;..." when targets are configured
    cpu_flags_list: tuple[str, ...] = field(default=(), compare=False)
    taken: float = field(default_factory=time.time, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_flags_list"] = list(self.cpu_flags_list)
        return d

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HostFingerprint:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in raw.items() if k in names}
        kw["cpu_flags_list"] = tuple(raw.get("cpu_flags_list", ()))
        return cls(**kw)


def compare(old: HostFingerprint, new: HostFingerprint) -> dict[str, tuple[str | None, str | None]]:
    """Fields known in both fingerprints whose values differ: name -> (old, new)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for f in fields(HostFingerprint):
        if not f.compare or f.name == "taken":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a is None or b is None or a == b:
            continue
        if f.name == "hops" and _same_hops(a, b):
            continue
        out[f.name] = (a, b)
    return out


def _same_hops(a: str, b: str) -> bool:
    """Routes agree when every hop both saw is the same: a silent hop (``*``) is no change."""

    def parse(s: str) -> dict[str, list[str]]:
        return {t: h.split(",") for t, _, h in (part.rpartition(":") for part in s.split(";"))}

    pa, pb = parse(a), parse(b)
    for target in pa.keys() & pb.keys():
        for x, y in zip(pa[target], pb[target]):
            if "*" not in (x, y) and x != y:
                return False
    return True


# -- readers (each takes the root of the filesystem, so tests can build one) ------------------


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_cpuinfo(root: Path) -> dict[str, Any]:
    text = _read(root, "proc/cpuinfo")
    if not text:
        return {}
    first = text.split("\n\n", 1)[0]
    kv: dict[str, str] = {}
    for line in first.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            kv[k.strip()] = v.strip()
    flags = sorted(set((kv.get("flags") or kv.get("Features") or "").split()))
    sig = None
    if "cpu family" in kv and "model" in kv:
        sig = f"{kv['cpu family']}/{kv['model']}/{kv.get('stepping', '?')}"
    return {
        "cpu_vendor": kv.get("vendor_id") or kv.get("CPU implementer"),
        "cpu_model": kv.get("model name") or kv.get("cpu model") or kv.get("CPU part"),
        "cpu_signature": sig,
        "microcode": kv.get("microcode"),
        "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16] if flags else None,
        "cpu_flags_list": tuple(flags),
    }


def read_clocksource(root: Path) -> dict[str, str | None]:
    base = "sys/devices/system/clocksource/clocksource0/"
    cur = _read(root, base + "current_clocksource")
    avail = _read(root, base + "available_clocksource")
    return {
        "clocksource": cur.strip() if cur else None,
        "clocksources": " ".join(sorted(avail.split())) if avail else None,
    }


_TSC_LOG = re.compile(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([0-9.]+) MHz")


def _kernel_log() -> str:
    """The kernel log via /dev/kmsg, non-blocking; empty when not permitted."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    chunks: list[str] = []
    try:
        while len(chunks) < 20_000:
            try:
                rec = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten record: keep going
                    continue
                break
            if not rec:
                break
            chunks.append(rec.decode("utf-8", "replace"))
    finally:
        os.close(fd)
    return "".join(chunks)


def read_tsc_khz(root: Path, kernel_log: bool = True) -> str | None:
    v = _read(root, "sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if v and v.strip().isdigit():
        return v.strip()
    if kernel_log and root == Path("/"):
        found = _TSC_LOG.findall(_kernel_log())
        if found:
            return str(round(float(found[-1]) * 1000))  # the refined calibration comes last
    return None


def read_gateway(root: Path) -> dict[str, str | None]:
    """Default IPv4 gateway and its MAC from the routing table and the ARP cache (no packets)."""
    out: dict[str, str | None] = {"gateway_ip": None, "gateway_iface": None, "gateway_mac": None}
    route = _read(root, "proc/net/route")
    if not route:
        return out
    best: tuple[int, str, str] | None = None
    for line in route.splitlines()[1:]:
        p = line.split()
        if len(p) < 8 or p[1] != "00000000" or p[7] != "00000000":
            continue
        try:
            flags, metric = int(p[3], 16), int(p[6])
            gw = str(ipaddress.IPv4Address(struct.pack("<I", int(p[2], 16))))
        except ValueError:
            continue
        if flags & 0x2 and (best is None or metric < best[0]):  # RTF_GATEWAY
            best = (metric, gw, p[0])
    if best is None:
        return out
    out["gateway_ip"], out["gateway_iface"] = best[1], best[2]
    arp = _read(root, "proc/net/arp") or ""
    for line in arp.splitlines()[1:]:
        p = line.split()
        if len(p) >= 6 and p[0] == best[1] and p[5] == best[2] and int(p[2], 16) & 0x2:  # ATF_COM
            out["gateway_mac"] = p[3].lower()
    return out


def arp_lookup(ip: str, iface: str, timeout: float = 1.0) -> str | None:
    """Ask for ``ip``'s MAC with an ARP request (scapy; needs root). Only when explicitly
    enabled."""
    from scapy.layers.l2 import ARP, Ether  # heavy import, only here
    from scapy.sendrecv import srp1

    try:
        ans = srp1(
            Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=ip),
            iface=iface,
            timeout=timeout,
            verbose=False,
        )
    except (OSError, PermissionError):
        return None
    if ans is None or ARP not in ans:
        return None
    return str(ans[ARP].hwsrc).lower()


_EE = struct.Struct("@IBBBBII")
SO_EE_ORIGIN_ICMP = 2
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


def first_hops(
    target: str, max_hops: int = 3, timeout: float = 1.0, port: int = 33434
) -> list[str]:
    """Routers on the way to ``target`` (IPv4), by UDP with TTL 1..max_hops and the error queue.

    Stops at the target itself (port unreachable from it). ``*`` marks a silent hop.
    """
    hops: list[str] = []
    for ttl in range(1, max_hops + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.setblocking(False)
            try:
                s.sendto(b"geoprobe-hop", (target, port + ttl))
            except OSError:
                hops.append("*")
                continue
            hop = "*"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                select.select([], [], [s], max(0.0, deadline - time.monotonic()))
                try:
                    _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                for level, ctype, data in anc:
                    if (
                        level == socket.IPPROTO_IP
                        and ctype == IP_RECVERR
                        and len(data) >= _EE.size + 8
                    ):
                        origin = _EE.unpack_from(data)[1]
                        if origin == SO_EE_ORIGIN_ICMP:
                            hop = socket.inet_ntoa(
                                data[_EE.size + 4 : _EE.size + 8]
                            )  # SO_EE_OFFENDER
                break
        hops.append(hop)
        if hop == target:
            break
    return hops


def take(
    root: str | Path = "/",
    *,
    active_arp: bool = False,
    hop_targets: Sequence[str] = (),
    max_hops: int = 3,
) -> HostFingerprint:
    """Read the fingerprint now. Never raises for missing files: fields stay None."""
    r = Path(root)
    kw: dict[str, Any] = {}
    kw.update(read_cpuinfo(r))
    kw.update(read_clocksource(r))
    kw["tsc_khz"] = read_tsc_khz(r)
    kw.update(read_gateway(r))
    if active_arp and kw.get("gateway_ip") and kw.get("gateway_iface"):
        mac = arp_lookup(kw["gateway_ip"], kw["gateway_iface"])
        kw["gateway_mac"] = mac or kw.get("gateway_mac")
    if hop_targets:
        kw["hops"] = ";".join(f"{t}:{','.join(first_hops(t, max_hops))}" for t in hop_targets)
    return HostFingerprint(**kw)


class FingerprintSignal:
    """Compares the current fingerprint with a baseline (taken at the first sample if not given)."""

    decisive = True

    def __init__(
        self,
        baseline: HostFingerprint | None = None,
        *,
        name: str = "host_fingerprint",
        root: str | Path = "/",
        active_arp: bool = False,
        hop_targets: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.baseline = baseline
        self.root = root
        self.active_arp = active_arp
        self.hop_targets = list(hop_targets)
        self.current: HostFingerprint | None = None

    def rebaseline(self, fp: HostFingerprint | None = None) -> None:
        self.baseline = fp or self.current

    def sample(self) -> Reading:
        fp = take(self.root, active_arp=self.active_arp, hop_targets=self.hop_targets)
        self.current = fp
        known = [f for f in STRONG_FIELDS if getattr(fp, f) is not None]
        if not known:
            return Reading.unavailable(
                self.name, "no host fingerprint field readable here", unit="fields"
            )
        if self.baseline is None:
            self.baseline = fp
        changed = compare(self.baseline, fp)
        strong = [k for k in changed if k in STRONG_FIELDS]
        reason = (
            "host changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            if strong
            else ""
        )
        return Reading(
            self.name,
            value=float(len(changed)),
            baseline=0.0,
            score=float(len(strong)),
            anomalous=bool(strong),
            unit="fields",
            reason=reason,
            detail={
                "changed": {k: list(v) for k, v in changed.items()},
                "known": known,
                "fingerprint": {k: v for k, v in fp.to_json().items() if k != "cpu_flags_list"},
            },
        )
