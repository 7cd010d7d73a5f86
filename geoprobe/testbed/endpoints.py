"""Where each emulated landmark listens, and what the catalogue tells probers to send to.

Two layouts:

- one loopback address per landmark (the default): 127.0.0.2, 127.0.0.3, ... then the next prefix,
  any free port. Linux routes all of 127/8 to ``lo``, so no setup is needed.
- one address for all (``--bind``): distinct ports, ``base_port + the server's index in the
  dataset``. The QEMU lab needs this: its guest reaches the host only at one address (10.0.2.2).

Both are deterministic per dataset server, so two testbeds of the same dataset (two lab sites)
agree on every landmark's address and port and can serve one catalogue.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from geoprobe.errors import InputError

DEFAULT_PREFIXES = ("127.0.0.0/24", "127.0.1.0/24")
DEFAULT_BASE_PORT = 40000


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A landmark's socket (``bind``, ``port``; port 0 = any free one) and its advertised
    address."""

    bind: str
    port: int
    advertise: str


def _hosts(prefixes: Sequence[str]) -> list[str]:
    """Usable addresses of the prefixes, skipping x.x.x.0, x.x.x.255 and 127.0.0.1 (the
    prober's)."""
    out: list[str] = []
    for p in prefixes:
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError:
            raise InputError(f"not an address prefix: {p!r}", field="bind-prefix") from None
        if not net.is_loopback:
            raise InputError(
                f"{p} is not a loopback prefix; the testbed only listens on loopback",
                field="bind-prefix",
            )
        for addr in net.hosts() if net.num_addresses > 2 else net:
            s = str(addr)
            if net.version == 4 and (s.endswith((".0", ".255")) or s == "127.0.0.1"):
                continue
            if s not in out:
                out.append(s)
    return out


def plan(
    server_indices: Sequence[int],
    *,
    prefixes: Sequence[str] | None = None,
    bind: str | None = None,
    advertise: str | None = None,
    base_port: int = DEFAULT_BASE_PORT,
    port: int = 0,
) -> list[Endpoint]:
    """One endpoint per landmark, keyed by its server's index in the dataset (stable across
    testbeds)."""
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise InputError(f"not an IP address: {bind!r}", field="bind") from None
        top = base_port + max(server_indices, default=0)
        if not 1 <= base_port or top > 65535:
            raise InputError(f"ports {base_port}-{top} do not fit below 65536", field="base-port")
        return [Endpoint(bind, base_port + i, advertise or bind) for i in server_indices]
    hosts = _hosts(prefixes or DEFAULT_PREFIXES)
    need = max(server_indices, default=0) + 1
    if need > len(hosts):
        raise InputError(
            f"{len(hosts)} loopback addresses for servers up to index {need - 1}: add a "
            "--bind-prefix (e.g. 127.0.2.0/24) or use --bind ADDRESS",
            field="bind-prefix",
        )
    return [Endpoint(hosts[i], port, advertise or hosts[i]) for i in server_indices]
