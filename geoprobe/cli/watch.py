"""CLI: ``geoprobe watch``, the migration watch daemon (a thin layer over geoprobe.watch.daemon).

Events go to stdout or ``--events FILE`` as CloudEvents JSON lines; logs go to stderr. SIGTERM and
SIGINT stop it cleanly after the round in progress. With ``--policy`` the policy's response runs on
each migration event; without it the watch only reports (``--allow`` alone is enough).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from geoprobe.cli.check import resolve_settings
from geoprobe.cli.env import Environment
from geoprobe.cli.options import allow_option, landmarks_option, method_option
from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Landmark
from geoprobe.measurement import Measurement
from geoprobe.store import default_path
from geoprobe.watch.daemon import AnomalySource, HookRunner, SignalAdapter, WatchConfig, Watcher
from geoprobe.watch.durable import WatchRecord, accepting, redeliver

if TYPE_CHECKING:
    from geoprobe.geo.calibration import Model

# Passive signals are on by default. gaps/writes spend CPU, fingerprint sends ARP to the gateway,
# and cloud polls the metadata server: turn them on where they belong (see contrib/).
DEFAULT_SIGNALS = "clock,steal"
KNOWN_SIGNALS = ("clock", "gaps", "writes", "steal", "fingerprint", "cloud")


def signal_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in KNOWN_SIGNALS:
            raise InputError(
                f"unknown signal {name!r} (known: {', '.join(KNOWN_SIGNALS)}, none)",
                field="signals",
            )
    return names


def config_ntp_servers() -> list[str]:
    """NTP servers named in ``config.toml`` (``[watch] ntp = ["host[:port]", ...]``), first found
    along the config path ($GEOPROBE_CONFIG_DIR, the XDG user dir, /etc/geoprobe)."""
    import tomllib

    from geoprobe.paths import config_dirs

    for d in config_dirs():
        path = d / "config.toml"
        if not path.is_file():
            continue
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"cannot read config: {exc}", file=str(path)) from None
        ntp = raw.get("watch", {}).get("ntp", []) if isinstance(raw.get("watch"), dict) else []
        if not isinstance(ntp, list) or not all(isinstance(x, str) and x for x in ntp):
            raise InputError(
                'must be a list of "host[:port]" strings', file=str(path), field="watch.ntp"
            )
        return list(ntp)
    return []


def build_signals(
    names: list[str],
    log: logging.Logger,
    *,
    ntp_servers: Sequence[str] = (),
    realtime: bool = False,
) -> list[AnomalySource]:
    """Instantiate the timing signals by name; one that is missing here degrades with a warning.

    ``ntp_servers`` adds the clock-offset test against NTP (with ``clock``); ``realtime`` runs the
    gap sampler under SCHED_FIFO (root only: otherwise the scheduler's own preemptions look like
    gaps).
    """
    out: list[AnomalySource] = []
    if ntp_servers and "clock" in names:
        from geoprobe.watch.signals.clock import NtpClockSignal

        out.append(SignalAdapter(NtpClockSignal(list(ntp_servers), timeout=0.5)))
    for name in names:
        try:
            sig: Any
            if name == "clock":
                from geoprobe.watch.signals.clock import ClockSignal

                sig = ClockSignal()
            elif name == "gaps":
                from geoprobe.watch.signals.gaps import GapSignal

                sig = GapSignal(realtime=realtime)
            elif name == "writes":
                from geoprobe.watch.signals.writes import WriteLatencySignal

                sig = WriteLatencySignal()
            elif name == "steal":
                from geoprobe.watch.signals.steal import StealSignal

                sig = StealSignal()
            elif name == "fingerprint":
                from geoprobe.watch.signals.fingerprint import FingerprintSignal

                sig = FingerprintSignal()
            else:
                from geoprobe.watch.cloud import CloudNotices

                sig = CloudNotices()
        except ImportError as exc:
            log.warning("signal %s is not available: %s", name, exc)
            continue
        if hasattr(sig, "start"):
            sig.start()
        out.append(SignalAdapter(sig))
    return out


def _stop_signals(sources: Sequence[AnomalySource]) -> None:
    for s in sources:
        stop = getattr(getattr(s, "signal", None), "stop", None)
        if callable(stop):
            stop()


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
    default=3,
    show_default=True,
    help="Rounds that build the baseline before the test starts.",
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
    method: str | None,
    samples: int,
    timeout: float,
    pps: float,
    warmup: int,
    signal_spec: str,
    basis: str,
    ntp_servers: tuple[str, ...],
    dry_run: bool,
    max_rounds: int | None,
    verbose: bool,
) -> None:
    """Watch for live migration across borders; emit CloudEvents and run the policy's response."""
    from geoprobe.cli.locate import catalogue_from, choose_method

    log = logging.getLogger("geoprobe")
    handler = logging.StreamHandler(env.stderr)
    handler.setFormatter(logging.Formatter("geoprobe watch: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)

    settings = resolve_settings(allow, policy_path, basis)
    wanted = signal_names(signal_spec)
    if metrics_path is not None and not metrics_path.parent.is_dir():
        raise InputError(
            "directory does not exist", file=str(metrics_path.parent), field="--metrics"
        )
    cat = catalogue_from(landmarks_path)
    used_method = method or choose_method(cat)
    store_path = default_path(state_dir if state_dir is not None else env.state_dir)
    ntp = list(ntp_servers) or config_ntp_servers()
    # The lock (a second watch refuses), the events file and a store whose failure is no stop.
    record = WatchRecord(store_path.parent, events_path, env.stdout, log)
    store = record.store
    sources = build_signals(wanted, log, ntp_servers=ntp, realtime=env.is_root)
    hook: HookRunner | None = None
    watcher: Watcher

    def on_error(exc: BaseException) -> None:
        watcher.counters.hook_errors += 1
        log.error("policy response failed: %s", exc)

    if settings.policy is not None:
        from geoprobe import defend

        policy = settings.policy

        def respond(ev: dict[str, Any]) -> None:
            for r in defend.respond(
                ev,
                policy,
                store_path=store_path,
                dry_run=dry_run,
                log=lambda msg: log.warning("%s", msg),
            ):
                log.info("action: %s", r)

        def clear() -> None:
            if not dry_run:
                defend.clear(store_path)  # stop a running delay: the suspicion is over

        hook = HookRunner(respond, clear=clear, on_error=on_error)
        if not dry_run:  # first what a crash cut short, then anything new
            redeliver(hook.event, store_path, log)

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        from geoprobe.probe import measure as probe

        return probe(
            landmarks, used_method, samples=samples, timeout=watcher.probe_timeout(timeout), pps=pps
        )

    @functools.cache
    def model() -> Model | None:
        """Fitted on the first solve, then reused: every round would otherwise re-key the
        catalogue."""
        from geoprobe.locate import fit_catalogue

        return fit_catalogue(cat)

    def solve(rtts: Any) -> Fix:
        from geoprobe.locate import solve as solve_fix

        return solve_fix(cat.landmarks, rtts, model())

    config = WatchConfig(
        interval_s=interval,
        fast_interval_s=fast_interval,
        warmup_rounds=warmup,
        min_landmarks=settings.min_landmarks,
    )
    watcher = Watcher(
        cat,
        settings.jurisdiction,
        measure=measure,
        solve=solve,
        emit=record.emit,
        store=store,
        on_event=(
            hook.event if dry_run else accepting(hook.event, settings.policy, store_path, log)
        )
        if hook
        else None,
        on_clear=hook.cleared if hook else None,
        signals=sources,
        metrics_path=metrics_path,
        config=config,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this round", signum)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    old = (
        {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    )
    try:
        log.info(
            "watching %d landmarks (%s), allowed %s, every %g s",
            len(cat.landmarks),
            used_method,
            ",".join(sorted(settings.jurisdiction.allowed)),
            interval,
        )
        watcher.run(stop, max_rounds=max_rounds)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop_signals(sources)
        if hook is not None:
            hook.close()
        record.close()
        log.removeHandler(handler)


def register(group: click.Group) -> None:
    group.add_command(watch_cmd)


__all__ = ["build_signals", "config_ntp_servers", "register", "watch_cmd"]
