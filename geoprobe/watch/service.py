"""The watch as a running service: the store, signals, prober, solver, event stream and the
policy's response, put together around one :class:`~geoprobe.watch.daemon.Watcher`.

``geoprobe watch`` parses options into :class:`WatchOptions` and calls :func:`serve`; everything
else lives here, so the composition runs (and is tested) without click.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from geoprobe.errors import InputError
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement
from geoprobe.settings import Settings
from geoprobe.store import default_path
from geoprobe.watch.daemon import (
    AnomalySource,
    EventSink,
    HookRunner,
    RoundJournal,
    SignalAdapter,
    WatchConfig,
    Watcher,
)
from geoprobe.watch.durable import WatchRecord, accepting, redeliver
from geoprobe.watch.sentinel import Sentinel, SentinelConfig

if TYPE_CHECKING:
    from geoprobe.geo.calibration import Model

# On by default: the passive signals and the platform's own migration events (free: they read
# what the kernel already reports). Opt-in, by measurement (docs/precopy.md): the dirty-sync probe
# (``precopy``: no false sync in 0.73 h of host controls, but one false pre-copy suspicion in the
# QEMU lab's TCG guest) and the pause sampler (``pause``: 5 false whole-VM pauses in 7 minutes on
# the loaded 2-core build host, where both CPUs' sleepers are often late together). gaps/writes
# spend CPU, fingerprint sends ARP to the gateway, and cloud polls the metadata server: turn them
# on where they belong (see contrib/).
DEFAULT_SIGNALS = "clock,steal,platform"
KNOWN_SIGNALS = (
    "clock",
    "gaps",
    "writes",
    "steal",
    "fingerprint",
    "cloud",
    "precopy",
    "platform",
    "pause",
)


def signal_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in KNOWN_SIGNALS:
            raise InputError(
                f"unknown signal {name!r} (known: {', '.join(KNOWN_SIGNALS)}, none)",
                field="signals",
            )
    return names


def config_ntp_servers(dirs: Sequence[Path] | None = None) -> list[str]:
    """NTP servers named in ``config.toml`` (``[watch] ntp = ["host[:port]", ...]``), first found
    along the config path ``dirs`` (default: $GEOPROBE_CONFIG_DIR, the XDG user dir,
    /etc/geoprobe)."""
    import tomllib

    from geoprobe.paths import config_dirs

    for d in dirs if dirs is not None else config_dirs():
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
        if name == "platform":
            out.extend(_platform_listeners(log))
            continue
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
            elif name == "precopy":
                from geoprobe.watch.signals.precopy import DirtySyncSignal

                sig = DirtySyncSignal()
            elif name == "pause":
                from geoprobe.watch.signals.pause import PauseSignal

                sig = PauseSignal()
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


def _platform_listeners(log: logging.Logger) -> list[AnomalySource]:
    """What the platform tells the guest (failover unplug, announce, VM generation ID, balloon
    hints, clock set); one that cannot listen here says why in its Reading."""
    from geoprobe.watch.signals.platform import LISTENERS

    out: list[AnomalySource] = []
    for key, make in LISTENERS.items():
        listener = make()
        listener.start()
        if not listener.sample().available:
            log.info("signal %s: %s", key, listener.sample().reason)
        out.append(SignalAdapter(listener))
    return out


def stop_signals(sources: Sequence[AnomalySource]) -> None:
    for s in sources:
        stop = getattr(getattr(s, "signal", None), "stop", None)
        if callable(stop):
            stop()


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """What ``geoprobe watch`` was asked to do, options resolved (method, signals, state dir)."""

    catalogue: Catalogue
    settings: Settings
    method: str
    state_dir: Path
    cache_dir: Path | None = None  # the fitted model's cache
    events_path: Path | None = None
    metrics_path: Path | None = None
    metrics_listen: tuple[str, int] | None = None  # serve the metrics for scraping
    journal: RoundJournal | None = None  # every round and event, for signed attestations
    interval_s: float = 60.0
    fast_interval_s: float | None = None
    samples: int = 3
    timeout_s: float = 2.0
    pps: float = 1000.0
    warmup_rounds: int = 5
    warmup_interval_s: float | None = 2.0  # None: the fast interval
    max_landmarks: int | None = WatchConfig().max_landmarks  # None: the whole catalogue
    # Sentinel landmarks probed between full rounds (None: off); see geoprobe.watch.sentinel.
    sentinels: SentinelConfig | None = field(default_factory=SentinelConfig)
    signals: tuple[str, ...] = ()
    ntp_servers: tuple[str, ...] = ()
    realtime: bool = False  # the gap sampler under SCHED_FIFO (root)
    dry_run: bool = False
    max_rounds: int | None = None


def _policy_hook(
    options: WatchOptions, store_path: Path, log: logging.Logger, watcher: list[Watcher]
) -> HookRunner | None:
    """The policy's response on its own thread, or None when the watch only reports."""
    policy = options.settings.policy
    if policy is None:
        return None
    from geoprobe import defend

    def respond(ev: Mapping[str, Any]) -> None:
        for r in defend.respond(
            ev,
            policy,
            store_path=store_path,
            dry_run=options.dry_run,
            log=lambda msg: log.warning("%s", msg),
        ):
            log.info("action: %s", r)

    def clear() -> None:
        if not options.dry_run:
            defend.clear(store_path)  # stop a running delay: the suspicion is over

    def on_error(exc: BaseException) -> None:
        if watcher:
            watcher[0].counters.hook_errors += 1
        log.error("policy response failed: %s", exc)

    return HookRunner(respond, clear=clear, on_error=on_error)


def serve(options: WatchOptions, stdout: TextIO, log: logging.Logger) -> Watcher:
    """Run the watch until SIGTERM/SIGINT (or ``max_rounds``); return it for its counters.

    Events go to ``options.events_path`` (appended) or ``stdout``; the store, the signals, the
    policy's thread and the event file are closed however the watch ends.
    """
    cat = options.catalogue
    store_path = default_path(options.state_dir)
    # The lock (a second watch refuses), the events file and a store whose failure is no stop.
    record = WatchRecord(options.state_dir, options.events_path, stdout, log)
    store = record.store
    sources: list[AnomalySource] = []
    cell: list[Watcher] = []
    hook: HookRunner | None = None
    sentinel: Sentinel | None = None

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        from geoprobe.probe import measure as probe

        timeout = cell[0].probe_timeout(options.timeout_s) if cell else options.timeout_s
        return probe(
            landmarks, options.method, samples=options.samples, timeout=timeout, pps=options.pps
        )

    @functools.cache
    def model() -> Model | None:
        """Fitted on the first solve, then reused: every round would otherwise re-key the
        catalogue."""
        from geoprobe.locate import fit_catalogue

        return fit_catalogue(cat, cache_dir=options.cache_dir)

    def solve(rtts: Mapping[str, float]) -> Fix:
        from geoprobe.locate import solve as solve_fix

        return solve_fix(cat.landmarks, rtts, model(), cache_dir=options.cache_dir)

    try:
        sources = build_signals(
            list(options.signals), log, ntp_servers=options.ntp_servers, realtime=options.realtime
        )
        hook = _policy_hook(options, store_path, log, cell)
        if hook is not None and not options.dry_run:  # first what a crash cut short
            redeliver(hook.event, store_path, log)
        if options.sentinels is not None:
            sentinel = Sentinel(
                options.method,
                lambda why: cell[0].trigger(why) if cell else False,
                options.sentinels,
            )
        watcher = Watcher(
            cat,
            options.settings.jurisdiction,
            measure=measure,
            solve=solve,
            emit=EventSink(record.text_stream, None),
            store=store,
            on_event=(
                hook.event
                if options.dry_run
                else accepting(hook.event, options.settings.policy, store_path, log)
            )
            if hook
            else None,
            on_clear=hook.cleared if hook else None,
            signals=sources,
            metrics_path=options.metrics_path,
            metrics_listen=options.metrics_listen,
            config=WatchConfig(
                interval_s=options.interval_s,
                fast_interval_s=options.fast_interval_s,
                warmup_rounds=options.warmup_rounds,
                warmup_interval_s=options.warmup_interval_s,
                max_landmarks=options.max_landmarks,
                min_landmarks=options.settings.min_landmarks,
                # A landmark-timed echo ends with the statement, about two round trips later.
                timeout_factor=3.0 if options.journal is not None else 2.0,
            ),
            journal=options.journal,
            sentinel=sentinel,
        )
        cell.append(watcher)
        if sentinel is not None:
            sentinel.start()
        log.info(
            "watching %d landmarks (%s), allowed %s, every %g s%s",
            len(cat.landmarks),
            options.method,
            ",".join(sorted(options.settings.jurisdiction.allowed)),
            options.interval_s,
            ""
            if options.sentinels is None
            else f", {options.sentinels.count} sentinels every {options.sentinels.period_s:g} s",
        )
        _run_until_stopped(watcher, log, options.max_rounds)
        return watcher
    finally:
        if sentinel is not None:
            sentinel.stop()
        stop_signals(sources)
        if hook is not None:
            hook.close()
        record.close()


def _run_until_stopped(watcher: Watcher, log: logging.Logger, max_rounds: int | None) -> None:
    """SIGTERM and SIGINT stop the watch after the round in progress."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this round", signum)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    old = (
        {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    )
    try:
        watcher.run(stop, max_rounds=max_rounds)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
