"""A small world for attestation tests: the VM's home in Kansas, an impostor's place in Mexico.

RTTs are 1.1 x the great-circle distance at 100 km/ms plus 0.3 ms: physically possible, and
tight enough that the sound region around Wichita lies inside the US with hundreds of km to
spare (a loaded test machine adds milliseconds), while Monterrey's straddles the border.
"""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.geo.sphere import haversine_km

REPO = Path(__file__).resolve().parents[2]

HOME = "Wichita"  # the VM's honest place (US)
ELSEWHERE = "Monterrey"  # where the impostor VM really is (MX)
SERVERS = [
    ("Wichita", 37.69, -97.34, "US"),
    ("Monterrey", 25.69, -100.32, "MX"),
    ("Denver", 39.74, -104.99, "US"),
    ("Dallas", 32.78, -96.80, "US"),
    ("StLouis", 38.63, -90.20, "US"),
    ("Omaha", 41.26, -95.94, "US"),
    ("OklahomaCity", 35.47, -97.52, "US"),
    ("KansasCity", 39.10, -94.58, "US"),
]


def rtt_ms(a: str, b: str) -> float:
    pa = next(s for s in SERVERS if s[0] == a)
    pb = next(s for s in SERVERS if s[0] == b)
    return round(float(haversine_km(pa[1], pa[2], pb[1], pb[2])) / 100.0 * 1.1 + 0.3, 3)


def write_dataset(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "landmarks.csv").write_text(
        "id,lat,lon,country\n" + "".join(f"{n},{la},{lo},{c}\n" for n, la, lo, c in SERVERS)
    )
    pairs = itertools.combinations([s[0] for s in SERVERS], 2)
    (d / "rtts.csv").write_text(
        "src,dst,rtt_ms\n" + "".join(f"{a},{b},{rtt_ms(a, b)}\n" for a, b in pairs)
    )
    return d


def subprocess_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), **extra)


@contextmanager
def running_testbed(tmp: Path, at: str) -> Iterator[Path]:
    """``geoprobe testbed run`` in its own process, the VM placed at server ``at``; yields the
    catalogue path. Every server but the VM's own is a landmark."""
    runtime, catalogue = tmp / f"rt-{at}", tmp / f"cat-{at}.json"
    dataset = write_dataset(tmp / "world")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "testbed",
            "run",
            "--dataset",
            str(dataset),
            "--at-server",
            at,
            "--catalogue",
            str(catalogue),
            "--no-jitter",
        ],
        env=subprocess_env(GEOPROBE_RUNTIME_DIR=str(runtime)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not catalogue.exists():
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"testbed exited early: {out}")
            assert time.monotonic() < deadline, "catalogue never appeared"
            time.sleep(0.05)
        yield catalogue
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cli(*argv: str, state: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err)
    if state is not None:
        env.state_dir = state
    code = main(list(argv), env=env)
    return code, out.getvalue(), err.getvalue()
