"""The watch acceptance run, full length, on a loopback testbed; prints timings.

Three scenarios, each with its own testbed and `geoprobe watch --allow <A's country>`:

* crossing:   run `--quiet` seconds at A, `geoprobe testbed move` to B (other country, > 500 km);
              pass when a confirmed crossing with from = A's country and to = B's (or null) arrives
              within `--deadline` seconds of the move.
* same:       the same with a server C in A's country: pass when no crossing is confirmed.
* stationary: the same length without a move: pass when no migration event appears.

Usage: python benchmarks/watch_acceptance.py [--dataset DIR] [--a Frankfurt] [--b Madrid] [--c
Munich]
       [--quiet 60] [--interval 5] [--deadline 10] [--repeat N] [--only crossing|same|stationary]
(default world: the testbed's built-in one; with --dataset, server names or ids of that dataset.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from geoprobe import events


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _stop(p: subprocess.Popen[bytes]) -> int:
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def scenario(name: str, args: argparse.Namespace, to: str | None, allow: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"geoprobe-accept-{name}-"))
    env = dict(
        os.environ, GEOPROBE_RUNTIME_DIR=str(tmp / "run"), GEOPROBE_STATE_DIR=str(tmp / "state")
    )
    cat, ev = tmp / "catalogue.json", tmp / "events.jsonl"
    gp = [sys.executable, "-m", "geoprobe"]
    tb_args = ["testbed", "run", "--at-server", args.a, "--catalogue", str(cat), "--name", "accept"]
    if args.dataset:
        tb_args += ["--dataset", str(args.dataset)]
    tb = subprocess.Popen(
        gp + tb_args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    watch = None
    log = open(tmp / "watch.log", "w")  # noqa: SIM115  (closed in the finally below)
    try:
        t0 = time.monotonic()
        while not cat.exists():
            if time.monotonic() - t0 > 120 or tb.poll() is not None:
                raise SystemExit(f"{name}: the testbed did not start")
            time.sleep(0.2)
        watch = subprocess.Popen(
            gp
            + [
                "watch",
                "--landmarks",
                str(cat),
                "--allow",
                allow,
                "--events",
                str(ev),
                "--state",
                str(tmp / "state"),
                "--interval",
                str(args.interval),
                "--signals",
                "clock",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        while not any(e["type"] == events.FIX for e in _events(ev)):
            if time.monotonic() - t0 > 180:
                raise SystemExit(f"{name}: the watch produced no fix")
            time.sleep(0.2)
        armed = time.monotonic()
        time.sleep(args.quiet)
        before = [e for e in _events(ev) if e["type"] != events.FIX]
        moved_at = time.monotonic()
        if to is not None:
            subprocess.run(
                gp + ["testbed", "move", "--to-server", to, "--name", "accept"],
                env=env,
                check=True,
                capture_output=True,
            )
        confirmed_at = None
        while time.monotonic() - moved_at < max(args.deadline * 3, 30):
            conf = [e for e in _events(ev) if e["type"] == events.CONFIRMED]
            if conf and confirmed_at is None:
                confirmed_at = time.monotonic()
                break
            time.sleep(0.1)
        if to is None:
            time.sleep(max(0.0, args.quiet - (time.monotonic() - moved_at)))
        migration = [e for e in _events(ev) if e["type"] != events.FIX]
        conf = [e["data"] for e in migration if e["type"] == events.CONFIRMED]
        return {
            "scenario": name,
            "quiet_s": round(moved_at - armed, 1),
            "events_before_move": len(before),
            "confirmed_after_s": None
            if confirmed_at is None
            else round(confirmed_at - moved_at, 2),
            "confirmed": [
                {k: d.get(k) for k in ("crossing", "from", "to", "distance_km")} for d in conf
            ],
            "migration_events": [e["type"].rsplit(".", 1)[-1] for e in migration],
            "dir": str(tmp),
        }
    finally:
        if watch is not None:
            _stop(watch)
        _stop(tb)
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--a", default="Frankfurt")
    ap.add_argument("--allow", default="DE", help="A's country")
    ap.add_argument("--b", default="Madrid", help="a server in another country > 500 km from A")
    ap.add_argument("--b-country", default="ES", help="B's country (the crossing's `to`, or null)")
    ap.add_argument("--c", default="Munich", help="a server in A's country")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the crossing scenario this many times"
    )
    ap.add_argument("--quiet", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--only", choices=("crossing", "same", "stationary"))
    args = ap.parse_args(argv)
    ok = True
    plan = [("crossing", args.b)] * args.repeat + [("same", args.c), ("stationary", None)]
    took: list[float] = []
    for name, to in plan:
        if args.only and name != args.only:
            continue
        r = scenario(name, args, to, args.allow)
        if name == "crossing":
            c = r["confirmed"][0] if r["confirmed"] else {}
            passed = (
                r["events_before_move"] == 0
                and c.get("crossing") is True
                and c.get("from") == args.allow
                and c.get("to") in (args.b_country, None)
                and r["confirmed_after_s"] is not None
                and r["confirmed_after_s"] <= args.deadline
            )
            if r["confirmed_after_s"] is not None:
                took.append(r["confirmed_after_s"])
        elif name == "same":
            passed = r["events_before_move"] == 0 and not any(c["crossing"] for c in r["confirmed"])
        else:
            passed = not r["migration_events"]
        ok &= passed
        print(f"{name:10s} {'PASS' if passed else 'FAIL'}  {json.dumps(r)}", flush=True)
    if took:
        took.sort()
        print(
            f"move -> confirmed crossing: median {statistics.median(took):.2f} s, max {took[-1]:.2f} s over "
            f"{len(took)} run(s) (interval {args.interval:g} s, deadline {args.deadline:g} s)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
