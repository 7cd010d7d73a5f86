"""Prometheus textfile output (node_exporter's textfile collector), written by hand.

prometheus_client is Apache-2.0 and cannot ship with our GPL-2.0 scapy dependency; the text
exposition format is small enough to write directly. Names are ``geoprobe_*`` in base units
(seconds, meters), counters end in ``_total``, and the file is written to a temp file in the same
directory and renamed, so the collector never reads half a file.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MetricType = Literal["gauge", "counter"]
_NAME = re.compile(r"^geoprobe_[a-z0-9_]*[a-z0-9]$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(slots=True)
class _Family:
    name: str
    type: MetricType
    help: str
    samples: list[tuple[tuple[tuple[str, str], ...], float]] = field(default_factory=list)


class Metrics:
    """A set of metric families for one scrape; ``set`` replaces a sample with the same labels."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, type_: MetricType, help_: str) -> _Family:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} must look like geoprobe_<what>_<unit>")
        if type_ == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        if type_ == "gauge" and name.endswith("_total"):
            raise ValueError(f"gauge {name!r} must not end in _total")
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, type_, help_)
        elif fam.type != type_:
            raise ValueError(f"metric {name!r} registered as {fam.type}, not {type_}")
        return fam

    def _set(self, fam: _Family, value: float, labels: Mapping[str, str]) -> None:
        for k in labels:
            if not _LABEL.match(k) or k.startswith("__"):
                raise ValueError(f"bad label name {k!r}")
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        fam.samples = [(lk, v) for lk, v in fam.samples if lk != key]
        fam.samples.append((key, float(value)))

    def gauge(self, name: str, help_: str, value: float, **labels: str) -> None:
        self._set(self._family(name, "gauge", help_), value, labels)

    def counter(self, name: str, help_: str, value: float, **labels: str) -> None:
        if value < 0:
            raise ValueError(f"counter {name!r} cannot be negative")
        self._set(self._family(name, "counter", help_), value, labels)

    def render(self) -> str:
        lines: list[str] = []
        for fam in sorted(self._families.values(), key=lambda f: f.name):
            help_ = fam.help.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {fam.name} {help_}")
            lines.append(f"# TYPE {fam.name} {fam.type}")
            for key, v in fam.samples:
                lab = ",".join(f'{k}="{_escape(val)}"' for k, val in key)
                lines.append(
                    f"{fam.name}{{{lab}}} {_value(v)}" if lab else f"{fam.name} {_value(v)}"
                )
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Temp file in the same directory, fsync, rename: readers see the old file or the new one."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.render())
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
