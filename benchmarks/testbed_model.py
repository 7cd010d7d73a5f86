"""How well ``testbed run --at LAT,LON`` guesses RTTs: leave-one-out over the WonderProxy servers.

For every third server S, the distance model predicts S's row from S's position with S itself
hidden as a neighbour (the per-landmark lines are still fitted on all rows), and the prediction is
compared with S's measured minimum RTTs.

    python benchmarks/testbed_model.py [--dataset DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoprobe.datasets import load_dataset
from geoprobe.testbed.world import World

WONDERPROXY = REPO.parent / "shared" / "data" / "wonderproxy-pings-2020-07"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=WONDERPROXY)
    args = ap.parse_args()
    if not args.dataset.exists():
        print(f"dataset {args.dataset} not present (../shared/data); nothing measured")
        return 0
    ds = load_dataset(args.dataset)
    model = World(ds, list(range(len(ds))), jitter=False).model
    err: list[float] = []
    rel: list[float] = []
    for s in range(0, len(ds), 3):
        pred = np.array(
            [p.min_ms for p in model.predict(ds.servers[s].lat, ds.servers[s].lon, exclude=s)]
        )
        act = np.fmin(ds.rtt_min[s], ds.rtt_min[:, s])
        ok = np.isfinite(act)
        ok[s] = False
        err += np.abs(pred[ok] - act[ok]).tolist()
        rel += (np.abs(pred[ok] - act[ok]) / act[ok]).tolist()
    print(
        f"distance model, leave-one-out over {len(range(0, len(ds), 3))} servers, {len(err)} pairs: "
        f"median |predicted - measured| {np.median(err):.1f} ms, median relative error "
        f"{100 * np.median(rel):.0f}%, p90 {100 * np.percentile(rel, 90):.0f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
