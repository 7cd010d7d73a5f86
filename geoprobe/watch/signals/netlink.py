"""Netlink messages the platform listeners read: rtnetlink links and kernel uevents.

Pure parsers (bytes in, typed records out, ``NetlinkError`` for anything malformed) and the two
sockets. Both sockets are open to unprivileged users: link notifications (``RTMGRP_LINK``) and
kernel uevents (group 1 of ``NETLINK_KOBJECT_UEVENT``) are multicast to anyone who binds.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # len, type

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTMGRP_LINK = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_EVENT = 44
IFLA_INFO_KIND = 1

# ``enum`` after IFLA_EVENT in linux/if_link.h
IFLA_EVENT_NAMES = {
    0: "none",
    1: "reboot",
    2: "features",
    3: "bonding_failover",
    4: "notify_peers",
    5: "igmp_resend",
    6: "bonding_options",
}
IFLA_EVENT_NOTIFY_PEERS = 4

NETLINK_KOBJECT_UEVENT = 15


class NetlinkError(ValueError):
    """A message that does not parse."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Link:
    """What an RTM_NEWLINK/RTM_DELLINK message says about one interface."""

    index: int
    flags: int = 0
    family: int = 0  # AF_UNSPEC for the link itself; the bridge module adds AF_BRIDGE copies
    name: str = ""
    master: int | None = None
    address: bytes = b""
    kind: str = ""  # IFLA_INFO_KIND: bond, team, bridge, ...; empty for plain devices
    event: int | None = None  # IFLA_EVENT, when the message reports one


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_messages(data: bytes) -> list[Message]:
    """Split a datagram into netlink messages."""
    out: list[Message] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < NLMSG_HDR.size:
            raise NetlinkError(f"truncated netlink header at byte {pos}")
        length, typ, flags, seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > len(data):
            raise NetlinkError(f"netlink message length {length} at byte {pos} is out of bounds")
        out.append(Message(typ, flags, seq, bytes(data[pos + NLMSG_HDR.size : pos + length])))
        pos += _align(length)
    return out


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Route attributes (the first of each type; the nested flag bit is dropped)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + RTATTR.size <= len(data):
        length, typ = RTATTR.unpack_from(data, pos)
        if length < RTATTR.size or pos + length > len(data):
            raise NetlinkError(f"attribute length {length} at byte {pos} is out of bounds")
        out.setdefault(typ & 0x3FFF, bytes(data[pos + RTATTR.size : pos + length]))
        pos += _align(length)
    return out


def _u32(raw: bytes, what: str) -> int:
    if len(raw) < 4:
        raise NetlinkError(f"{what} is {len(raw)} bytes, not 4")
    return int(struct.unpack_from("=I", raw)[0])


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_link(payload: bytes) -> Link:
    """The ifinfomsg and the attributes the listeners need."""
    if len(payload) < IFINFOMSG.size:
        raise NetlinkError(f"ifinfomsg is {len(payload)} bytes, not {IFINFOMSG.size}")
    family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload[IFINFOMSG.size :])
    kind = ""
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        kind = _cstr(info.get(IFLA_INFO_KIND, b""))
    return Link(
        index=index,
        flags=flags,
        family=family,
        name=_cstr(attrs.get(IFLA_IFNAME, b"")),
        master=_u32(attrs[IFLA_MASTER], "IFLA_MASTER") if IFLA_MASTER in attrs else None,
        address=attrs.get(IFLA_ADDRESS, b""),
        kind=kind,
        event=_u32(attrs[IFLA_EVENT], "IFLA_EVENT") if IFLA_EVENT in attrs else None,
    )


@dataclass(frozen=True, slots=True)
class Uevent:
    action: str
    devpath: str
    env: dict[str, str] = field(default_factory=dict)


def parse_uevent(data: bytes) -> Uevent:
    """A kernel uevent: ``action@devpath`` then NUL-separated ``KEY=VALUE`` fields.

    Messages from udev (they start with ``libudev``) are refused: only the kernel's own count.
    """
    if data.startswith(b"libudev"):
        raise NetlinkError("a udev message, not a kernel uevent")
    fields = [f for f in data.split(b"\0") if f]
    if not fields or b"@" not in fields[0]:
        raise NetlinkError("no action@devpath header")
    action, _, devpath = fields[0].decode("utf-8", "replace").partition("@")
    env: dict[str, str] = {}
    for f in fields[1:]:
        key, sep, value = f.decode("utf-8", "replace").partition("=")
        if sep and key:
            env[key] = value
    return Uevent(action, devpath, env)


def link_socket(timeout: float = 0.5) -> socket.socket:
    """Subscribed to link notifications; ``dump_links`` asks for the current ones."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.bind((0, RTMGRP_LINK))
    s.settimeout(timeout)
    return s


def dump_request(seq: int = 1) -> bytes:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    hdr = NLMSG_HDR.pack(
        NLMSG_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return hdr + body


def uevent_socket(timeout: float = 0.5) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    s.bind((0, 1))
    s.settimeout(timeout)
    return s
