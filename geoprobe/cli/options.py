"""Options several commands share, declared once so they parse and read alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from geoprobe.landmarks import PROBE_METHODS


def landmarks_option(
    help: str = "Landmark catalogue (default: the synced RIPE Atlas anchors).",
) -> Callable[[FC], FC]:
    return click.option(
        "--landmarks", "landmarks_path", type=click.Path(dir_okay=False, path_type=Path), help=help
    )


def method_option(help: str = "Probe method.") -> Callable[[FC], FC]:
    return click.option("--method", type=click.Choice(PROBE_METHODS), help=help)


def allow_option() -> Callable[[FC], FC]:
    return click.option(
        "--allow", help="Allowed jurisdictions: ISO codes and groups, e.g. DE,AT,EU."
    )
