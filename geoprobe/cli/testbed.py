"""CLI: ``geoprobe testbed run|move|status`` (a loopback world of emulated landmarks) and ``geoprobe
demo``.

Also adds ``geoprobe landmarks sync`` (RIPE Atlas anchors) through the hook in ``cli/landmark.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import click
from rich.console import Console

from geoprobe.cli.env import Environment
from geoprobe.datasets import Dataset, load_dataset
from geoprobe.errors import MeasurementError
from geoprobe.testbed import control
from geoprobe.testbed.build import build_testbed
from geoprobe.testbed.endpoints import DEFAULT_BASE_PORT
from geoprobe.testbed.runner import BackgroundTestbed, Testbed


def _placement(at_server: str | None, at: str | None, default: str | None = None) -> str:
    if at_server and at:
        raise click.UsageError("give --at-server or --at, not both")
    spec = at_server or at or default
    if spec is None:
        raise click.UsageError("place the VM with --at-server NAME_OR_ID or --at LAT,LON")
    if at is not None:
        from geoprobe.testbed.world import parse_position

        if parse_position(at) is None:
            raise click.BadParameter(f"expected LAT,LON, got {at!r}", param_hint="--at")
    return spec


def _dataset(path: Path | None) -> Dataset:
    if path is None:
        from geoprobe.testbed.builtin import builtin_dataset

        return builtin_dataset()
    return load_dataset(path)


@click.group("testbed")
def testbed_group() -> None:
    """A world of emulated signed landmarks on loopback, for tests, demos and migration drills."""


@testbed_group.command("run")
@click.option(
    "--dataset",
    "dataset_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="WonderProxy or generic (landmarks.csv + rtts.csv) dataset dir (default: the built-in world).",
)
@click.option(
    "--at-server", help="Place the VM at this dataset server (name or id): its measured RTTs."
)
@click.option(
    "--at", help="Place the VM at LAT,LON, with delays from a model fitted on the dataset."
)
@click.option(
    "--catalogue",
    "catalogue_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the landmark catalogue (keys, calibration) here once every landmark listens.",
)
@click.option(
    "--landmarks", "count", type=click.IntRange(min=1), help="Use N landmarks drawn with --seed."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the landmark draw and the jitter.",
)
@click.option(
    "--bind-prefix",
    "prefixes",
    multiple=True,
    help="Loopback prefixes for one address per landmark (default 127.0.0.0/24, 127.0.1.0/24).",
)
@click.option(
    "--bind", help="Put every landmark on this ONE address, on ports --base-port + server index."
)
@click.option(
    "--base-port", type=click.IntRange(1, 65535), default=DEFAULT_BASE_PORT, show_default=True
)
@click.option(
    "--advertise",
    help="Address the catalogue tells probers to use (e.g. 10.0.2.2 from a QEMU guest).",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Load the landmarks' keys from here (creating missing ones): two testbeds, one catalogue.",
)
@click.option(
    "--name", help=f"Name to register under in the runtime dir (default {control.DEFAULT_NAME!r})."
)
@click.option("--no-jitter", is_flag=True, help="Always inject each path's minimum RTT.")
@click.pass_obj
def run_cmd(
    env: Environment,
    dataset_path: Path | None,
    at_server: str | None,
    at: str | None,
    catalogue_path: Path,
    count: int | None,
    seed: int,
    prefixes: tuple[str, ...],
    bind: str | None,
    base_port: int,
    advertise: str | None,
    keys_dir: Path | None,
    name: str | None,
    no_jitter: bool,
) -> None:
    """Run the landmarks in the foreground until SIGTERM or SIGINT.

    Each landmark is a real signed-echo responder that holds its replies for the RTT from the VM's
    place to it. `geoprobe testbed move` finds this testbed through its control socket in the
    runtime dir ($GEOPROBE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/geoprobe): testbed-NAME.sock/.pid.
    """
    spec = _placement(at_server, at)
    dataset = _dataset(dataset_path)
    reg = control.claim(
        name or control.DEFAULT_NAME, explicit=name is not None, runtime=env.runtime_dir
    )
    tb = build_testbed(
        dataset,
        spec,
        count=count,
        seed=seed,
        prefixes=prefixes or None,
        bind=bind,
        advertise=advertise,
        base_port=base_port,
        keys_dir=keys_dir,
        jitter=not no_jitter,
        name=reg.name,
    )
    asyncio.run(_run(env, tb, reg, catalogue_path))


async def _run(
    env: Environment, tb: Testbed, reg: control.Registration, catalogue_path: Path
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await tb.start()
    try:
        await tb.serve_control(reg.socket)
        control.write_pidfile(reg, catalogue=str(catalogue_path.resolve()))
        tb.catalogue().save(
            catalogue_path
        )  # last: its appearance tells scripts the testbed is ready
        p = tb.world.placement
        env.stdout.write(
            f"testbed {reg.name!r}: {len(tb.world.ids)} landmarks on udp "
            f"({tb.endpoints[0].bind}...); VM at {p.label if p else '?'}\n"
            f"catalogue: {catalogue_path}\ncontrol: {reg.socket}\n"
        )
        env.stdout.flush()
        await stop.wait()
    finally:
        await tb.close()
        control.release(reg)
        env.stdout.write(f"testbed {reg.name!r} stopped after {tb.status()['answered']} replies\n")
        env.stdout.flush()


@testbed_group.command("move")
@click.option("--to-server", help="Move the VM to this dataset server (name or id).")
@click.option("--to", "to", help="Move the VM to LAT,LON (delays from the fitted model).")
@click.option("--name", help="Which testbed (default: 'default', else the only one running).")
@click.pass_obj
def move_cmd(env: Environment, to_server: str | None, to: str | None, name: str | None) -> None:
    """Move the running testbed's VM: every landmark's delay switches to the new place at once."""
    spec = _placement(to_server, to)
    reg = control.resolve(name, env.runtime_dir)
    reply = control.request(reg, {"op": "move", "to": spec})
    vm = reply.get("vm") or {}
    where = vm.get("server") or f"{vm.get('lat')},{vm.get('lon')}"
    env.stdout.write(
        f"testbed {reg.name!r}: VM moved to {where}"
        + (f" ({vm['country']})" if vm.get("country") else "")
        + "\n"
    )


@testbed_group.command("status")
@click.option("--name", help="Which testbed (default: 'default', else the only one running).")
@click.pass_obj
def status_cmd(env: Environment, name: str | None) -> None:
    """Print the running testbed's state as JSON."""
    reg = control.resolve(name, env.runtime_dir)
    reply = control.request(reg, {"op": "status"})
    reply.pop("ok", None)
    env.stdout.write(json.dumps(reply) + "\n")


@click.command("demo")
@click.option(
    "--dataset",
    "dataset_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Use this dataset instead of the built-in world.",
)
@click.option("--at-server", help="Where the VM stands (default: Frankfurt in the built-in world).")
@click.option("--at", help="Place the VM at LAT,LON instead.")
@click.option("--landmarks", "count", type=click.IntRange(min=3), help="Use N landmarks.")
@click.option("--samples", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def demo_cmd(
    env: Environment,
    dataset_path: Path | None,
    at_server: str | None,
    at: str | None,
    count: int | None,
    samples: int,
    seed: int,
    fmt: str,
) -> None:
    """Locate a VM in an emulated world, offline: real probes over loopback, the real engine."""
    from geoprobe.measurement import min_rtts
    from geoprobe.testbed.builtin import DEFAULT_CITY

    default = DEFAULT_CITY if dataset_path is None else None
    spec = _placement(at_server, at, default)
    dataset = _dataset(dataset_path)
    tb = build_testbed(dataset, spec, count=count, seed=seed, name="demo")
    p = tb.world.placement
    assert p is not None
    console = Console(file=env.stderr, force_terminal=env.stderr_isatty)
    if fmt == "table":
        env.stdout.write(
            f"demo: {len(tb.world.ids)} emulated signed landmarks on loopback "
            f"({dataset.name}); the VM stands at {p.label}, which geoprobe is not told.\n"
        )
        env.stdout.flush()
    with BackgroundTestbed(tb) as bg:
        cat = bg.catalogue
        from geoprobe.probe import measure

        t0 = time.monotonic()
        with (
            console.status("probing the landmarks (signed udp echo)...")
            if env.stderr_isatty
            else nullcontext()
        ):
            measurements = measure(cat.landmarks, "udp", samples=samples, timeout=2.0, pps=1000.0)
        probe_s = time.monotonic() - t0
    rtts = min_rtts(measurements)
    if not rtts:
        raise MeasurementError("no emulated landmark answered over loopback")
    from geoprobe import report
    from geoprobe.geo.sphere import haversine_km
    from geoprobe.locate import locate_from_catalogue

    fix = locate_from_catalogue(cat, rtts, cache_dir=env.cache_dir)
    err_km = float(haversine_km(fix.lat, fix.lon, p.lat, p.lon))
    truth = {
        "lat": p.lat,
        "lon": p.lon,
        "server": p.server.name if p.server else None,
        "country": p.server.country if p.server else None,
        "estimate_error_km": round(err_km, 1),
    }
    if fmt == "json":
        env.stdout.write(
            report.render_json(
                fix, measurements, catalogue=cat.name, probe_method="udp", demo_truth=truth
            )
            + "\n"
        )
        return
    out = Console(
        file=env.stdout, force_terminal=env.stdout_isatty, width=None if env.stdout_isatty else 100
    )
    report.render_table(fix, measurements, out)
    ok = "" if not math.isfinite(err_km) else f"; the estimate is {err_km:.0f} km from it"
    out.print(f"truth: {p.label}{ok}. Probing took {probe_s:.1f} s.")


def register(group: click.Group) -> None:
    group.add_command(testbed_group)
    group.add_command(demo_cmd)
