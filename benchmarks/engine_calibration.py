"""Engine figures per setting and landmark count, with their spread across seeds (not a test).

    python benchmarks/engine_calibration.py [--settings all,thinned,europe,americas]
        [--k all,25,50] [--seeds 5] [--targets N]

For every WonderProxy setting (all servers; thinned to >= 100 km apart; Europe; the Americas) and
landmark count (all others, or K random others per target), a leave-one-out of geoprobe, cbg and
shortest-ping in one run per seed. Prints, as mean [min-max] over seeds:

* right when p >= 0.9, ECE: the calibrated probabilities' targets (>= 0.90, <= 0.10), on all
  targets and on consistent ones, with the band a perfectly calibrated predictor would stray to
  by chance (``evaluate.calibration_noise``);
* median and p90 error, country accuracy, against the better of cbg and shortest-ping;
* truth in the sound region (consistent targets) and wrong certifications;
* median error and country accuracy per lowest-RTT bin (as ``engine_limits.py``), geoprobe against
  the better baseline.

The targets (docs/engine.md) are judged on the ``all`` setting; the others guard against tuning
to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_settings import SHARED, settings

#: engine_limits.py's bins, and the co-location bin (0-2 ms) on its own.
BINS_MS = ((0, 2), (0, 4), (4, 8), (8, 13), (13, 20), (20, 40), (40, 1000))
METHODS = ("geoprobe", "cbg", "shortest-ping")


def _fmt(values: list[float], digits: int = 3) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return "-"
    if digits == 0:
        return f"{v.mean():.0f} [{v.min():.0f}-{v.max():.0f}]"
    return f"{v.mean():.{digits}f} [{v.min():.{digits}f}-{v.max():.{digits}f}]"


def _lowest(ds: Any) -> dict[str, float]:
    sym = np.fmin(ds.rtt_min, ds.rtt_min.T)
    np.fill_diagonal(sym, np.nan)
    low = np.nanmin(np.where(np.isfinite(sym), sym, np.inf), axis=1)
    return {sid: float(v) for sid, v in zip(ds.ids, low)}


def run(name: str, ds: Any, k: int | None, seeds: range, targets: int | None) -> dict[str, Any]:
    from geoprobe.evaluate import evaluate
    from geoprobe.geo.countries import default_index

    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    bins: dict[tuple[int, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    lowest = _lowest(ds)
    for seed in seeds:
        t0 = time.perf_counter()
        ev = evaluate(
            ds,
            landmarks_per_target=k,
            seed=seed,
            targets=targets,
            countries=default_index(),
            methods=METHODS,
        )
        s = ev.summary()
        for m in METHODS:
            for key in (
                "median_km",
                "p90_km",
                "country_accuracy",
                "accuracy_at_p90",
                "share_p90",
                "ece",
                "accuracy_at_p90_consistent",
                "share_p90_consistent",
                "ece_consistent",
                "ece_noise_p95",
                "accuracy_at_p90_noise_p5",
                "ece_consistent_noise_p95",
                "accuracy_at_p90_consistent_noise_p5",
                "truth_in_region_consistent",
                "certified_wrong",
                "certified_wrong_consistent",
            ):
                per[m][key].append(s[m].get(key) if s[m].get(key) is not None else np.nan)
        per["geoprobe"]["seconds"].append(time.perf_counter() - t0)
        per["geoprobe"]["seed"].append(seed)
        by_target: dict[str, dict[str, Any]] = defaultdict(dict)
        for r in ev.records:
            by_target[r.target][r.method] = r
        for lo, hi in BINS_MS:
            ts = [t for t in by_target if lo <= lowest[t] < hi]
            if not ts:
                continue
            for m in METHODS:
                err = [by_target[t][m].error_km for t in ts]
                err_a = np.array([np.inf if e is None else e for e in err])
                ok = [by_target[t][m].country == by_target[t][m].true_country for t in ts]
                bins[(lo, hi)][f"{m} km"].append(float(np.median(err_a)))
                bins[(lo, hi)][f"{m} country"].append(float(np.mean(ok)))
            bins[(lo, hi)]["n"].append(len(ts))
        print(f"  ... {name} k={k or 'all'} seed {seed}: {ev.seconds:.0f} s", file=sys.stderr)
    return {"per": per, "bins": bins}


def report(name: str, k: int | None, res: dict[str, Any]) -> list[tuple[str, bool]]:
    per, bins = res["per"], res["bins"]
    g, c, p = per["geoprobe"], per["cbg"], per["shortest-ping"]
    label = f"{name}, k={k or 'all'}"
    print(f"\n{label}  (mean [min-max] over {len(g['median_km'])} seeds)")
    print(f"  {'':<34} {'geoprobe':>24} {'cbg':>24} {'shortest-ping':>24}")
    for key, digits in (
        ("median_km", 0),
        ("p90_km", 0),
        ("country_accuracy", 3),
        ("accuracy_at_p90", 3),
        ("share_p90", 3),
        ("ece", 3),
        ("accuracy_at_p90_consistent", 3),
        ("share_p90_consistent", 3),
        ("ece_consistent", 3),
        ("ece_noise_p95", 3),
        ("accuracy_at_p90_noise_p5", 3),
        ("ece_consistent_noise_p95", 3),
        ("accuracy_at_p90_consistent_noise_p5", 3),
        ("truth_in_region_consistent", 3),
        ("certified_wrong", 3),
        ("certified_wrong_consistent", 3),
    ):
        cells = [_fmt(m[key], digits) if key in m else "-" for m in (g, c, p)]
        print(f"  {key:<34} " + " ".join(f"{x:>24}" for x in cells))
    print(f"  {'seconds per run':<34} {_fmt(g['seconds'], 0):>24}")
    print(
        "  per seed: right@0.9 (targets share) ECE | consistent: right@0.9 ECE | "
        "median km g/cbg/sp | p90 km g/cbg | country g/cbg/sp"
    )
    for i, seed in enumerate(g["seed"]):

        def f(m: dict[str, list[float]], key: str, fmt: str, i: int = i) -> str:
            v = m[key][i]
            return "-" if v is None or not np.isfinite(v) else format(v, fmt)

        print(
            f"  seed {seed}: {f(g, 'accuracy_at_p90', '.3f')} ({f(g, 'share_p90', '.3f')}) "
            f"{f(g, 'ece', '.3f')} (noise {f(g, 'ece_noise_p95', '.3f')}) | "
            f"{f(g, 'accuracy_at_p90_consistent', '.3f')} "
            f"{f(g, 'ece_consistent', '.3f')} (noise {f(g, 'ece_consistent_noise_p95', '.3f')}) | "
            f"{f(g, 'median_km', '.0f')}/"
            f"{f(c, 'median_km', '.0f')}/{f(p, 'median_km', '.0f')} | {f(g, 'p90_km', '.0f')}/"
            f"{f(c, 'p90_km', '.0f')} | {f(g, 'country_accuracy', '.3f')}/"
            f"{f(c, 'country_accuracy', '.3f')}/{f(p, 'country_accuracy', '.3f')}"
        )
    checks: list[tuple[str, bool]] = []

    def worst(v: list[float], low: bool) -> float:
        a = np.array(v, dtype=float)
        return float(np.nanmax(a) if low else np.nanmin(a))

    med_g = np.array(g["median_km"])
    med_best = np.minimum(np.array(c["median_km"]), np.array(p["median_km"]))
    acc_g = np.array(g["country_accuracy"])
    acc_best = np.maximum(np.array(c["country_accuracy"]), np.array(p["country_accuracy"]))
    checks += [
        (
            f"{label}: right when p >= 0.9 >= 0.90 (every seed)",
            worst(g["accuracy_at_p90"], False) >= 0.9,
        ),
        (f"{label}: ECE <= 0.10 (every seed)", worst(g["ece"], True) <= 0.10),
        (
            f"{label}: consistent targets: right when p >= 0.9 >= 0.90 (every seed)",
            worst(g["accuracy_at_p90_consistent"], False) >= 0.9,
        ),
        (
            f"{label}: consistent targets: ECE <= 0.10 (every seed)",
            worst(g["ece_consistent"], True) <= 0.10,
        ),
        (
            f"{label}: ECE within a perfect predictor's chance band (every seed)",
            bool((np.array(g["ece"]) <= np.array(g["ece_noise_p95"]) + 1e-9).all()),
        ),
        (
            f"{label}: median <= better baseline (every seed)",
            bool((med_g <= med_best + 1e-9).all()),
        ),
        (
            f"{label}: country accuracy >= better baseline (every seed)",
            bool((acc_g >= acc_best - 1e-9).all()),
        ),
        (
            f"{label}: p90 <= cbg's (every seed)",
            bool((np.array(g["p90_km"]) <= np.array(c["p90_km"]) + 1e-9).all()),
        ),
        (
            f"{label}: truth in sound region (consistent) == 1",
            worst(g["truth_in_region_consistent"], False) >= 1.0 - 1e-12,
        ),
        (
            f"{label}: no wrong certification of a consistent target",
            worst(g["certified_wrong_consistent"], True) == 0.0,
        ),
    ]
    print("  by lowest RTT (median km / country accuracy, mean over seeds)")
    print(f"  {'bin':<12} {'n':>4} " + " ".join(f"{m:>22}" for m in METHODS))
    for (lo, hi), b in sorted(bins.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = [
            f"{np.mean(b[f'{m} km']):7.0f} / {np.mean(b[f'{m} country']):.2f}" for m in METHODS
        ]
        print(
            f"  {f'{lo}-{hi} ms':<12} {np.mean(b['n']):>4.0f} "
            + " ".join(f"{x:>22}" for x in cells)
        )
        gm = np.array(b["geoprobe km"])
        bm = np.minimum(np.array(b["cbg km"]), np.array(b["shortest-ping km"]))
        ga = np.array(b["geoprobe country"])
        ba = np.maximum(np.array(b["cbg country"]), np.array(b["shortest-ping country"]))
        checks.append(
            (
                f"{label}, {lo}-{hi} ms: median <= better baseline (mean over seeds)",
                gm.mean() <= bm.mean() + 1e-9,
            )
        )
        checks.append(
            (
                f"{label}, {lo}-{hi} ms: country >= better baseline (mean over seeds)",
                ga.mean() >= ba.mean() - 1e-9,
            )
        )
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="all,thinned,europe,americas")
    ap.add_argument("--k", default="all,25,50")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--targets", type=int, default=None)
    args = ap.parse_args()
    if not SHARED.exists():
        print(f"skipped: {SHARED} not present (the WonderProxy data lives in ../shared/data)")
        return 0
    from geoprobe.datasets import load_dataset

    sets = settings(load_dataset(SHARED))
    checks: list[tuple[str, bool]] = []
    for name in args.settings.split(","):
        for kk in args.k.split(","):
            k = None if kk == "all" else int(kk)
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            res = run(name, sets[name], k, seeds, args.targets)
            checks += report(name, k, res)
    print("\ntargets")
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
