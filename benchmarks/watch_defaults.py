"""What `geoprobe watch` costs and buys at its defaults, on the WonderProxy loopback testbed.

Starts `geoprobe testbed run` (all landmarks) and `geoprobe watch --landmarks CAT --allow DE
--events F` as real processes (plus `--metrics`, to read when the baseline is ready, and `-v`
for the log: neither changes what the watch does), then:

1. time to baseline: from starting the watch to `geoprobe_watch_warming_up 0`;
2. the stationary part (`--stationary` s): probe packets per second (the testbed's count of
   replies, which covers sentinels and full rounds alike), the watch's CPU time per second, and
   every migration event (there should be none);
3. `--moves` cross-border moves over 500 km with `geoprobe testbed move`, alternating between
   Germany (allowed) and other countries; after each, the time until the next
   `io.geoprobe.migration.confirmed` event, then a pause until the baseline is ready again and
   `--settle` seconds more.

Usage: python benchmarks/watch_defaults.py [--moves 10] [--stationary 120] [--settle 20]
       [--dataset DIR] [--out DIR] [-- extra watch options, e.g. --sentinels 0]
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
import threading
import time
from pathlib import Path
from typing import Any

from geoprobe import events

DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "wonderproxy-pings-2020-07"
HOME = "Frankfurt"
GERMANY = ("Frankfurt", "Hamburg", "Munich")
# (to, km from the previous place): every hop crosses the DE border and is over 500 km.
ROUTE = [
    ("Madrid", 1420),
    ("Frankfurt", 1420),
    ("Rome", 960),
    ("Hamburg", 1300),
    ("Lisbon", 2190),
    ("Munich", 1990),
    ("Stockholm", 1320),
    ("Frankfurt", 1190),
    ("Warsaw", 890),
    ("Hamburg", 680),
    ("London", 720),
    ("Frankfurt", 640),
]


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


class Run:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.tmp = Path(args.out or tempfile.mkdtemp(prefix="geoprobe-watch-defaults-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = dict(
            os.environ,
            GEOPROBE_RUNTIME_DIR=str(self.tmp / "run"),
            GEOPROBE_STATE_DIR=str(self.tmp / "state"),
        )
        self.gp = [sys.executable, "-m", "geoprobe"]
        self.cat = self.tmp / "catalogue.json"
        self.ev = self.tmp / "events.jsonl"
        self.metrics = self.tmp / "metrics.prom"
        self.extra = extra
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log: list[tuple[float, str]] = []

    def testbed(self, *req: str) -> dict[str, Any]:
        out = subprocess.run(
            [*self.gp, "testbed", *req, "--name", "defaults"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return dict(json.loads(out.stdout)) if out.stdout.strip().startswith("{") else {}

    def answered(self) -> int:
        return int(self.testbed("status")["answered"])

    def warming_up(self) -> bool | None:
        try:
            text = self.metrics.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("geoprobe_watch_warming_up "):
                return float(line.split()[1]) > 0
        return None

    def wait_baseline(self, since: float, limit: float = 300.0) -> float:
        while self.warming_up() is not False:
            if time.monotonic() - since > limit:
                raise SystemExit("the watch built no baseline")
            time.sleep(0.1)
        return time.monotonic() - since

    def start(self) -> tuple[subprocess.Popen[bytes], float]:
        tb = subprocess.Popen(
            [*self.gp, "testbed", "run", "--dataset", str(self.args.dataset), "--at-server", HOME]
            + ["--catalogue", str(self.cat), "--name", "defaults"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "testbed.log", "w"),  # noqa: SIM115
        )
        self.procs.append(tb)
        t0 = time.monotonic()
        while not self.cat.exists():
            if time.monotonic() - t0 > 180 or tb.poll() is not None:
                raise SystemExit("the testbed did not start")
            time.sleep(0.2)
        cmd = [*self.gp, "watch", "--landmarks", str(self.cat), "--allow", "DE"]
        cmd += ["--events", str(self.ev), "--metrics", str(self.metrics), "-v", *self.extra]
        started = time.monotonic()
        watch = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(watch)
        threading.Thread(target=self._log, args=(watch, started), daemon=True).start()
        return watch, started

    def _log(self, watch: subprocess.Popen[bytes], started: float) -> None:
        """The watch's log, each line stamped with seconds since the watch started."""
        assert watch.stderr is not None
        with open(self.tmp / "watch.log", "w") as f:
            for raw in watch.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.log.append((time.monotonic(), line))
                f.write(f"{time.monotonic() - started:9.2f} {line}\n")
                f.flush()

    def since(self, t: float, word: str) -> float | None:
        """Seconds from ``t`` to the first log line after it that holds ``word``."""
        return next(
            (round(x - t, 2) for x, line in list(self.log) if x >= t and word in line), None
        )

    def stop(self) -> None:
        for p in reversed(self.procs):
            _stop(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--stationary", type=float, default=120.0, help="seconds at rest")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds at rest before a move")
    ap.add_argument("--deadline", type=float, default=90.0, help="give up on a move after this")
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--out", type=Path, help="directory for logs and events (default: a temp dir)")
    ap.add_argument("extra", nargs="*", help="extra watch options (after --)")
    args = ap.parse_args(argv)
    if not (args.dataset / "servers-2020-07-19.csv").exists():
        print(f"no WonderProxy data at {args.dataset}", file=sys.stderr)
        return 2
    run = Run(args, args.extra)
    result: dict[str, Any] = {"dir": str(run.tmp), "watch_extra": args.extra}
    try:
        watch, started = run.start()
        result["baseline_s"] = round(run.wait_baseline(started), 2)
        result["load_at_baseline"] = _load()
        # Stationary: every probe the testbed answers, the watch's CPU, and any migration event.
        n0, c0, t0 = run.answered(), _cpu_s(watch.pid), time.monotonic()
        seen = len(_events(run.ev))
        time.sleep(args.stationary)
        n1, c1, t1 = run.answered(), _cpu_s(watch.pid), time.monotonic()
        quiet = [e for e in _events(run.ev)[seen:] if e["type"] != events.FIX]
        result["stationary_s"] = round(t1 - t0, 1)
        result["probes_per_s_at_rest"] = round((n1 - n0) / (t1 - t0), 2)
        result["cpu_share_at_rest"] = round((c1 - c0) / (t1 - t0), 4)
        result["events_at_rest"] = [e["type"].rsplit(".", 1)[-1] for e in quiet]
        result["load_at_rest_end"] = _load()
        moves: list[dict[str, Any]] = []
        for i in range(args.moves):
            to, km = ROUTE[i % len(ROUTE)]
            seen = len(_events(run.ev))
            t_move = time.monotonic()
            run.testbed("move", "--to-server", to)
            confirmed = None
            while time.monotonic() - t_move < args.deadline:
                new = [e for e in _events(run.ev)[seen:] if e["type"] == events.CONFIRMED]
                if new:
                    confirmed = new[0]
                    break
                time.sleep(0.05)
            took = None if confirmed is None else time.monotonic() - t_move
            d = confirmed["data"] if confirmed else {}
            row = {
                "to": to,
                "km": km,
                "confirmed_s": None if took is None else round(took, 2),
                "trigger_s": run.since(t_move, "full round now"),
                "suspect_s": run.since(t_move, "-> suspect"),
                "crossing": d.get("crossing"),
                "from": d.get("from"),
                "to_country": d.get("to"),
                "load": _load(),
            }
            moves.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            # The sentinels are armed again once the new place has its baseline (or, outside the
            # allowed set, at once): only then is the watch back at rest.
            armed = time.monotonic()
            while run.since(t_move, "sentinels: ") is None:
                if time.monotonic() - armed > args.deadline * 2:
                    raise SystemExit("the watch did not re-arm its sentinels after a move")
                time.sleep(0.2)
            time.sleep(args.settle)
        if moves:
            times = [m["confirmed_s"] for m in moves if m["confirmed_s"] is not None]
            result["moves"] = moves
            result["confirmed"] = f"{len(times)}/{len(moves)}"
            result["median_confirm_s"] = round(statistics.median(times), 2) if times else None
            result["max_confirm_s"] = max(times) if times else None
            # Into Germany is no crossing; out of it is one (true, or null when unprovable).
            result["wrong_verdicts"] = sum(
                1 for m in moves if m["crossing"] is (m["to"] in GERMANY)
            )
        result["watch_exit"] = watch.poll()
    finally:
        run.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
