"""CLI: ``geoprobe locate`` (probe the landmarks, answer "where am I?") and ``geoprobe verify``
(re-check signed evidence offline)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from geoprobe.cli.env import Environment
from geoprobe.cli.options import landmarks_option, method_option
from geoprobe.errors import MeasurementError
from geoprobe.geo.fix import Fix
from geoprobe.jsonfile import read_json
from geoprobe.landmarks import Catalogue, Landmark, catalogue_or_default, preferred_method
from geoprobe.measurement import FORMAT as MEASUREMENTS_FORMAT
from geoprobe.measurement import (
    Measurement,
    load_measurements,
    min_rtts,
    parse_measurement_list,
    parse_measurements,
    rejected_totals,
    save_measurements,
)
from geoprobe.probe.evidence import MAX_CLOCK_OFFSET_S
from geoprobe.status import ExitStatus

DEFAULT_PPS = 1000.0


@contextmanager
def _progress(
    env: Environment, total: int, method: str
) -> Iterator[Callable[[int, int], None] | None]:
    if not env.stderr_isatty or total == 0:
        yield None
        return
    # rich is imported here, not at the top: ``geoprobe`` starts faster, and locate's wall time
    # counts.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=env.stderr, force_terminal=True)
    with Progress(
        TextColumn(f"probing ({method})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("probe", total=total)
        yield lambda done, _total: progress.update(task, completed=done)


def _nothing_answered(measurements: Sequence[Measurement]) -> MeasurementError:
    reasons = Counter(m.failure or "no reply" for m in measurements)
    detail = ", ".join(f"{r}: {n}" for r, n in reasons.most_common(3))
    return MeasurementError(f"no landmark answered ({len(measurements)} probed; {detail})")


def _solve(cat: Catalogue, rtts: dict[str, float], cache_dir: Path) -> Fix:
    from geoprobe.locate import locate_from_catalogue

    fix: Fix = locate_from_catalogue(cat, rtts, cache_dir=cache_dir)
    return fix


@click.command("locate")
@landmarks_option()
@method_option("Probe method (default: signed udp echo if the catalogue offers it, else tcp).")
@click.option(
    "--samples",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Samples per landmark; the minimum is used.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="Seconds to wait for each sample.",
)
@click.option(
    "--pps",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_PPS,
    show_default=True,
    help="Cap on packets per second over all landmarks.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--geojson",
    "geojson_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the feasible region as GeoJSON.",
)
@click.option(
    "--map",
    "map_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the region, estimate and landmarks into a PNG.",
)
@click.option(
    "--save",
    "save_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the measurements (for --replay and geoprobe verify).",
)
@click.option(
    "--replay",
    "replay_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Locate from saved measurements instead of probing.",
)
@click.option(
    "--all-landmarks",
    is_flag=True,
    help="Probe every landmark, not a coarse-to-fine selection of at most 50.",
)
@click.option(
    "--mmdb",
    "mmdb_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GeoLite2/DB-IP City database for the IP geolocation cross-check "
    "(default: $GEOPROBE_MMDB or the standard paths, if present).",
)
@click.pass_obj
def locate_cmd(
    env: Environment,
    landmarks_path: Path | None,
    method: str | None,
    samples: int,
    timeout: float,
    pps: float,
    fmt: str,
    geojson_path: Path | None,
    map_path: Path | None,
    save_path: Path | None,
    replay_path: Path | None,
    mmdb_path: Path | None,
    all_landmarks: bool,
) -> None:
    """Measure RTTs to the landmarks and report where this machine is."""
    cat = catalogue_or_default(landmarks_path, env.cache_dir)
    # A database named with --mmdb must be usable (checked before probing); one found on the
    # standard paths only adds a note when it is not.
    mmdb_explicit = mmdb_path is not None
    if mmdb_path is None:
        from geoprobe.ipgeo import default_mmdb

        mmdb_path = default_mmdb()
    else:
        from geoprobe.ipgeo import open_database

        open_database(str(mmdb_path))
    if replay_path is not None:
        measurements, _meta = load_measurements(replay_path)
        used_method = method or (measurements[0].method if measurements else "replay")
    else:
        from geoprobe.probe import measure

        used_method = method or preferred_method(cat)
        from geoprobe.geo.selection import DEFAULT_LIMIT
        from geoprobe.locate import select_and_probe

        order = (
            _nearest_first(cat.landmarks, mmdb_path, mmdb_explicit)
            if mmdb_path is not None
            else cat.landmarks
        )
        total = len(order) if all_landmarks else min(len(order), DEFAULT_LIMIT)
        measured: list[Measurement] = []
        with _progress(env, total, used_method) as progress:

            def probe(lms: list[Landmark]) -> dict[str, float]:
                got = measure(
                    lms, used_method, samples=samples, timeout=timeout, pps=pps, progress=progress
                )
                measured.extend(got)
                return min_rtts(got)

            if all_landmarks or len(order) <= DEFAULT_LIMIT:
                probe(list(order))
            else:
                select_and_probe(cat, probe, cache_dir=env.cache_dir)
        by_id = {m.landmark_id: m for m in measured}
        measurements = [by_id[lm.id] for lm in cat.landmarks if lm.id in by_id]
    if save_path is not None:
        save_measurements(
            save_path,
            measurements,
            catalogue=str(cat.path) if cat.path else cat.name,
            method=used_method,
        )
    rtts = min_rtts(measurements)
    if not rtts:
        raise _nothing_answered(measurements)
    fix = _solve(cat, rtts, env.cache_dir)
    fix.rejected_replies = rejected_totals(measurements)
    meta: dict[str, Any] = {
        "catalogue": str(cat.path) if cat.path else cat.name,
        "probe_method": used_method,
    }
    if mmdb_path is not None:
        meta["ipgeo"] = _cross_check(fix, cat, mmdb_path, mmdb_explicit)
    if geojson_path is not None:
        from geoprobe.render.geojson import write_geojson

        write_geojson(fix, geojson_path, landmarks=cat.landmarks, rtts=rtts)
    if map_path is not None:
        from geoprobe.render import draw_map

        draw_map(fix, map_path, landmarks=cat.landmarks, rtts=rtts)
    from geoprobe import report

    if fmt == "json":
        env.stdout.write(report.render_json(fix, measurements, **meta) + "\n")
    else:
        from rich.console import Console

        console = Console(
            file=env.stdout,
            force_terminal=env.stdout_isatty,
            width=None if env.stdout_isatty else 100,
        )
        report.render_table(fix, measurements, console)
        for line in meta.get("ipgeo", {}).get("notes", []):
            console.print(f"ip geolocation: {line}")


def _nearest_first(landmarks: Sequence[Landmark], mmdb: Path, explicit: bool) -> list[Landmark]:
    """Probe the landmarks nearest this VM's IP-geolocated place first (a coarse prior only)."""
    from geoprobe import ipgeo

    target = next((lm.address for lm in landmarks if lm.address), None)
    ip = ipgeo.local_address_towards(target) if target else None
    if ip is None:
        return list(landmarks)
    try:
        return ipgeo.nearest_first_hint(mmdb, ip, landmarks)
    except ipgeo.IPGeoError:
        if explicit:
            raise
        return list(landmarks)  # the cross-check after the fix says what is wrong with it


def _cross_check(fix: Fix, cat: Catalogue, mmdb: Path, explicit: bool) -> dict[str, Any]:
    from geoprobe import ipgeo

    try:
        return ipgeo.cross_check(fix, cat, mmdb)
    except ipgeo.IPGeoError as exc:
        if explicit:
            raise
        return {"database": str(mmdb), "notes": [f"database not used: {exc}"]}


def _load_for_audit(path: Path) -> list[Measurement]:
    """A saved measurement file, or a ``locate --format json`` record (it embeds them)."""
    raw = read_json(path)
    if (
        isinstance(raw, dict)
        and "measurements" in raw
        and raw.get("format", MEASUREMENTS_FORMAT) == MEASUREMENTS_FORMAT
        and "results" not in raw
    ):
        return parse_measurement_list(raw["measurements"], file=path, field="measurements")
    return parse_measurements(raw, file=path)[0]


@click.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@landmarks_option(
    "Catalogue that pins the landmarks' keys (default: the synced RIPE Atlas anchors)."
)
@click.option(
    "--max-clock-offset",
    type=click.FloatRange(min=0.0, max=10 * 365 * 86400.0),
    default=MAX_CLOCK_OFFSET_S,
    show_default=True,
    help="Seconds the prober's clock may differ from the landmarks' signed times.",
)
@click.pass_context
def verify_cmd(
    ctx: click.Context, file: Path, landmarks_path: Path | None, max_clock_offset: float
) -> None:
    """Re-verify the signed replies in FILE offline (exit 0: all good, 3: any bad evidence).

    Every RTT in FILE must be backed by a signed reply, and the file's own times must agree with
    the times the landmarks signed.
    """
    from geoprobe.probe.evidence import verify_measurements

    env: Environment = ctx.obj
    cat = catalogue_or_default(landmarks_path, env.cache_dir)
    measurements = _load_for_audit(file)
    checked, bad = verify_measurements(
        measurements, cat.by_id(), max_clock_offset_s=max_clock_offset
    )
    if checked == 0:
        raise MeasurementError(f"{file}: no signed evidence to verify")
    for b in bad:
        env.stdout.write(f"BAD {b}\n")
    if bad:
        env.stdout.write(f"{len(bad)} problem(s) in {checked} signed replies\n")
        ctx.exit(int(ExitStatus.ERROR))
    env.stdout.write(f"OK: {checked} signed replies verified against {cat.path or cat.name}\n")


def register(group: click.Group) -> None:
    group.add_command(locate_cmd)
    group.add_command(verify_cmd)
