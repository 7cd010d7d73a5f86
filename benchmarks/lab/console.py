"""The guest's serial output, read from both QEMU processes as one stream.

Each QEMU writes its serial port to its own file. Before the switchover only the source's file
grows, after it only the destination's, so reading the files in order into one buffer rebuilds the
guest's stream, even a line the switchover cut in two. Every line is stamped with the host time it
was read, which is what the report compares with QMP's timeline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ConsoleLine:
    received: float  # host time.time() when read
    text: str

    def event(self) -> dict[str, Any] | None:
        """The JSON object on this line, if it is one (guest events are JSON lines)."""
        s = self.text.strip()
        start = s.find("{")
        if start < 0 or not s.endswith("}"):
            return None
        try:
            obj = json.loads(s[start:])
        except json.JSONDecodeError:
            return None
        return obj if isinstance(obj, dict) else None


@dataclass
class GuestConsole:
    files: list[Path] = field(default_factory=list)
    lines: list[ConsoleLine] = field(default_factory=list)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _partial: str = ""

    def add(self, path: Path) -> None:
        """Follow another QEMU's serial file (the destination's, once it exists)."""
        self.files.append(path)
        self._offsets[path] = 0

    def read(self) -> list[ConsoleLine]:
        """Read what the guest wrote since the last call; return the new complete lines."""
        now = time.time()
        new: list[ConsoleLine] = []
        for path in self.files:
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets[path])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            self._offsets[path] += len(chunk)
            self._partial += chunk.decode("utf-8", "replace").replace("\r", "")
            *complete, self._partial = self._partial.split("\n")
            new.extend(ConsoleLine(now, text) for text in complete if text)
        self.lines.extend(new)
        return new

    def wait_for(
        self, predicate: Any, timeout: float, interval: float = 0.02, alive: Any = None
    ) -> ConsoleLine | None:
        """Poll until a line satisfies `predicate` (searching lines already read too)."""
        for line in self.lines:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.read():
                if predicate(line):
                    return line
            if alive is not None and not alive():
                self.read()
                return None
            time.sleep(interval)
        return None

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        return [(line.received, ev) for line in self.lines if (ev := line.event()) is not None]

    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)
