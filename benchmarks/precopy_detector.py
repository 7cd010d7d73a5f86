"""The dirty-sync probe on this host: its cost, its dirty rate, and false alarms under load.

Phases (each ``--seconds`` long), one ``Sampler`` cycle every ``--interval`` s as in the watch:

* ``idle``: whatever else the machine runs;
* ``cpu``: two busy-loop processes per core on top;
* ``memory``: processes that allocate, fill and free 256 MiB over and over (page faults, reclaim
  pressure, memory bandwidth);
* ``injected``: a real write-protection of every probe page before every 4th cycle, by fork()
  (each page becomes copy-on-write, as under write-protecting dirty tracking) or by
  ``MADV_DONTNEED`` (the next write faults in a fresh page): how many the classifier sees.

Prints, per phase: cycles, syncs (= false alarms outside ``injected``), partial cycles, the
probe's CPU share and its dirty rate. ``--json`` prints the same as one JSON object.

    python -m benchmarks.precopy_detector --seconds 300
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

from geoprobe.watch.signals.precopy import (
    PARTIAL,
    SYNC,
    Sampler,
    classify,
    excess_per_page_ns,
)


def _cpu_hog(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x ^= i


def _mem_hog(stop: Any) -> None:
    while not stop.is_set():
        a = np.empty(256 << 20, dtype=np.uint8)
        a[::4096] = 1  # fault every page in
        a[:] = 7  # and stream through it
        del a


def _load(kind: str) -> tuple[Any, list[mp.Process]]:
    stop = mp.Event()
    n = 2 * (os.cpu_count() or 1)
    target = {"cpu": _cpu_hog, "memory": _mem_hog}.get(kind)
    procs = (
        [mp.Process(target=target, args=(stop,), daemon=True) for _ in range(n)] if target else []
    )
    for p in procs:
        p.start()
    return stop, procs


def _inject(sampler: Sampler, how: str) -> None:
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    else:
        sampler.buffer.madvise(mmap.MADV_DONTNEED)


def run_phase(kind: str, seconds: float, interval: float) -> dict[str, Any]:
    stop, procs = _load(kind)
    sampler = Sampler(lock=kind != "injected")  # MADV_DONTNEED refuses locked pages
    try:
        for _ in range(10):  # warm-up, not counted
            sampler.cycle()
        counts = {SYNC: 0, PARTIAL: 0, "cycles": 0}
        injected = detected = 0
        excess: list[float] = []
        c0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            inject = kind == "injected" and counts["cycles"] % 4 == 3
            if inject:
                _inject(sampler, "fork" if injected % 2 == 0 else "dontneed")
                injected += 1
            cycle = sampler.cycle()
            verdict = classify(cycle)
            counts["cycles"] += 1
            if verdict in counts:
                counts[verdict] += 1
            if inject and verdict == SYNC:
                detected += 1
            if not inject:
                excess.append(excess_per_page_ns(cycle))
            time.sleep(interval)
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        sampler.close()
    false_syncs = counts[SYNC] - detected
    return {
        "phase": kind,
        "seconds": round(wall, 1),
        "cycles": counts["cycles"],
        "false_syncs": false_syncs,
        "partial": counts[PARTIAL],
        "injected": injected,
        "detected": detected,
        "cpu_share": round(cpu / wall, 5),
        "dirty_mib_per_s": round(sampler.pages * mmap.PAGESIZE / interval / 2**20, 2),
        "excess_ns_per_page_median": round(float(np.median(excess)), 1) if excess else None,
        "excess_ns_per_page_p99": round(float(np.percentile(excess, 99)), 1) if excess else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="per phase")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--phases", default="idle,cpu,memory,injected")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run_phase(k, args.seconds, args.interval) for k in args.phases.split(",")]
    controls = [r for r in rows if r["phase"] != "injected"]
    hours = sum(r["seconds"] for r in controls) / 3600
    alarms = sum(r["false_syncs"] for r in controls)
    if args.json:
        print(json.dumps({"phases": rows, "control_hours": hours, "false_syncs": alarms}))
        return
    for r in rows:
        print(
            f"{r['phase']:9s} {r['seconds']:7.1f} s  cycles {r['cycles']:5d}  "
            f"false syncs {r['false_syncs']:3d}  partial {r['partial']:4d}  "
            f"injected {r['injected']:3d} detected {r['detected']:3d}  "
            f"cpu {100 * r['cpu_share']:.2f} %  dirty {r['dirty_mib_per_s']} MiB/s  "
            f"excess ns/page median {r['excess_ns_per_page_median']} "
            f"p99 {r['excess_ns_per_page_p99']}"
        )
    print(f"controls: {hours:.3f} h observed, {alarms} false syncs")


if __name__ == "__main__":
    main()
