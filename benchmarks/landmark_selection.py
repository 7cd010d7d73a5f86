"""Coarse-to-fine landmark selection against probing every landmark: figures, not a test.

    python benchmarks/landmark_selection.py [--limit 50] [--folds 8] [--seed S]

On WonderProxy (and on the built-in world), each server in turn is the target of a model fitted
without its fold (as ``geoprobe evaluate`` cross-fits temperatures). It is located twice: from
its RTTs to every other server, and from only those that ``locate``'s default selection probes
(a spread first round, then the nearest to each fix, at most ``--limit``). Prints median and p90
error, country accuracy, right when p >= 0.9, ECE, truth in the sound region, probes and solve
time for both. Probing time scales with the probes: at the default rate cap and 3 samples, each
landmark costs one round trip plus the pacing, so the probe count is the time that matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_settings import SHARED


def _row(ds: Any, t: int) -> dict[str, float]:
    return ds.rtts_to(t)


def _select(
    model: Any, row: dict[str, float], limit: int, countries: Any
) -> tuple[dict[str, float], int, float]:
    """What ``locate`` would probe for this target: the RTTs, how many probes, and the ms spent."""
    from geoprobe.geo import selection, solver

    probed: list[str] = []

    def probe(ix: list[int]) -> dict[str, float]:
        ids = [model.ids[i] for i in ix]
        probed.extend(ids)
        return {k: row[k] for k in ids if k in row}

    def first_fix(rtts: Any) -> tuple[float, float]:
        fx = solver.solve_model(model, model.ids, model.lat, model.lon, rtts, countries)
        return fx.lat, fx.lon

    t0 = time.perf_counter()
    chosen = selection.coarse_to_fine(
        model.ids, model.lat, model.lon, probe, first_fix, limit=limit
    )
    return chosen, len(probed), (time.perf_counter() - t0) * 1000


def locate_both(ds: Any, limit: int, folds: int, seed: int) -> dict[str, dict[str, list[Any]]]:
    from geoprobe.geo import solver
    from geoprobe.geo.calibration import fit_arrays
    from geoprobe.geo.countries import default_index
    from geoprobe.geo.sphere import haversine_km

    countries = default_index()
    rng = np.random.default_rng(seed)
    n = len(ds)
    fold = rng.permutation(n) % folds
    out: dict[str, dict[str, list[Any]]] = {
        m: {"err": [], "right": [], "p": [], "tin": [], "probes": [], "ms": []}
        for m in ("all", "selected")
    }
    truth = [s.country for s in ds.servers]
    for f in range(folds):
        keep = np.flatnonzero(fold != f)
        model = fit_arrays(
            [ds.ids[i] for i in keep], ds.lats[keep], ds.lons[keep], ds.rtt_min[np.ix_(keep, keep)]
        )
        solver.self_tempering(
            model, countries, [truth[i] for i in keep], select=limit, seed=seed + f
        ).apply(model)
        for t in np.flatnonzero(fold == f).tolist():
            row = {k: v for k, v in _row(ds, t).items() if k in model.index}
            if not row:
                continue
            chosen, n_probed, sel_ms = _select(model, row, limit, countries)
            for name, rtts, extra in (("all", row, 0.0), ("selected", chosen, sel_ms)):
                t1 = time.perf_counter()
                fix = solver.solve_model(model, model.ids, model.lat, model.lon, rtts, countries)
                ms = (time.perf_counter() - t1) * 1000 + extra
                s = ds.servers[t]
                o = out[name]
                o["err"].append(float(haversine_km(fix.lat, fix.lon, s.lat, s.lon)))
                o["right"].append(fix.country == truth[t])
                o["p"].append(fix.probability)
                o["tin"].append(
                    fix.sound_region is not None and fix.sound_region.contains(s.lat, s.lon)
                )
                o["probes"].append(len(rtts) if name == "all" else n_probed)
                o["ms"].append(ms)
        print(f"  ... fold {f + 1}/{folds}", file=sys.stderr, flush=True)
    return out


def show(title: str, out: dict[str, dict[str, list[Any]]]) -> None:
    from geoprobe.evaluate import expected_calibration_error

    print(f"\n{title}")
    print(f"  {'':<36} {'all landmarks':>16} {'selected':>16}")
    rows: dict[str, list[str]] = {}
    for name in ("all", "selected"):
        o = out[name]
        err = np.array(o["err"])
        right = np.array(o["right"], dtype=float)
        p = np.array(o["p"])
        hi = p >= 0.9
        vals = {
            "targets": f"{len(err)}",
            "median error (km)": f"{np.median(err):.0f}",
            "p90 error (km)": f"{np.percentile(err, 90):.0f}",
            "country accuracy": f"{right.mean():.3f}",
            "right when p >= 0.9": f"{right[hi].mean():.3f}" if hi.any() else "-",
            "share with p >= 0.9": f"{hi.mean():.3f}",
            "ECE": f"{expected_calibration_error(p, right):.3f}",
            "truth in sound region": f"{np.mean(o['tin']):.3f}",
            "landmarks probed (mean)": f"{np.mean(o['probes']):.0f}",
            "solve ms (selection: all its fixes)": f"{np.mean(o['ms']):.0f}",
        }
        for k, v in vals.items():
            rows.setdefault(k, []).append(v)
    for k, v in rows.items():
        print(f"  {k:<36} {v[0]:>16} {v[1]:>16}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--folds", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from geoprobe.testbed.builtin import builtin_dataset

    show(
        f"built-in world ({len(builtin_dataset())} landmarks, limit {min(args.limit, 40)})",
        locate_both(builtin_dataset(), min(args.limit, 40), args.folds, args.seed),
    )
    if not SHARED.exists():
        print(f"skipped WonderProxy: {SHARED} not present")
        return 0
    from geoprobe.datasets import load_dataset

    ds = load_dataset(SHARED)
    show(
        f"WonderProxy ({len(ds)} servers, limit {args.limit})",
        locate_both(ds, args.limit, args.folds, args.seed),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
