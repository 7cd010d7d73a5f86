"""The lab's two sites: a namespace each, with its own landmark testbed and its support services.

A site is placed at a WonderProxy server: its testbed answers the guest's probes with the RTTs
measured from that server, so a guest moved from site A to site B sees its landmarks' RTTs jump as
if the VM had crossed from A's city to B's. Both sites run the same landmarks, ports and keys, so
the one catalogue in the guest stays valid after the move, exactly as in a real cloud.
"""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from geoprobe.geo.sphere import haversine_km

from .netns import Namespace

REPO = Path(__file__).resolve().parents[2]
WONDERPROXY = REPO.parent / "shared" / "data" / "wonderproxy-pings-2020-07"
CLOCK_PORT = 47000
WEBHOOK_PORT = 18080

# The testbed engineer's command; {placeholders} are filled per site. Both sites share --keys-dir.
TESTBED_COMMAND = (
    "{python} -m geoprobe testbed run --dataset {dataset} --at-server {server} "
    "--catalogue {catalogue} --bind 127.0.0.1 --advertise 10.0.2.2 --keys-dir {keys}"
)


@dataclass(frozen=True)
class Place:
    """A WonderProxy server a site stands at, with its ISO country code for the policy and
    report."""

    server: str
    country: str
    lat: float
    lon: float


def find_place(server: str, country: str, dataset: Path = WONDERPROXY) -> Place:
    path = dataset / "servers-2020-07-19.csv"
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["name"].lower() == server.lower():
                return Place(
                    row["name"], country.upper(), float(row["latitude"]), float(row["longitude"])
                )
    raise ValueError(f"{path}: no server named {server!r}")


def distance_km(a: Place, b: Place) -> float:
    return float(haversine_km(a.lat, a.lon, b.lat, b.lon))


@dataclass
class Site:
    label: str
    place: Place
    workdir: Path
    source: Path = REPO  # where the geoprobe package comes from (the lab's snapshot of it)
    ns: Namespace = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ns = Namespace(f"geoprobe-lab-{self.label.lower()}-{os.getpid()}")

    @property
    def webhook_log(self) -> Path:
        return self.workdir / f"webhook-{self.label}.jsonl"

    def start(self, testbed: bool, keys: Path, catalogue: Path | None = None) -> Site:
        self.ns.create()
        links = self.ns.links()
        if links != ["lo"]:
            raise RuntimeError(f"namespace {self.ns.name} has links {links}; expected only lo")
        self.webhook_log.touch()
        self._spawn(
            "siteserver",
            [
                sys.executable,
                "-m",
                "benchmarks.lab.siteserver",
                "--site",
                self.label,
                "--udp",
                str(CLOCK_PORT),
                "--http",
                str(WEBHOOK_PORT),
                "--log",
                str(self.webhook_log),
            ],
        )
        if testbed:
            cat = catalogue or self.workdir / f"catalogue-{self.label}.json"
            cmd = TESTBED_COMMAND.format(
                python=shlex.quote(sys.executable),
                dataset=WONDERPROXY,
                server=shlex.quote(self.place.server),
                catalogue=cat,
                keys=keys,
            )
            self._spawn("testbed", shlex.split(cmd))
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}-{self.label}.log").open("wb")
        # Each site's testbed registers in its own runtime dir, so two can run on one host.
        rt = self.workdir / f"runtime-{self.label}"
        rt.mkdir(exist_ok=True)
        # `-m` puts the cwd first on sys.path: run in the snapshot, find benchmarks/ in REPO after
        # it.
        path = os.pathsep.join(dict.fromkeys((str(self.source), str(REPO))))
        env = dict(
            os.environ,
            PYTHONPATH=path,
            GEOPROBE_RUNTIME_DIR=str(rt),
            GEOPROBE_STATE_DIR=str(self.workdir / f"state-{self.label}"),
        )
        self.procs.append(
            self.ns.popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.source),
                env=env,
            )
        )

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"site {self.label}: {p.args!r} exited "
                    f"with {p.returncode}; see logs in {self.workdir}"
                )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        self.ns.delete()


def wait_for_file(path: Path, timeout: float, site: Site) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        site.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)
