"""Benchmark of `geoprobe delay`: dirty rate against a plain numpy page-stride loop, and peak RSS.

Targets: the dirtier's page-write rate is at least 50 % of a bare
``buf[::4096] = v`` loop over the same buffer on this machine, and its peak RSS (VmHWM) never
exceeds the configured cap. The rate comparison alternates the bare loop and the dirtier in
short slices over one pre-faulted buffer inside one process, so that load from other processes
hits both alike (medians of --reps runs). Peak RSS comes from the real `geoprobe delay` command,
each run a fresh process (full speed, --cpu 0.25 and --rate 200000), checked against the cap.

    python benchmarks/delay.py [--seconds 3] [--reps 3] [--caps 128M,256M,1G] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from geoprobe.policy import parse_size

PAIRED = r"""
import json, sys, time
from geoprobe.defend.delay import Dirtier
cap, seconds, slices = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
d = Dirtier(cap)
view = d.view
view[:] = 1  # fault the buffer in once, so neither side pays first-touch for the other
base_pages = base_t = our_pages = our_t = 0.0
v = 1
for _ in range(slices):
    # the plain loop: whole-buffer strided assignment, nothing else
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds / slices / 2:
        v = v % 255 + 1
        view[:] = v
        base_pages += len(view)
    base_t += time.perf_counter() - t0
    s = d.run(cpu=1.0, duration=seconds / slices / 2)
    our_pages += s.pages
    our_t += s.elapsed_s
print(json.dumps({"baseline_pages_per_s": base_pages / base_t, "dirtier_pages_per_s": our_pages / our_t,
                  "buffer_bytes": d.buffer_bytes}))
"""


def _run(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def dirtier(
    cap: str, seconds: float, cpu: float = 1.0, rate: float | None = None
) -> dict[str, Any]:
    """The real command, in its own process: its VmHWM is the figure checked against the cap."""
    argv = [
        sys.executable,
        "-m",
        "geoprobe",
        "delay",
        "--memory",
        cap,
        "--cpu",
        str(cpu),
        "--duration",
        str(seconds),
        "--json",
    ]
    if rate:
        argv += ["--rate", str(rate)]
    return dict(_run(argv)["summary"])


def paired(cap: str, seconds: float, slices: int = 10) -> dict[str, Any]:
    """Baseline and dirtier alternate in short slices over one buffer: same machine, same moment."""
    return _run([sys.executable, "-c", PAIRED, str(parse_size(cap)), str(seconds), str(slices)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--caps", default="128M,256M,1G")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    for cap in args.caps.split(","):
        pairs = [paired(cap, args.seconds) for _ in range(args.reps)]
        ours = statistics.median(p["dirtier_pages_per_s"] for p in pairs)
        ref = statistics.median(p["baseline_pages_per_s"] for p in pairs)
        full = dirtier(cap, args.seconds)
        capped = dirtier(cap, args.seconds, cpu=0.25)
        limited = dirtier(cap, args.seconds, rate=200_000)
        peak = max(r["peak_rss_bytes"] for r in (full, capped, limited))
        rows.append(
            {
                "cap": cap,
                "cap_bytes": parse_size(cap),
                "buffer_bytes": full["buffer_bytes"],
                "baseline_pages_per_s": ref,
                "dirtier_pages_per_s": ours,
                "ratio": ours / ref,
                "ratios": [p["dirtier_pages_per_s"] / p["baseline_pages_per_s"] for p in pairs],
                "cli_pages_per_s": full["pages_per_s"],
                "peak_rss_bytes": peak,
                "peak_within_cap": peak <= parse_size(cap),
                "cpu0.25_cpu_share": capped["cpu_s"] / capped["elapsed_s"],
                "rate200k_pages_per_s": limited["pages_per_s"],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"{'cap':>6} {'buffer':>8} {'baseline p/s':>14} {'dirtier p/s':>14} {'ratio':>6} "
            f"{'peak RSS':>9} {'<=cap':>5} {'cpu@0.25':>8} {'rate@200k':>10}"
        )
        for r in rows:
            print(
                f"{r['cap']:>6} {r['buffer_bytes'] >> 20:>6}Mi {r['baseline_pages_per_s']:>14,.0f} "
                f"{r['dirtier_pages_per_s']:>14,.0f} {r['ratio']:>6.2f} "
                f"{r['peak_rss_bytes'] >> 20:>7}Mi {r['peak_within_cap']!s:>5} "
                f"{r['cpu0.25_cpu_share']:>8.2f} {r['rate200k_pages_per_s']:>10,.0f}"
            )
    ok = all(r["ratio"] >= 0.5 and r["peak_within_cap"] for r in rows)
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
