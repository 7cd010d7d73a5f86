"""UDP signed-echo accuracy and wall time on loopback, against its targets.

Runs N signed responders in a child process (as the testbed does), spread over the globe, each
holding its reply for 1.5x the fibre-light RTT from an emulated VM in Frankfurt. Probes them from
this process and prints: the median |measured RTT - injected delay|, the NTP-style clock offset
error, and the wall time of ``measure()`` and of a whole ``geoprobe locate`` process against the
target 1.5 x (samples x largest injected RTT) + 1 s.

    python benchmarks/probe_udp_accuracy.py [--landmarks 200] [--samples 3] [--pps 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.probe import keys, measure
from geoprobe.probe.responder import start_responder

PORT = 7207
VM = (50.11, 8.68)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (lat1, lon1, lat2, lon2))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def _address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def _serve(
    specs: list[tuple[str, bytes, float, float, float, float]],
    ready: Any,
    stop: Any,
    offset_ns: int,
) -> None:
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    async def main() -> None:
        transports = []
        for i, (lid, der, lat, lon, delay, jitter) in enumerate(specs):
            key: Any = load_der_private_key(der, None)

            def draw(d: float = delay, j: float = jitter) -> float:
                return d + random.expovariate(1 / j) if j > 0 else d

            tr, _ = await start_responder(
                key,
                lid,
                lat,
                lon,
                host=_address(i),
                port=PORT,
                delay=draw,
                clock=lambda: time.time_ns() + offset_ns,
            )
            transports.append(tr)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for tr in transports:
            tr.close()

    asyncio.run(main())


def main() -> None:
    from cryptography.hazmat.primitives import serialization

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--landmarks", type=int, default=200)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--pps", type=float, default=1000.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="mean of exponential extra delay")
    ap.add_argument("--offset-ms", type=float, default=3.0, help="emulated landmark clock offset")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    specs = []
    landmarks = []
    injected: dict[str, float] = {}
    for i in range(args.landmarks):
        key = keys.generate()
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        lid, lat, lon = f"lm{i:03d}", rng.uniform(-60, 70), rng.uniform(-180, 180)
        delay = (1.0 + 1.5 * _km(*VM, lat, lon) / 100.0) / 1e3
        specs.append((lid, der, lat, lon, delay, args.jitter_ms / 1e3))
        pub = keys.public_raw(key)
        landmarks.append(
            Landmark(
                id=lid,
                lat=lat,
                lon=lon,
                address=_address(i),
                udp_port=PORT,
                pubkey=pub,
                key_id=keys.key_id(pub),
            )
        )
        injected[lid] = delay * 1e3
    ready, stop = mp.Event(), mp.Event()
    proc = mp.Process(
        target=_serve, args=(specs, ready, stop, int(args.offset_ms * 1e6)), daemon=True
    )
    proc.start()
    try:
        if not ready.wait(60):
            raise SystemExit("responders did not start")
        t = time.monotonic()
        ms = measure(landmarks, "udp", samples=args.samples, pps=args.pps)
        wall = time.monotonic() - t
        with tempfile.TemporaryDirectory() as tmp:
            cat = Path(tmp) / "catalogue.json"
            Catalogue(landmarks=landmarks, name="bench").save(cat)
            t = time.monotonic()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "geoprobe",
                    "locate",
                    "--landmarks",
                    str(cat),
                    "--samples",
                    str(args.samples),
                    "--pps",
                    str(args.pps),
                    "--format",
                    "json",
                ],
                check=False,
                capture_output=True,
                text=True,
            )
            locate_wall = time.monotonic() - t
    finally:
        stop.set()
        proc.join(5)
    errs = [m.min_rtt - injected[m.landmark_id] for m in ms if m.min_rtt is not None]
    offs = [o - args.offset_ms for m in ms for o in m.clock_offsets_ms]
    failed = [m.landmark_id for m in ms if not m.ok]
    largest = max(injected.values()) / 1e3
    target = 1.5 * (args.samples * largest) + 1.0
    abs_errs = sorted(abs(e) for e in errs)
    print(f"landmarks {len(ms)}, answered {len(errs)}, failed {len(failed)}")
    print(
        f"|measured - injected| ms: median {statistics.median(abs_errs):.3f}  "
        f"p90 {abs_errs[int(0.9 * len(abs_errs))]:.3f}  max {abs_errs[-1]:.3f}  "
        f"(signed mean {statistics.mean(errs):+.3f})  target median <= 0.3"
    )
    print(
        f"clock offset error ms: median {statistics.median(offs):+.3f}  "
        f"max |.| {max(abs(o) for o in offs):.3f}"
    )
    print(f"largest injected RTT {largest * 1e3:.0f} ms; target wall time {target:.2f} s")
    print(f"measure() wall time {wall:.2f} s ({'ok' if wall <= target else 'MISSED'})")
    state = (
        "ok"
        if locate_wall <= target and done.returncode == 0
        else f"MISSED (exit {done.returncode})"
    )
    print(
        f"geoprobe locate process wall time {locate_wall:.2f} s, start-up and solving included ({state})"
    )
    if done.returncode != 0:
        print(done.stderr.strip()[-300:])


if __name__ == "__main__":
    main()
