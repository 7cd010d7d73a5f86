"""`python -m benchmarks.lab.timeline RUN_DIR|record.json`: one run's QMP and guest timelines,
merged.

Every line is in seconds from the switchover (the source's STOP), so where the time between the
switchover and geoprobe's confirmation goes can be read off directly: QEMU's events, the guest's
CloudEvents (type, verdict, the rounds geoprobe used), its transitions when it runs with -v, and the
counter-measures. Needs a run kept with --keep-work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .console import ConsoleLine


def switchover(record: dict[str, Any]) -> float | None:
    return next((float(e["qemu_time"]) for e in record["src_events"] if e["event"] == "STOP"), None)


def _describe(ev: dict[str, Any]) -> str:
    data = ev.get("data") or {}
    kind = str(ev.get("type", "")).rsplit(".", 1)[-1]
    if kind == "fix":
        return f"fix {data.get('countries', [{}])[0].get('code', '?') if data.get('countries') else '?'}"
    parts = [kind, f"{data.get('from')}→{data.get('to')}"]
    if "crossing" in data:
        parts.append(f"crossing={data.get('crossing')}")
    if data.get("rounds") is not None:
        parts.append(f"rounds={data.get('rounds')} seconds={data.get('seconds')}")
    parts.append("signals=" + ",".join(data.get("signals") or []))
    return " ".join(parts)


# A vCPU kept off the CPUs this long per second shows in the timeline (host load, invisible to TCG).
WAIT_SHOWN_MS_PER_S = 100.0


def host_lines(record: dict[str, Any]) -> list[tuple[float, str]]:
    """(host time, text): each new dirty sync with QMP's dirty rate, and vCPU run-delay spikes."""
    out: list[tuple[float, str]] = []
    syncs = None
    for x in record.get("samples", []):
        ram = x.get("ram") or {}
        n = ram.get("dirty-sync-count")
        if n is not None and n != syncs:
            rate = ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096) / 1e6
            text = (
                f"QMP dirty sync {n} ({x.get('status')}, dirty rate {rate:.1f} MB/s, "
                f"remaining {ram.get('remaining', 0) / 1e6:.1f} MB)"
            )
            out.append((float(x["t"]), text))
            syncs = n
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for x in (record.get("host") or {}).get("schedstat", []):
        key = (str(x["vm"]), int(x["tid"]))
        prev = last.get(key)
        last[key] = x
        if prev is None or x["t"] <= prev["t"]:
            continue
        waited = (x["wait_ns"] - prev["wait_ns"]) / 1e6
        if waited / (x["t"] - prev["t"]) >= WAIT_SHOWN_MS_PER_S:
            out.append(
                (
                    float(x["t"]),
                    f"host {key[0]} vCPU waited {waited:.0f} ms in {x['t'] - prev['t']:.2f} s",
                )
            )
    for x in (record.get("host") or {}).get("dirty_rates", []):
        out.append((float(x["t"]), f"QMP calc-dirty-rate {x.get('mb_s')} MB/s"))
    return out


def lines(
    record: dict[str, Any], start: float = -10.0, end: float = 30.0, vmstat: bool = False
) -> Iterator[tuple[float, str]]:
    """(seconds from the switchover, text) for QMP events, host samples and console lines."""
    t0 = switchover(record)
    if t0 is None:  # no migration (a control run): count from the end of the settle instead
        t0 = float(record["guest_ready"] or record["started"]) + float(record["plan"]["settle_s"])
    out: list[tuple[float, str]] = []
    for side in ("src", "dst"):
        for e in record[f"{side}_events"]:
            status = e["data"].get("status", "") if isinstance(e.get("data"), dict) else ""
            out.append((float(e["qemu_time"]) - t0, f"QMP {side} {e['event']} {status}".rstrip()))
    out += [(t - t0, text) for t, text in host_lines(record)]
    for t, text in record["console"]:
        if text.startswith("LAB-VMSTAT") and not vmstat:
            continue
        ev = ConsoleLine(t, text).event()
        if ev is not None and "specversion" in ev:
            out.append((t - t0, "guest " + _describe(ev)))
        elif text.strip():
            out.append((t - t0, "console " + text[:160]))
    out.sort(key=lambda x: x[0])
    yield from ((t, s) for t, s in out if start <= t <= end)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.lab.timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "run", type=Path, help="a run directory (kept with --keep-work) or its record.json"
    )
    ap.add_argument(
        "--from", dest="start", type=float, default=-10.0, help="seconds before the switchover"
    )
    ap.add_argument("--to", dest="end", type=float, default=30.0, help="seconds after it")
    ap.add_argument("--vmstat", action="store_true", help="show the guest's vmstat log lines too")
    args = ap.parse_args(argv)
    path = args.run / "record.json" if args.run.is_dir() else args.run
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"timeline: {path}: {exc}", file=sys.stderr)
        return 2
    for t, text in lines(record, args.start, args.end, vmstat=args.vmstat):
        print(f"{t:+8.3f}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
