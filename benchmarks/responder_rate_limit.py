"""Signed replies a single source can get from `geoprobe landmark serve`, with and without the
per-source rate limit, and whether probing at the watch's and locate's rates loses anything.

Starts `geoprobe landmark serve` as a child process on loopback (127.0.0.x, port 0), floods it
from one source for a few seconds (a sender thread as fast as it can, a receiver counting
replies), and prints replies per second. Then probes it as the watch does (3 samples a round,
back-to-back rounds at the shortest fast interval) and as the largest `locate` does (100 samples),
and prints how many samples were answered.

    python benchmarks/responder_rate_limit.py [--seconds 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from geoprobe.landmarks import parse_landmark
from geoprobe.probe import keys, measure
from geoprobe.probe.protocol import make_request

HOST = "127.0.0.241"
SOURCE = "127.0.0.242"


def serve(key: Path, extra: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoprobe", "landmark", "serve", "--key", str(key)]
        + ["--id", "bench", "--lat", "50.11", "--lon", "8.68", "--bind", HOST, "--port", "0"]
        + extra,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    header = proc.stdout.readline()
    lines = []
    while not (line := proc.stdout.readline()).startswith("}"):
        lines.append(line)
    entry = json.loads("".join(lines) + "}")
    print(f"  {header.strip()}")
    return proc, entry


def flood(port: int, seconds: float) -> tuple[int, int]:
    """(requests sent, replies received) from one source address in ``seconds``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((SOURCE, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.settimeout(0.2)
    got = 0
    stop = threading.Event()

    def receive() -> None:
        nonlocal got
        while not stop.is_set():
            try:
                s.recvfrom(2048)
                got += 1
            except TimeoutError:
                continue

    rx = threading.Thread(target=receive)
    rx.start()
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendto(make_request(os.urandom(32)), (HOST, port))
            sent += 1
        except OSError:  # a full send buffer
            time.sleep(0.0001)
    time.sleep(0.5)  # replies in flight
    stop.set()
    rx.join()
    s.close()
    return sent, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys.keygen(Path(tmp))
        key = Path(tmp) / "landmark.key"
        for label, extra in (("without a limit", ["--rate-limit", "0"]), ("default limit", [])):
            print(f"landmark serve, {label}:")
            proc, entry = serve(key, extra)
            try:
                lm = parse_landmark(entry)
                assert lm.udp_port is not None
                sent, got = flood(lm.udp_port, args.seconds)
                print(
                    f"  flood from one source: {sent / args.seconds:,.0f} requests/s sent, "
                    f"{got / args.seconds:,.0f} signed replies/s received"
                )
                time.sleep(100 / 20 + 0.5)  # let the source's bucket refill after the flood
                answered = total = 0
                t0 = time.monotonic()
                for _ in range(args.rounds):
                    [m] = measure([lm], "udp", samples=3, timeout=1.0)
                    answered += len(m.rtts_ms)
                    total += 3
                    time.sleep(0.2)  # the watch's shortest fast interval
                span = time.monotonic() - t0
                print(
                    f"  watch-rate probing ({args.rounds} rounds of 3 samples, every 0.2 s, "
                    f"{total / span:.1f} requests/s): {answered}/{total} answered"
                )
                time.sleep(100 / 20 + 0.5)
                [m] = measure([lm], "udp", samples=100, timeout=1.0)
                print(f"  locate --samples 100: {len(m.rtts_ms)}/100 answered")
            finally:
                proc.terminate()
                proc.wait(10)
                assert proc.stdout is not None
                print(f"  {proc.stdout.read().strip()}")


if __name__ == "__main__":
    main()
