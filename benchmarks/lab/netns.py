"""Network namespaces as the lab's sites.

Each site is a namespace with only `lo` up. A QEMU started inside it with user networking reaches
the namespace's loopback at 10.0.2.2, so "which site am I in" is decided purely by which namespace
the running QEMU process lives in. Nothing here can send a packet outside the machine: the
namespaces have no other link.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def remove_stale(prefix: str) -> list[str]:
    """Delete namespaces `<prefix>...-<pid>` left by a lab run whose process is gone (kill -9)."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        pid = name.rsplit("-", 1)[-1]
        if name.startswith(prefix) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            Namespace(name).delete()
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Namespace:
    name: str

    def create(self) -> Namespace:
        """Create the namespace afresh (a leftover from a killed run is removed first)."""
        self.delete()
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def exists(self) -> bool:
        out = _ip("netns", "list").stdout
        return any(line.split()[0] == self.name for line in out.splitlines() if line.strip())

    def links(self) -> list[str]:
        """Interface names inside; the lab checks this is exactly ['lo'] before it starts
        anything."""
        out = _ip("-n", self.name, "-o", "link", "show").stdout
        return [
            line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()
        ]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.wrap(argv), **kwargs)  # type: ignore[call-overload,no-any-return]
