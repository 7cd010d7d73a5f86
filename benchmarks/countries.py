"""Country index: build time, cached start-up time, lookup throughput, certify latency.

Target: ``codes_at`` answers >= 1e6 points/s after the
one-time set-up, and a cached start-up stays well under a second. Each start-up figure comes from
a fresh process (a cold build with an empty cache, then a warm load from that cache); throughput
is the median of several runs, because the machine is shared.

    python benchmarks/countries.py [--points 1000000] [--reps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import shapely
import shapely.affinity

STARTUP = r"""
import json, sys, time
t0 = time.perf_counter()
from geoprobe.geo.countries import load_index
t1 = time.perf_counter()
from pathlib import Path
index = load_index(cache_dir=Path(sys.argv[1]))
t2 = time.perf_counter()
index.code_at(48.1, 11.5)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def startup(cache: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, cache], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def throughput(n: int, reps: int) -> dict[str, float]:
    from geoprobe.geo.countries import default_index

    index = default_index()
    rng = np.random.default_rng(0)
    cases = {
        "global": (np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)),
        "europe": (rng.uniform(35, 60, n), rng.uniform(-10, 30, n)),
    }
    out: dict[str, float] = {}
    for name, (lat, lon) in cases.items():
        index.codes_at(lat[:100], lon[:100])
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            index.codes_at(lat, lon)
            times.append(time.perf_counter() - t)
        out[f"{name}_points_per_s"] = n / statistics.median(times)
    small_lat, small_lon = rng.uniform(45, 55, 4000), rng.uniform(0, 20, 4000)
    t = time.perf_counter()
    for _ in range(50):
        index.codes_at(small_lat, small_lon)
    out["call_4000_points_ms"] = (time.perf_counter() - t) / 50 * 1000
    times = []
    for lat0, lon0, km in [
        (40.4, -3.7, 200),
        (52.5, 13.4, 300),
        (-17.8, 178.0, 150),
        (39.7, -105.0, 800),
    ]:
        disc = shapely.Point(lon0, lat0).buffer(km / 111.32, quad_segs=32)
        region = shapely.affinity.scale(disc, xfact=1 / math.cos(math.radians(lat0)), yfact=1.0)
        t = time.perf_counter()
        index.certify(region)
        times.append(time.perf_counter() - t)
    out["certify_ms_median"] = statistics.median(times) * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = startup(cache)
        warm = startup(cache)
    res: dict[str, Any] = {
        "cold_build_s": cold["load_s"],
        "warm_load_s": warm["load_s"],
        "import_s": warm["import_s"],
        **throughput(args.points, args.reps),
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"import geoprobe.geo.countries   {res['import_s']:.2f} s")
    print(f"first build (no cache)          {res['cold_build_s']:.2f} s")
    print(f"start-up from cache             {res['warm_load_s']:.3f} s")
    print(f"codes_at, uniform on the globe  {res['global_points_per_s'] / 1e6:.2f} M points/s")
    print(
        f"codes_at, Europe (many borders) {res['europe_points_per_s'] / 1e6:.2f} M points/s  (target >= 1)"
    )
    print(f"codes_at, 4000-point call       {res['call_4000_points_ms']:.2f} ms")
    print(f"certify, median of 4 regions    {res['certify_ms_median']:.1f} ms")


if __name__ == "__main__":
    main()
