"""CLI: ``geoprobe landmarks`` and its ``sync`` (the RIPE Atlas anchors as a catalogue, cached in
the cache dir)."""

from __future__ import annotations

from pathlib import Path

import click

from geoprobe.cli.env import Environment
from geoprobe.sync import CACHE_NAME, DEFAULT_API, check_api, sync


@click.group("landmarks")
def landmarks_group() -> None:
    """Manage the landmark catalogue."""


def add_landmarks_command(command: click.Command) -> None:
    """Add ``command`` under ``geoprobe landmarks`` (for commands defined outside geoprobe)."""
    landmarks_group.add_command(command)


@landmarks_group.command("sync")
@click.option("--api", default=DEFAULT_API, show_default=True, help="RIPE Atlas API root.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Also write the catalogue here (it is always cached as <cache dir>/{CACHE_NAME}).",
)
@click.option(
    "--mesh/--no-mesh",
    default=False,
    show_default=True,
    help="Bring in the anchoring-mesh ping results as calibration RTTs "
    "(one request per measurement).",
)
@click.option(
    "--tcp-port",
    type=click.IntRange(1, 65535),
    default=80,
    show_default=True,
    help="Port for TCP-connect probing of the anchors.",
)
@click.pass_obj
def sync_cmd(env: Environment, api: str, out_path: Path | None, mesh: bool, tcp_port: int) -> None:
    """Fetch the RIPE Atlas anchors (dropping disabled and decommissioned ones) into a catalogue."""
    check_api(api)

    def show(msg: str) -> None:
        env.stderr.write(f"\r{msg}")

    progress = show if env.stderr_isatty else None
    result = sync(
        api, out=out_path, cache_dir=env.cache_dir, mesh=mesh, tcp_port=tcp_port, progress=progress
    )
    if progress is not None:
        env.stderr.write("\n")
    dropped = ", ".join(f"{why}: {n}" for why, n in result.dropped.most_common()) or "none"
    cal = (
        f"{len(result.catalogue.rtts)} calibration RTTs from {result.mesh_measurements} "
        "mesh measurements"
        if mesh
        else "no calibration (use --mesh); locate will use the sound bound"
    )
    where = ", ".join(str(p) for p in (out_path, env.cache_dir / CACHE_NAME) if p is not None)
    env.stdout.write(
        f"synced {len(result.anchors)} anchors at {result.synced} (dropped: {dropped}); {cal}\n"
        f"wrote {where}\n"
    )


def register(group: click.Group) -> None:
    group.add_command(landmarks_group)
