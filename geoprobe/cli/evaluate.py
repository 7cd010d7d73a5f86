"""CLI: ``geoprobe evaluate DATASET`` -- leave-one-out of every method on real RTT data."""

from __future__ import annotations

import json
from typing import Any

import click

from geoprobe.cli.env import Environment
from geoprobe.errors import InputError


def _methods(value: str) -> list[str]:
    from geoprobe.locate import METHODS

    names = [m.strip() for m in value.split(",") if m.strip()]
    for m in names:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r} (known: {', '.join(METHODS)})", field="methods")
    if not names:
        raise InputError("name at least one method", field="methods")
    return names


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "km":
        return f"{v:.0f}"
    if kind == "ms":
        return f"{v:.1f}"
    return f"{v:.3f}"


ROWS = (
    ("median error (km)", "median_km", "km"),
    ("p80 error (km)", "p80_km", "km"),
    ("p90 error (km)", "p90_km", "km"),
    ("within 100 km", "within_100km", "share"),
    ("country accuracy", "country_accuracy", "share"),
    ("truth in region", "truth_in_region", "share"),
    ("truth in region (consistent)", "truth_in_region_consistent", "share"),
    ("certified correct", "certified_correct", "share"),
    ("certified wrong", "certified_wrong", "share"),
    ("accuracy where p >= 0.9", "accuracy_at_p90", "share"),
    ("share with p >= 0.9", "share_p90", "share"),
    ("calibration error (ECE)", "ece", "share"),
    ("mean solve (ms)", "mean_solve_ms", "ms"),
)


def register(group: click.Group) -> None:
    @group.command("evaluate")
    @click.argument("dataset", type=click.Path(path_type=str))
    @click.option(
        "--landmarks-per-target",
        "-k",
        type=int,
        default=None,
        help="Use K random other servers as landmarks (default: all others).",
    )
    @click.option(
        "--targets", "-n", type=int, default=None, help="Evaluate N random targets (default: all)."
    )
    @click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed for every random choice."
    )
    @click.option(
        "--methods",
        default="geoprobe,cbg,shortest-ping",
        show_default=True,
        help="Comma-separated methods to compare in the same run.",
    )
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "jsonl"]),
        default="table",
        show_default=True,
    )
    @click.pass_obj
    def evaluate_cmd(
        env: Environment,
        dataset: str,
        landmarks_per_target: int | None,
        targets: int | None,
        seed: int,
        methods: str,
        fmt: str,
    ) -> None:
        """Leave-one-out on DATASET (WonderProxy dir, or landmarks.csv + rtts.csv dir)."""
        from geoprobe.datasets import load_dataset
        from geoprobe.evaluate import evaluate
        from geoprobe.locate import default_countries

        names = _methods(methods)
        ds = load_dataset(dataset)
        for w in ds.warnings:
            click.echo(f"geoprobe: warning: {w}", file=env.stderr)
        ev = _run(
            env,
            lambda progress: evaluate(
                ds,
                methods=names,
                landmarks_per_target=landmarks_per_target,
                targets=targets,
                seed=seed,
                progress=progress,
                countries=default_countries(env.cache_dir),
            ),
        )
        if fmt == "jsonl":
            for r in ev.records:
                env.stdout.write(json.dumps(r.to_json()) + "\n")
        elif fmt == "json":
            env.stdout.write(json.dumps(ev.to_json(), indent=1) + "\n")
        else:
            _table(env, ev)


def _run(env: Environment, job: Any) -> Any:
    """Run with a rich progress bar on stderr when it is a terminal, a line per 10 % otherwise."""
    if env.stderr_isatty:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(file=env.stderr), transient=True) as bar:
            task = bar.add_task("leave-one-out", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return job(tick)
    last = [-1]

    def line(done: int, total: int) -> None:
        step = done * 10 // max(total, 1)
        if step != last[0]:
            last[0] = step
            env.stderr.write(f"geoprobe: evaluate: {done}/{total}\n")
            env.stderr.flush()

    return job(line)


def _table(env: Environment, ev: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = ev.summary()
    n = len({r.target for r in ev.records})
    k = ev.landmarks_per_target or "all other"
    table = Table(
        title=f"{ev.dataset}: leave-one-out, {n} targets, {k} landmarks each, seed {ev.seed}"
    )
    table.add_column("")
    for m in ev.methods:
        table.add_column(m, justify="right")
    for label, key, kind in ROWS:
        table.add_row(label, *(_fmt(summary[m].get(key), kind) for m in ev.methods))
    console = Console(file=env.stdout, force_terminal=env.stdout_isatty, width=110)
    console.print(table)
    if ev.vetted:
        console.print(f"vetted out (faster than light): {', '.join(sorted(ev.vetted))}")
    console.print(f"{ev.seconds:.1f} s")
