"""Benchmark of `geoprobe delay`: dirty rate against a plain numpy page-stride loop, and peak RSS.

Targets (issue 5): the dirtier's page-write rate is at least 50 % of a bare
``buf[::4096] = v`` loop over the same buffer on this machine, and its peak RSS (VmHWM) never
exceeds the configured cap. Each run is a fresh process, baseline and dirtier interleaved so
that load from other processes hits both alike; medians are reported.

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

BASELINE = r"""
import json, sys, time
import numpy as np
pages, seconds = int(sys.argv[1]), float(sys.argv[2])
buf = np.zeros(pages * 4096, dtype=np.uint8)
view = buf[::4096]
n = v = 0
t0 = time.perf_counter()
while time.perf_counter() - t0 < seconds:
    v = v % 255 + 1
    view[:] = v
    n += pages
el = time.perf_counter() - t0
print(json.dumps({"pages_per_s": n / el}))
"""


def _run(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def dirtier(cap: str, seconds: float, cpu: float = 1.0, rate: float | None = None
            ) -> dict[str, Any]:
    argv = [sys.executable, "-m", "geoprobe", "delay", "--memory", cap, "--cpu", str(cpu),
            "--duration", str(seconds), "--json"]
    if rate:
        argv += ["--rate", str(rate)]
    return dict(_run(argv)["summary"])


def baseline(pages: int, seconds: float) -> float:
    return float(_run([sys.executable, "-c", BASELINE, str(pages), str(seconds)])["pages_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--caps", default="128M,256M,1G")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    for cap in args.caps.split(","):
        base: list[float] = []
        runs: list[dict[str, Any]] = []
        for _ in range(args.reps):
            d = dirtier(cap, args.seconds)
            runs.append(d)
            base.append(baseline(int(d["buffer_bytes"]) // 4096, args.seconds))
        ours = statistics.median(r["pages_per_s"] for r in runs)
        ref = statistics.median(base)
        peak = max(r["peak_rss_bytes"] for r in runs)
        capped = dirtier(cap, args.seconds, cpu=0.25)
        limited = dirtier(cap, args.seconds, rate=200_000)
        rows.append({
            "cap": cap, "cap_bytes": parse_size(cap), "buffer_bytes": runs[0]["buffer_bytes"],
            "baseline_pages_per_s": ref, "dirtier_pages_per_s": ours, "ratio": ours / ref,
            "peak_rss_bytes": peak, "peak_within_cap": peak <= parse_size(cap),
            "cpu0.25_cpu_share": capped["cpu_s"] / capped["elapsed_s"],
            "cpu0.25_pages_per_s": capped["pages_per_s"],
            "rate200k_pages_per_s": limited["pages_per_s"],
            "peak_rss_capped_runs": max(capped["peak_rss_bytes"], limited["peak_rss_bytes"]),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'cap':>6} {'buffer':>8} {'baseline p/s':>14} {'dirtier p/s':>14} {'ratio':>6} "
              f"{'peak RSS':>9} {'<=cap':>5} {'cpu@0.25':>8} {'rate@200k':>10}")
        for r in rows:
            print(f"{r['cap']:>6} {r['buffer_bytes'] >> 20:>6}Mi {r['baseline_pages_per_s']:>14,.0f} "
                  f"{r['dirtier_pages_per_s']:>14,.0f} {r['ratio']:>6.2f} "
                  f"{r['peak_rss_bytes'] >> 20:>7}Mi {r['peak_within_cap']!s:>5} "
                  f"{r['cpu0.25_cpu_share']:>8.2f} {r['rate200k_pages_per_s']:>10,.0f}")
    ok = all(r["ratio"] >= 0.5 and r["peak_within_cap"] and
             r["peak_rss_capped_runs"] <= r["cap_bytes"] for r in rows)
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
