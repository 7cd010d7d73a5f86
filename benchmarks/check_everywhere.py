"""With the testbed's VM at each consistent WonderProxy server, ``check --allow <its country>``
never says 2.

One ``geoprobe testbed run`` child process serves every WonderProxy server as a signed landmark
(jitter on); for each server S whose row breaks no speed-of-light bound, the VM is moved to S
(``testbed move`` over the control socket) and the other landmarks are probed for real over
loopback. Landmark S itself is not probed in that run (as if it were silent), so no run is answered
by a landmark in the VM's own data centre. The catalogue (and so the fitted calibration, which the
engine caches per catalogue) stays whole: landmark<->landmark RTTs are data an operator has anyway.

The verdict is taken IN-PROCESS with the library functions behind ``geoprobe check``
(``geoprobe.check.evaluate`` with ``geoprobe.settings.resolve_settings(--allow CC)``, default sound
basis), not by spawning 240 ``geoprobe check`` processes: same probing, same engine, same
exit-code rule, without 240 interpreter start-ups. Prints the exit-code histogram and every run that
would exit 2.

    python benchmarks/check_everywhere.py [--limit N] [--samples 3] [--basis sound|calibrated]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoprobe.datasets import Dataset, load_dataset
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, load_catalogue
from geoprobe.testbed import control

WONDERPROXY = REPO.parent / "shared" / "data" / "wonderproxy-pings-2020-07"


def consistent_servers(ds: Dataset) -> list[int]:
    """Servers the engine's vetting does not blame for a faster-than-light RTT (and with a country).

    A pair faster than light over the claimed distance proves one end lies; vetting removes,
    greedily, the server in most such pairs (both ends of a lone pair), so an honest server is not
    excluded just because a liar (La Ceiba, Belfast) shares a pair with it.
    """
    from geoprobe.geo.calibration import vet

    km = np.asarray(
        haversine_km(ds.lats[:, None], ds.lons[:, None], ds.lats[None, :], ds.lons[None, :])
    )
    liars = {x.index for x in vet(km, ds.rtt_min, ds.ids)}
    return [i for i in range(len(ds)) if i not in liars and ds.servers[i].country]


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--dataset", type=Path, default=WONDERPROXY)
    ap.add_argument("--limit", type=int, help="only the first N consistent servers")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--basis", choices=["sound", "calibrated"], default="sound")
    args = ap.parse_args()
    if not args.dataset.exists():
        print(f"dataset {args.dataset} not present (../shared/data); nothing measured")
        return 0
    ds = load_dataset(args.dataset)
    places = consistent_servers(ds)
    print(
        f"{len(places)} of {len(ds)} servers are consistent (no speed-of-light violation) and have a country"
    )
    if args.limit:
        places = places[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        env = dict(os.environ, GEOPROBE_RUNTIME_DIR=str(t / "rt"), PYTHONPATH=str(REPO))
        cat_path = t / "catalogue.json"
        # Placed by position (not at a server), so every server is a landmark; each run drops its
        # own.
        first = ds.servers[places[0]]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geoprobe",
                "testbed",
                "run",
                "--dataset",
                str(args.dataset),
                "--at",
                f"{first.lat},{first.lon}",
                "--catalogue",
                str(cat_path),
                "--name",
                "everywhere",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            while not cat_path.exists():
                if proc.poll() is not None:
                    return 1
                time.sleep(0.1)
            return _run(
                args,
                ds,
                places,
                load_catalogue(cat_path),
                control.registration("everywhere", t / "rt"),
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _run(
    args: argparse.Namespace,
    ds: Dataset,
    places: list[int],
    cat: Catalogue,
    reg: control.Registration,
) -> int:
    from geoprobe.check import evaluate
    from geoprobe.locate import fit_catalogue, locate_from_catalogue
    from geoprobe.measurement import min_rtts
    from geoprobe.probe import measure
    from geoprobe.settings import resolve_settings
    from geoprobe.testbed.world import landmark_ids

    ids = landmark_ids(ds)
    codes: collections.Counter[int] = collections.Counter()
    critical: list[str] = []
    t0 = time.monotonic()
    fit_catalogue(cat)  # fit the calibration once (the engine caches it per catalogue)
    print(f"calibration fitted in {time.monotonic() - t0:.0f} s", flush=True)
    t0 = time.monotonic()
    for n, i in enumerate(places, 1):
        s = ds.servers[i]
        control.request(reg, {"op": "move", "to": s.id})
        probed = [lm for lm in cat.landmarks if lm.id != ids[i]]
        rtts = min_rtts(measure(probed, "udp", samples=args.samples, timeout=2.0, pps=1000.0))
        fix = locate_from_catalogue(cat, rtts)
        settings = resolve_settings(s.country, None, args.basis)
        status, _verdict, text = evaluate(fix, settings)
        codes[int(status)] += 1
        if int(status) == 2:
            critical.append(f"{s.name} ({s.country}): {text}")
        if n % 20 == 0 or n == len(places):
            print(
                f"  {n}/{len(places)} placements, exit codes so far {dict(sorted(codes.items()))}, "
                f"{time.monotonic() - t0:.0f} s",
                flush=True,
            )
    print(
        f"check --allow <own country> (basis {args.basis}) over {len(places)} placements: "
        + ", ".join(f"exit {c}: {codes[c]}" for c in (0, 1, 2, 3))
    )
    for line in critical:
        print(f"  EXIT 2 at {line}")
    print("target (never exit 2):", "PASS" if not critical else f"FAIL ({len(critical)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
