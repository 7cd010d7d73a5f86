"""Engine figures on the real WonderProxy data (../shared/data), against the targets.

    python benchmarks/evaluate.py [--targets N] [--seed S]

1. Leave-one-out of geoprobe, cbg and shortest-ping in one run (all landmarks for every target).
2. The adversary: random positive delays added to every target's RTTs, and large delays added to
   its nearest landmarks; no certification may ever be wrong.
3. Solve time with ~240 landmarks, after calibration.
Prints the figures and PASS/MISS per target; exits 0 either way (figures, not a test).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

SHARED = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wonderproxy-pings-2020-07"
)


def _line(name: str, value: float | None, target: str, ok: bool | None) -> None:
    v = "-" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")
    mark = "" if ok is None else ("PASS" if ok else "MISS")
    print(f"  {name:<58} {v:>10}   {target:<22} {mark}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not SHARED.exists():
        print(f"skipped: {SHARED} not present (the WonderProxy data lives in ../shared/data)")
        return 0

    from geoprobe.datasets import load_dataset
    from geoprobe.evaluate import evaluate
    from geoprobe.geo.calibration import fit_arrays
    from geoprobe.geo.countries import default_index
    from geoprobe.locate import METHODS

    countries = default_index()
    ds = load_dataset(SHARED)
    print(f"dataset: {len(ds)} located servers; warnings: {'; '.join(ds.warnings)}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    def tick(done: int, total: int) -> None:
        if done % 40 == 0 or done == total:
            print(f"  ... {done}/{total}", file=sys.stderr, flush=True)

    ev = evaluate(ds, targets=args.targets, seed=args.seed, countries=countries, progress=tick)
    s = ev.summary()
    g, c, p = s["geoprobe"], s["cbg"], s["shortest-ping"]
    print(
        f"\n1. leave-one-out, {g['targets']} targets, all three methods in one run: {ev.seconds:.1f} s "
        f"(load average now {os.getloadavg()[0]:.1f})"
    )
    print(f"  {'':<58} {'geoprobe':>10} {'cbg':>10} {'shortest-ping':>14}")
    for key in (
        "median_km",
        "p80_km",
        "p90_km",
        "within_100km",
        "country_accuracy",
        "truth_in_region",
        "truth_in_region_consistent",
        "consistent_targets",
        "truth_in_region_not_vetted",
        "certified_correct",
        "certified_wrong",
        "accuracy_at_p90",
        "share_p90",
        "ece",
        "country_accuracy_not_vetted",
        "accuracy_at_p90_not_vetted",
        "ece_not_vetted",
        "mean_solve_ms",
    ):
        vals = [m.get(key) for m in (g, c, p)]
        print(f"  {key:<58} " + " ".join(f"{'-' if v is None else round(v, 3):>10}" for v in vals))
    print(
        "  fold tempering (probability temperature, blend, estimate temperature): "
        f"{[(round(t.temperature, 1), t.blend, round(t.estimate_temperature, 1)) for t in ev.temperatures]}"
    )
    print(f"  vetted out as faster than light: {ev.vetted}")
    print(f"  targets whose claimed location is inconsistent: {ev.inconsistent_targets}")

    print("\n   targets")
    _line("geoprobe median error (km)", g["median_km"], "<= 206", g["median_km"] <= 206.0)
    _line(
        "geoprobe median / cbg median (same run)",
        g["median_km"] / c["median_km"],
        "<= 0.85",
        g["median_km"] <= 0.85 * c["median_km"],
    )
    _line("country accuracy", g["country_accuracy"], ">= 0.75", g["country_accuracy"] >= 0.75)
    a90 = g["accuracy_at_p90"]
    _line("accuracy where top-country p >= 0.9", a90, ">= 0.90", a90 is not None and a90 >= 0.9)
    _line("expected calibration error (10 bins)", g["ece"], "<= 0.10", g["ece"] <= 0.1)
    a90v = g["accuracy_at_p90_not_vetted"]
    _line(
        "  the same two, without targets vetted out as liars: p>=0.9",
        a90v,
        ">= 0.90",
        a90v is not None and a90v >= 0.9,
    )
    _line("  ... and ECE", g["ece_not_vetted"], "<= 0.10", g["ece_not_vetted"] <= 0.1)
    tin = g["truth_in_region_consistent"]
    _line(
        "truth in sound region (consistent targets)",
        tin,
        ">= 0.99",
        tin is not None and tin >= 0.99,
    )
    _line(
        "truth in sound region (targets not vetted out as liars)",
        g["truth_in_region_not_vetted"],
        "(see note)",
        None,
    )
    _line("certified wrong (all targets)", g["certified_wrong"], "== 0", g["certified_wrong"] == 0)
    _line("whole LOO, 3 methods (s)", ev.seconds, "< 180", ev.seconds < 180)

    print("\n2. adversarial delay (geoprobe only)")
    rng = np.random.default_rng(args.seed + 100)

    def random_delay(r: np.ndarray) -> np.ndarray:
        extra = rng.exponential(10.0, size=r.shape) + np.where(rng.random(r.shape) < 0.3, 50.0, 0.0)
        return r + extra

    def nearest_delay(r: np.ndarray) -> np.ndarray:
        out = r.copy()
        near = np.argsort(r)[:5]
        out[near] += rng.uniform(20.0, 80.0, size=len(near))
        return out

    for label, adversary in (
        ("random delays on every RTT", random_delay),
        ("20-80 ms on the 5 nearest landmarks", nearest_delay),
    ):
        adv = evaluate(
            ds,
            methods=["geoprobe"],
            targets=args.targets,
            seed=args.seed,
            countries=countries,
            extra_delay=adversary,
        )
        a = adv.summary()["geoprobe"]
        wrong = a["certified_wrong_targets"]
        _line(f"{label}: certified", a["certified"], "", None)
        _line(
            f"{label}: truth in sound region (consistent)",
            a["truth_in_region_consistent"],
            "",
            None,
        )
        _line(f"{label}: certified wrong", a["certified_wrong"], "== 0", not wrong)

    print("\n3. solve time, all landmarks, after calibration")
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    solve = METHODS["geoprobe"]
    cases = [ds.rtts_to(t) for t in range(len(ds))]
    solve(model, cases[0], countries)
    wall, cpu = time.perf_counter(), time.process_time()
    for rt in cases:
        solve(model, rt, countries)
    n = len(cases)
    wall_ms = (time.perf_counter() - wall) / n * 1000
    cpu_ms = (time.process_time() - cpu) / n * 1000
    print(f"  {len(model.ids)} landmarks in the model, {n} solves")
    _line("mean solve, wall clock (ms)", wall_ms, "<= 50", wall_ms <= 50)
    _line("mean solve, CPU time of this process (ms)", cpu_ms, "", None)
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
