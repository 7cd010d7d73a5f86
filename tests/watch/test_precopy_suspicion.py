"""A pre-copy signal raises ``suspected`` on its own, and wakes the watch as it fires."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from test_daemon import FRANKFURT, World, catalogue  # noqa: F401  (catalogue is a fixture)

from geoprobe import events
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Catalogue
from geoprobe.watch.daemon import SignalAdapter, WatchConfig, Watcher
from geoprobe.watch.jurisdiction import Jurisdiction
from geoprobe.watch.signals.base import Reading


class Probe:
    """A pre-copy signal that fires when told to, with the ``changed`` Event the real ones have."""

    name = "dirty_sync"
    decisive = True

    def __init__(self) -> None:
        self.changed = threading.Event()
        self.firing = False

    def fire(self) -> None:
        self.firing = True
        self.changed.set()

    def sample(self) -> Reading:
        if not self.firing:
            return Reading(self.name, value=3.0, baseline=3.0)
        return Reading(
            self.name, value=300.0, score=6.0, anomalous=True, reason="dirty syncs", precopy=True
        )


def warmed_watcher(
    cat: Catalogue, probe: Probe, interval: float, world: World | None = None, **config: Any
) -> tuple[Watcher, list[Any]]:
    """A watch at Frankfurt with ``probe`` as its one signal, past its warm-up (five rounds)."""
    from geoprobe.locate import locate_from_catalogue

    emitted: list[dict[str, Any]] = []
    if isinstance(world, WatchedWorld):
        world.emitted = emitted

    def solve(rtts: Any) -> Fix:
        return locate_from_catalogue(cat, rtts)

    w = Watcher(
        cat,
        Jurisdiction.of(["DE"]),
        measure=(world or World(FRANKFURT, seed=3)).measure,
        solve=solve,
        emit=emitted.append,
        signals=[SignalAdapter(probe)],
        config=WatchConfig(interval_s=interval, warmup_rounds=3, fix_every=5, **config),
    )
    for _ in range(5):
        w.round()
    return w, emitted


@contextmanager
def running(w: Watcher) -> Iterator[None]:
    """The watch's loop on a thread of its own, stopped on the way out."""
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=30)


def fire_between_rounds(w: Watcher, probe: Probe, done: Callable[[], bool]) -> None:
    """Run the watch (warmed up: its next round a minute away), fire the probe after its sixth
    round, and stop once ``done()``."""
    with running(w):
        end = time.monotonic() + 30
        while w.counters.rounds < 6 and time.monotonic() < end:
            time.sleep(0.05)
        fired = time.monotonic()
        probe.fire()
        while not done():
            assert time.monotonic() - fired < 20, "no round after the signal fired"
            time.sleep(0.05)


def test_a_precopy_signal_alone_raises_suspected_before_any_rtt_moves(
    catalogue: Catalogue,  # noqa: F811
) -> None:
    probe = Probe()
    w, emitted = warmed_watcher(catalogue, probe, 1.0)
    assert events.SUSPECTED not in [e["type"] for e in emitted]
    probe.fire()
    w.round()
    (ev,) = [e for e in emitted if e["type"] == events.SUSPECTED]
    assert ev["data"]["signals"] == ["dirty_sync"]
    assert ev["data"]["shift"] is None or ev["data"]["shift"]["outcome"] != "moved"


def test_the_watch_wakes_when_a_signal_fires_between_rounds(
    catalogue: Catalogue,  # noqa: F811
) -> None:
    probe = Probe()
    w, emitted = warmed_watcher(catalogue, probe, 60.0)  # the next round is a minute away
    fire_between_rounds(w, probe, lambda: events.SUSPECTED in [e["type"] for e in emitted])
    assert w.counters.rounds == 7  # one round, at once, not a minute later


def test_signals_build_the_probe_the_listeners_and_the_sampler() -> None:
    import logging

    from geoprobe.watch.service import DEFAULT_SIGNALS, build_signals, signal_names, stop_signals

    names = signal_names(DEFAULT_SIGNALS)
    assert "platform" in names and "precopy" not in names and "pause" not in names
    assert signal_names("precopy") == ["precopy"]
    sources = build_signals(["precopy", "platform", "pause"], logging.getLogger("test"))
    try:
        built = [s.name for s in sources]
        assert built == [
            "dirty_sync",
            "link_events",
            "vmgenid",
            "balloon_hint",
            "clock_set",
            "vm_pause",
        ]
        children = [
            s.signal.proc
            for s in sources
            if getattr(s, "signal", None) is not None
            and getattr(s.signal, "proc", None) is not None
        ]
        assert len(children) == 2 and all(p.poll() is None for p in children)
    finally:
        stop_signals(sources)
    assert all(p.poll() is not None for p in children)


class WatchedWorld(World):
    """A World that notes what had been emitted when each round began probing."""

    def __init__(self) -> None:
        super().__init__(FRANKFURT, seed=3)
        self.emitted: list[dict[str, Any]] = []
        self.seen_at_probe: list[list[str]] = []

    def measure(self, landmarks: Any) -> Any:
        self.seen_at_probe.append([e["type"] for e in self.emitted])
        return super().measure(landmarks)


def test_a_signal_event_raises_suspected_before_the_round_probes_and_the_move_confirms_at_once(
    catalogue: Catalogue,  # noqa: F811
) -> None:
    probe = Probe()
    world = WatchedWorld()
    w, emitted = warmed_watcher(catalogue, probe, 60.0, world)
    fire_between_rounds(w, probe, lambda: w.counters.rounds >= 7)  # pre-copy: still at home
    # The suspicion was out before that round sent a packet: the policy acts during pre-copy.
    assert events.SUSPECTED in world.seen_at_probe[6]
    assert [e["type"] for e in emitted].count(events.SUSPECTED) == 1
    # The switchover: the first round at the new place is a sound exit, backed by the signal.
    world.at = (40.42, -3.70)  # Madrid
    w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["to"] == "ES" and "dirty_sync" in c["signals"]
    assert c["rounds"] == 1


def test_a_signal_that_fires_again_and_again_does_not_make_rounds_back_to_back(
    catalogue: Catalogue,  # noqa: F811
) -> None:
    probe = Probe()
    w, emitted = warmed_watcher(catalogue, probe, 60.0, signal_wake_s=1.0)
    with running(w):
        time.sleep(0.3)
        start = w.counters.rounds
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            probe.fire()  # every 20 ms, for 3 s
            time.sleep(0.02)
        started = w.counters.rounds - start
    # Fast interval aside (a suspicion is open: every 15 s), events start a round once a second.
    assert 1 <= started <= 5
    assert [e["type"] for e in emitted].count(events.SUSPECTED) == 1
