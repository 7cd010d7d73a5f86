"""CLI: ``geoprobe watch``, the migration watch daemon (options over geoprobe.watch.service).

Events go to stdout or ``--events FILE`` as CloudEvents JSON lines; logs go to stderr. SIGTERM and
SIGINT stop it cleanly after the round in progress. With ``--policy`` the policy's response runs on
each migration event; without it the watch only reports (``--allow`` alone is enough).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, TextIO

import click

from geoprobe.cli.env import Environment
from geoprobe.cli.options import allow_option, landmarks_option, method_option
from geoprobe.errors import InputError
from geoprobe.settings import resolve_settings
from geoprobe.watch.sentinel import SentinelConfig
from geoprobe.watch.service import (
    DEFAULT_SIGNALS,
    KNOWN_SIGNALS,
    WatchOptions,
    config_ntp_servers,
    serve,
    signal_names,
)


@click.command("watch")
@landmarks_option()
@allow_option()
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy TOML: allowed set, thresholds and the actions to run on events.",
)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append CloudEvents (JSON lines) here instead of stdout.",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (default: /var/lib/geoprobe for root, else the user's state dir).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=60.0,
    show_default=True,
    help="Seconds between rounds while all is quiet.",
)
@click.option(
    "--fast-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between rounds while a migration is suspected (default: interval / 4).",
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prometheus textfile to write after every round (node_exporter textfile collector).",
)
@click.option(
    "--metrics-listen",
    metavar="ADDR:PORT",
    help="Also serve the metrics for Prometheus to scrape, e.g. 127.0.0.1:9464.",
)
@method_option()
@click.option(
    "--samples",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Probes per landmark per round.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="Per-sample timeout (s). Once a baseline exists, 2x the slowest landmark's RTT "
    "(at least 0.5 s) when that is shorter, so a landmark gone silent does not hold every round.",
)
@click.option(
    "--pps",
    type=click.FloatRange(min=1.0),
    default=1000.0,
    show_default=True,
    help="Packet rate cap.",
)
@click.option(
    "--warmup",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Rounds that build the baseline before the test starts.",
)
@click.option(
    "--warmup-interval",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="Seconds between the rounds that build the baseline.",
)
@click.option(
    "--max-landmarks",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Landmarks a round probes at most: the nearest to the VM and 50 spread over the rest, "
    "chosen again after every move (fewer near a new place can leave a crossing unproven). "
    "0: the whole catalogue.",
)
@click.option(
    "--sentinels",
    type=click.IntRange(0, 32),
    default=SentinelConfig().count,
    show_default=True,
    help="Landmarks probed between full rounds (half the nearest, half far ones in other "
    "directions); a change in their RTT or clock offset starts a full round at once. 0: off.",
)
@click.option(
    "--sentinel-period",
    type=click.FloatRange(min=0.05),
    default=SentinelConfig().period_s,
    show_default=True,
    help="Seconds between two probes of each sentinel.",
)
@click.option(
    "--signals",
    "signal_spec",
    default=DEFAULT_SIGNALS,
    show_default=True,
    help=f"Comma-separated timing/host signals ({', '.join(KNOWN_SIGNALS)}, none).",
)
@click.option(
    "--basis",
    type=click.Choice(["sound", "calibrated"]),
    default="sound",
    show_default=True,
    help="What a crossing may rest on: the sound region (proof) or also calibrated probability.",
)
@click.option(
    "--ntp",
    "ntp_servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="NTP server for the clock-offset signal (repeatable; default: [watch] ntp in "
    "config.toml).",
)
@click.option(
    "--dry-run", is_flag=True, help="With --policy: print the actions instead of running them."
)
@click.option("--rounds", "max_rounds", type=click.IntRange(1), help="Stop after this many rounds.")
@click.option(
    "--attest",
    is_flag=True,
    help="Offer landmark-timed echoes with the VM's identity key and journal every round for "
    "`geoprobe attest run`.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every transition and round to stderr.")
@click.pass_obj
def watch_cmd(
    env: Environment,
    landmarks_path: Path | None,
    allow: str | None,
    policy_path: Path | None,
    events_path: Path | None,
    state_dir: Path | None,
    interval: float,
    fast_interval: float | None,
    metrics_path: Path | None,
    metrics_listen: str | None,
    method: str | None,
    samples: int,
    timeout: float,
    pps: float,
    warmup: int,
    warmup_interval: float,
    max_landmarks: int,
    sentinels: int,
    sentinel_period: float,
    signal_spec: str,
    basis: Literal["sound", "calibrated"],
    ntp_servers: tuple[str, ...],
    dry_run: bool,
    max_rounds: int | None,
    verbose: bool,
    attest: bool,
) -> None:
    """Watch for live migration across borders; emit CloudEvents and run the policy's response."""
    from geoprobe.landmarks import catalogue_or_default, preferred_method

    log = logging.getLogger("geoprobe")
    handler = logging.StreamHandler(env.stderr)
    handler.setFormatter(logging.Formatter("geoprobe watch: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        settings = resolve_settings(allow, policy_path, basis)
        wanted = signal_names(signal_spec)
        if metrics_path is not None and not metrics_path.parent.is_dir():
            raise InputError(
                "directory does not exist", file=str(metrics_path.parent), field="--metrics"
            )
        from geoprobe.metrics import parse_listen

        listen = parse_listen(metrics_listen) if metrics_listen is not None else None
        cat = catalogue_or_default(landmarks_path, env.cache_dir)
        state = state_dir if state_dir is not None else env.state_dir
        options = WatchOptions(
            catalogue=cat,
            settings=settings,
            method=method or preferred_method(cat),
            state_dir=state,
            cache_dir=env.cache_dir,
            events_path=events_path,
            metrics_path=metrics_path,
            metrics_listen=listen,
            journal=_attest_journal(state) if attest else None,
            interval_s=interval,
            fast_interval_s=fast_interval,
            samples=samples,
            timeout_s=timeout,
            pps=pps,
            warmup_rounds=warmup,
            warmup_interval_s=warmup_interval,
            max_landmarks=max_landmarks or None,
            sentinels=_sentinel_config(sentinels, sentinel_period),
            signals=tuple(wanted),
            ntp_servers=tuple(ntp_servers) or tuple(config_ntp_servers(env.config_dirs)),
            realtime=env.is_root,
            dry_run=dry_run,
            max_rounds=max_rounds,
        )
        stdout: TextIO = env.stdout  # type: ignore[assignment]
        serve(options, stdout, log)
    finally:
        log.removeHandler(handler)


def _sentinel_config(count: int, period_s: float) -> SentinelConfig | None:
    if count == 0:
        return None
    near = (count + 1) // 2
    return SentinelConfig(near=near, far=count - near, period_s=period_s)


def _attest_journal(state: Path) -> Any:
    from geoprobe.attest import identity, rounds
    from geoprobe.probe import timed

    timed.use_identity(identity.load_or_create(state))
    return rounds.Journal(rounds.journal_path(state))


def register(group: click.Group) -> None:
    group.add_command(watch_cmd)


__all__ = ["register", "watch_cmd"]
