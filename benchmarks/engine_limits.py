"""How far below the engine's median error the WonderProxy data lets any estimator go: figures, not
a test.

    python benchmarks/engine_limits.py [--seed S]

The engine's targets (docs/engine.md) are a median error of at most 0.85 x CBG's in the same run
(about 200 km here) and a country accuracy of at least 0.75. This script prints what bounds those
figures on this data:

1. landmark spacing: each server's distance to its nearest other server. A target whose nearest
   landmark is 200 km away must be placed *between* landmarks to do better than 200 km;
2. the per-target oracle of the three methods: the median error if one always knew, afterwards,
   which of geoprobe, cbg and shortest-ping came closest;
3. error and country accuracy by the target's lowest RTT: where the misses are;
4. the lowest RTT of hundreds is a lucky path: how much farther the k-th lowest-RTT landmark really
   is than the pooled distance-given-RTT model says.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SHARED = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wonderproxy-pings-2020-07"
)
BINS_MS = ((0, 4), (4, 8), (8, 13), (13, 20), (20, 40), (40, 1000))


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not SHARED.exists():
        print(f"skipped: {SHARED} not present (the WonderProxy data lives in ../shared/data)")
        return 0

    from geoprobe.datasets import load_dataset
    from geoprobe.evaluate import evaluate
    from geoprobe.geo.calibration import R_EDGES, fit_arrays, rtt_bin
    from geoprobe.geo.countries import default_index
    from geoprobe.geo.sphere import distance_matrix_km

    ds = load_dataset(SHARED)
    n = len(ds)
    km = distance_matrix_km(ds.lats, ds.lons, ds.lats, ds.lons)
    np.fill_diagonal(km, np.inf)
    sym = np.fmin(ds.rtt_min, ds.rtt_min.T)
    np.fill_diagonal(sym, np.nan)
    lowest = np.nanmin(np.where(np.isfinite(sym), sym, np.inf), axis=1)

    print(f"1. landmark spacing, {n} servers")
    nn = km.min(axis=1)
    print(
        f"  distance to the nearest other server: median {np.median(nn):.1f} km, "
        f"p25 {np.percentile(nn, 25):.1f} km, p75 {np.percentile(nn, 75):.1f} km"
    )

    print("\n2. leave-one-out of the three methods (about a minute)", flush=True)
    ev = evaluate(ds, seed=args.seed, countries=default_index())
    err: dict[str, dict[str, float]] = defaultdict(dict)
    right: dict[str, dict[str, bool]] = defaultdict(dict)
    for r in ev.records:
        if r.error_km is not None:
            err[r.target][r.method] = r.error_km
            right[r.target][r.method] = r.country == r.true_country
    methods = list(ev.methods)
    table = np.array([[err[t].get(m, np.inf) for m in methods] for t in err])
    cbg = float(np.median(table[:, methods.index("cbg")]))
    for k, m in enumerate(methods):
        print(f"  {m:<14} median {np.median(table[:, k]):7.1f} km")
    print(f"  target: 0.85 x cbg = {0.85 * cbg:.1f} km")
    print(
        f"  oracle (best of the three per target, known afterwards): median {np.median(table.min(axis=1)):.1f} km"
    )

    print("\n3. by the target's lowest RTT")
    print(
        f"  {'lowest RTT':<12} {'targets':>7} "
        + " ".join(f"{m + ' km':>17}" for m in methods)
        + " "
        + " ".join(f"{m + ' country':>22}" for m in methods)
    )
    index = {lid: i for i, lid in enumerate(ds.ids)}
    for lo, hi in BINS_MS:
        ts = [t for t in err if lo <= lowest[index[t]] < hi]
        if not ts:
            continue
        med = [np.median([err[t][m] for t in ts]) for m in methods]
        acc = [np.mean([right[t][m] for t in ts]) for m in methods]
        print(
            f"  {f'{lo}-{hi} ms':<12} {len(ts):>7} "
            + " ".join(f"{v:>17.0f}" for v in med)
            + " "
            + " ".join(f"{v:>22.2f}" for v in acc)
        )

    print("\n4. the lowest RTT is a lucky path: u = distance / the landmark's bestline reach")
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    s = model.rtt
    reach = np.maximum(s - model.intercept[:, None], 1e-3) / model.slope[:, None]
    dist = np.where(np.isfinite(km), km, 0.0)
    u = dist / reach
    fin = np.isfinite(s)
    rbin = rtt_bin(np.where(fin, s, 1.0))
    pooled = np.array(
        [
            np.median(u[fin & (rbin == b)]) if (fin & (rbin == b)).sum() >= 5 else np.nan
            for b in range(len(R_EDGES) - 1)
        ]
    )
    order = np.argsort(np.where(fin, s, np.inf), axis=0)  # column t: landmarks by RTT from target t
    for k in (1, 2, 3, 5, 10, 20, 40):
        lm = order[k - 1]
        ok = fin[lm, np.arange(n)]
        uk = u[lm, np.arange(n)][ok]
        base = pooled[rbin[lm, np.arange(n)][ok]]
        print(
            f"  rank {k:>2}: median u at the truth {np.median(uk):.3f}, pooled median for the same RTTs "
            f"{np.nanmedian(base):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
