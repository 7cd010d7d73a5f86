"""The watch loop with the real engine, state store and metrics, on a synthetic world.

Probing is the one boundary replaced here (by RTTs drawn from the synthetic world); the testbed
tests in tests/cli/test_watch.py run the same loop over real sockets.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from watch_world import LANDMARKS, rtts_at

from geoprobe import events
from geoprobe.geo.countries import default_index
from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement
from geoprobe.watch.daemon import HookRunner, SignalAdapter, WatchConfig, Watcher
from geoprobe.watch.fusion import State
from geoprobe.watch.jurisdiction import Jurisdiction
from geoprobe.watch.state import WatchStore

FRANKFURT = (50.11, 8.68)
MADRID = (40.42, -3.70)
BERLIN = (52.52, 13.40)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    idx = default_index()
    lms = [
        Landmark(
            id=lid, lat=lat, lon=lon, country=idx.code_at(lat, lon), address="127.0.0.1", udp_port=7
        )
        for lid, lat, lon in LANDMARKS
    ]
    rtts = []
    for a, alat, alon in LANDMARKS:
        for b, blat, blon in LANDMARKS:
            if a < b:
                rtts.append((a, b, 1.5 * float(haversine_km(alat, alon, blat, blon)) / 100 + 0.8))
    return Catalogue(landmarks=lms, rtts=rtts, name="synthetic-europe")


class World:
    """Where the VM is now; ``measure`` is the prober's signature."""

    def __init__(self, at: tuple[float, float], seed: int = 0) -> None:
        self.at = at
        self.rng = np.random.default_rng(seed)

    def measure(self, landmarks: Sequence[Landmark]) -> list[Measurement]:
        r = rtts_at(*self.at, self.rng)
        return [
            Measurement(landmark_id=lm.id, method="udp", rtts_ms=[r[lm.id]], sent=1)
            for lm in landmarks
        ]


def make_watcher(
    cat: Catalogue, world: World, tmp: Path, allow: str = "DE", **kw: Any
) -> tuple[Watcher, list[dict[str, Any]], list[dict[str, Any]]]:
    from geoprobe.locate import locate_from_catalogue

    emitted: list[dict[str, Any]] = []
    hooked: list[dict[str, Any]] = []

    def solve(rtts: Any) -> Fix:
        return locate_from_catalogue(cat, rtts)

    w = Watcher(
        cat,
        Jurisdiction.of(allow.split(",")),
        measure=world.measure,
        solve=solve,
        emit=emitted.append,
        store=WatchStore(tmp / "geoprobe.sqlite"),
        on_event=hooked.append,
        metrics_path=tmp / "m.prom",
        config=WatchConfig(interval_s=1.0, warmup_rounds=3, fix_every=5),
        **kw,
    )
    return w, emitted, hooked


def watch_at_home(
    cat: Catalogue, tmp: Path, seed: int, **kw: Any
) -> tuple[World, Watcher, list[dict[str, Any]], list[dict[str, Any]]]:
    """A watch at Frankfurt, past its warm-up: five quiet rounds."""
    world = World(FRANKFURT, seed=seed)
    w, emitted, hooked = make_watcher(cat, world, tmp, **kw)
    for _ in range(5):
        w.round()
    return world, w, emitted, hooked


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


def test_stationary_watch_emits_fixes_only(catalogue: Catalogue, tmp_path: Path) -> None:
    w, emitted, hooked = make_watcher(catalogue, World(FRANKFURT), tmp_path)
    for _ in range(15):
        w.round()
    assert set(types(emitted)) == {events.FIX}
    assert hooked == []
    assert emitted[0]["data"]["jurisdiction"]["verdict"] == "inside"
    assert w.fusion.state == State.NORMAL
    prom = (tmp_path / "m.prom").read_text()
    assert "geoprobe_watch_rounds_total 15.0" in prom
    assert 'geoprobe_watch_state{state="normal"} 1.0' in prom
    assert "geoprobe_migrations_suspected_total 0.0" in prom
    assert w.store is not None and w.store.count_fixes() >= 3


def test_cross_border_move_is_confirmed_within_two_rounds(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world, w, emitted, hooked = watch_at_home(catalogue, tmp_path, 1)
    world.at = MADRID
    w.round()
    # A moved fingerprint is re-measured at once, not after the fast interval.
    assert w.fusion.state == State.SUSPECT and w.interval == 0.0
    w.round()
    confirmed = [e for e in emitted if e["type"] == events.CONFIRMED]
    assert len(confirmed) == 1
    d = confirmed[0]["data"]
    assert d["crossing"] is True and d["from"] == "DE" and d["to"] in ("ES", None)
    assert d["distance_km"] > 1000 and "rtt_fingerprint" in d["signals"]
    assert d["proof"] is True and d["jurisdiction"]["rule"] in ("sound", "certified")
    assert d["p_allowed"] == d["jurisdiction"]["p_allowed"] and d["source"] == "watch"
    assert types(hooked) == [
        events.SUSPECTED,
        events.CONFIRMED,
    ]  # the policy hook sees migrations only
    # No home is taken outside the allowed set: no baseline, every round judged, nothing said.
    n = len(emitted)
    assert w.fusion.state == State.OUTSIDE and w.baseline.rounds == 0
    for _ in range(12):
        w.round()
    assert w.fusion.state == State.OUTSIDE and w.baseline.rounds == 0
    assert w.interval == w.config.interval_s
    assert set(types(emitted[n:])) == {events.FIX}  # its fixes still say where it is
    assert all(e["data"]["jurisdiction"]["verdict"] == "outside" for e in emitted[n:])
    assert w.store is not None
    assert [t[1] for t in w.store.transitions()] == [
        "suspect",
        "confirming",
        "confirmed",
        "outside",
    ]
    assert (
        'geoprobe_migrations_confirmed_total{crossing="true"} 1'
        in (tmp_path / "m.prom").read_text()
    )
    assert 'geoprobe_watch_state{state="outside"} 1' in (tmp_path / "m.prom").read_text()


def test_back_inside_after_a_crossing_takes_a_new_home_there(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 6)
    world.at = MADRID
    for _ in range(3):
        w.round()
    assert w.fusion.state == State.OUTSIDE
    world.at = BERLIN
    w.round()
    w.round()
    back = [e["data"] for e in emitted if e["type"] == events.CONFIRMED][-1]
    assert back["crossing"] is False and (back["from"], back["to"]) == ("ES", "DE")
    # A fresh baseline at the new place, longer than the first: the new site's noise is unknown.
    assert w.baseline.rounds == 0
    warm = 0
    while w.warming_up:
        assert w.interval == w.config.fast
        w.round()
        warm += 1
    assert warm == w.config.post_move_warmup_rounds > w.config.warmup_rounds
    for _ in range(3):
        w.round()
    assert w.fusion.state == State.SETTLED and w.interval == w.config.interval_s
    assert w.jurisdiction.label(w.fusion.home_fix) == "DE"


def test_same_country_move_is_no_crossing(catalogue: Catalogue, tmp_path: Path) -> None:
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 2)
    world.at = BERLIN
    for _ in range(8):
        w.round()
    confirmed = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert confirmed and all(d["crossing"] is False for d in confirmed)


def test_restart_keeps_the_baseline_and_sees_a_move_made_while_down(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world, w, _, _ = watch_at_home(catalogue, tmp_path, 3)
    assert w.store is not None
    w.store.close()
    world.at = MADRID
    w2, emitted, _ = make_watcher(catalogue, world, tmp_path)
    assert w2.baseline.rounds >= 3  # no new warm-up at the new place
    w2.round()
    w2.round()
    assert [e["data"]["crossing"] for e in emitted if e["type"] == events.CONFIRMED] == [True]


def test_a_watch_killed_mid_suspicion_keeps_its_home(catalogue: Catalogue, tmp_path: Path) -> None:
    world, w, _, _ = watch_at_home(catalogue, tmp_path, 5)
    world.at = MADRID
    w.round()
    assert w.fusion.state == State.SUSPECT
    assert w.store is not None
    last = w.store.last_fix("watch")
    assert last is not None and last.certified != "DE"  # the moved fix is the last one stored
    w.store.close()  # as after kill -9: nothing but what was committed
    w2, emitted, _ = make_watcher(catalogue, world, tmp_path)
    assert w2.fusion.jurisdiction.label(w2.fusion.home_fix) == "DE"
    for _ in range(2):
        w2.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["from"] == "DE"


class Broken:
    name = "broken"

    def poll(self, measurements: Sequence[Measurement], now: float) -> Sequence[Any]:
        raise RuntimeError("no such device")


class StepSignal:
    """A timing signal (sample() -> Reading) that reports a clock step once."""

    name = "clock_offset"
    decisive = True

    def __init__(self) -> None:
        self.fired = False
        self.updates = 0

    def update(self, measurements: Sequence[Measurement]) -> None:
        self.updates += 1

    def sample(self) -> Any:
        from geoprobe.watch.signals.base import Reading

        fire = self.updates == 6 and not self.fired
        self.fired |= fire
        return Reading(
            self.name,
            value=52.0 if fire else 0.0,
            baseline=0.0,
            score=9.0 if fire else 0.0,
            anomalous=fire,
            unit="ms",
            reason="offset stepped +52 ms" if fire else "",
        )


def test_signals_feed_fusion_and_broken_ones_are_ignored(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    step = StepSignal()
    w, emitted, _ = make_watcher(
        catalogue, World(FRANKFURT, seed=4), tmp_path, signals=[Broken(), SignalAdapter(step)]
    )
    for _ in range(8):
        w.round()
    suspected = [e["data"] for e in emitted if e["type"] == events.SUSPECTED]
    assert len(suspected) == 1 and suspected[0]["signals"] == ["clock_offset"]
    assert step.updates == 8
    assert w.store is not None and w.store.load_baseline("signal:clock_offset") is not None


def test_run_stops_on_the_event_and_after_max_rounds(catalogue: Catalogue, tmp_path: Path) -> None:
    w, _, _ = make_watcher(catalogue, World(FRANKFURT, seed=5), tmp_path)
    w.run(threading.Event(), max_rounds=2)
    assert w.counters.rounds == 2
    stop = threading.Event()
    stop.set()
    w.run(stop)
    assert w.counters.rounds == 2


def test_hook_runner_keeps_order_survives_errors_and_queues_clears() -> None:
    seen: list[str] = []
    errors: list[BaseException] = []

    def respond(ev: dict[str, Any]) -> None:
        seen.append(ev["id"])
        if ev["id"] == "2":
            raise RuntimeError("webhook down")

    runner = HookRunner(respond, clear=lambda: seen.append("clear"), on_error=errors.append)
    for i in "123":
        runner.event({"id": i})
    runner.cleared()
    runner.close()
    assert seen == ["1", "2", "3", "clear"]
    assert [str(e) for e in errors] == ["webhook down"]
    assert not runner.thread.is_alive()


def test_without_immediate_remeasurement_a_suspicion_probes_at_the_fast_interval(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world = World(FRANKFURT, seed=1)
    w, _, _ = make_watcher(catalogue, world, tmp_path)
    w.config = WatchConfig(interval_s=1.0, warmup_rounds=3, remeasure_at_once=False)
    for _ in range(5):
        w.round()
    world.at = MADRID
    w.round()
    assert w.fusion.state == State.SUSPECT and w.interval == w.config.fast


def test_probe_timeout_follows_the_baseline_once_there_is_one(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    w, _, _ = make_watcher(catalogue, World(FRANKFURT, seed=3), tmp_path)
    assert w.probe_timeout(2.0) == 2.0  # no baseline yet: the caller's timeout
    for _ in range(4):
        w.round()
    worst = max(w.baseline.rtt(lid) or 0.0 for lid in w.baseline.history)
    t = w.probe_timeout(2.0)
    assert t == max(w.config.min_timeout_s, w.config.timeout_factor * worst / 1000) and t < 2.0
    assert w.probe_timeout(0.1) == 0.1  # never above the caller's timeout
    w.config = WatchConfig(adaptive_timeout=False)
    assert w.probe_timeout(2.0) == 2.0


class Resettable:
    """A signal that records being told about a confirmed move."""

    name = "resettable"
    decisive = True

    def __init__(self) -> None:
        self.resets = 0

    def sample(self) -> Any:
        from geoprobe.watch.signals.base import Reading

        return Reading(self.name, value=0.0)

    def reset(self) -> None:
        self.resets += 1


def test_signals_are_rebaselined_after_a_confirmed_move(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    sig = Resettable()
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 4, signals=[SignalAdapter(sig)])
    assert sig.resets == 0
    world.at = MADRID
    w.round()
    w.round()
    assert [e for e in emitted if e["type"] == events.CONFIRMED] and sig.resets == 1


class FixedReading:
    """A clock signal that reports one fixed step."""

    decisive = True

    def __init__(self, step_ms: float) -> None:
        self.name = "clock_landmarks"
        self.step_ms = step_ms

    def sample(self) -> Any:
        from geoprobe.watch.signals.base import Reading

        return Reading(
            self.name,
            value=self.step_ms,
            score=9.0,
            anomalous=True,
            unit="ms",
            reason=f"clock offset stepped {self.step_ms:+.1f} ms",
            detail={"step_ms": self.step_ms},
        )


def test_a_clock_step_down_is_recorded_but_never_decisive() -> None:
    (up,) = SignalAdapter(FixedReading(50.0)).poll([], 0.0)
    (down,) = SignalAdapter(FixedReading(-50.0)).poll([], 0.0)
    assert up.decisive and not down.decisive


def test_a_clock_step_with_the_move_confirms_the_crossing_in_that_round(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    step = StepSignal()  # fires on its 6th update: the first round after the move
    world, w, emitted, hooked = watch_at_home(catalogue, tmp_path, 6, signals=[SignalAdapter(step)])
    world.at = MADRID
    r = w.round()
    assert [t.to for t in r.transitions] == [
        State.SUSPECT,
        State.CONFIRMING,
        State.CONFIRMED,
        State.OUTSIDE,
    ]
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["from"] == "DE" and "clock_offset" in c["signals"]
    assert types(hooked) == [events.SUSPECTED, events.CONFIRMED]
    assert w.interval == w.config.interval_s  # outside: judged every round, not re-measured at once


class SwitchingWorld(World):
    """Signed samples, two per landmark, each with its clock offset and its send time.

    ``switch_to(dest, before)`` makes the next round span the switchover: the landmarks in
    ``before`` are probed first, at the old place with the old clock; the rest after the pause, at
    the new place with the guest clock 60 ms behind. Later rounds are wholly at the new place.
    """

    STEP_MS = 60.0

    def __init__(self, at: tuple[float, float], seed: int = 0) -> None:
        super().__init__(at, seed)
        self.step = 0.0
        self.pending: tuple[tuple[float, float], set[str]] | None = None
        self.bias = {lid: float(self.rng.uniform(-5, 5)) for lid, _, _ in LANDMARKS}
        self.t = 1e9

    def switch_to(self, dest: tuple[float, float], before: set[str]) -> None:
        self.pending = (dest, before)

    def measure(self, landmarks: Sequence[Landmark]) -> list[Measurement]:
        old_place, old_step, before = self.at, self.step, set[str]()
        if self.pending is not None:
            (self.at, before), self.pending = self.pending, None
            self.step = self.STEP_MS
        out = []
        for lm in sorted(landmarks, key=lambda lm: lm.id not in before):  # send order
            at, step = (old_place, old_step) if lm.id in before else (self.at, self.step)
            rtts = [rtts_at(*at, self.rng)[lm.id] for _ in range(2)]
            offs = [self.bias[lm.id] + step + float(self.rng.normal(0, 0.3)) for _ in rtts]
            self.t += 0.02
            sent = [self.t, self.t + 0.01]
            out.append(
                Measurement(lm.id, "udp", rtts_ms=rtts, sent=2, clock_offsets_ms=offs, sent_at=sent)
            )
        return out


ALL_IDS = {lid for lid, _, _ in LANDMARKS}
# The landmarks within 900 km of home (a minority) still answer from there ...
NEAR_HOME = {lid for lid, lat, lon in LANDMARKS if haversine_km(lat, lon, *FRANKFURT) < 900}
# ... or every landmark east of Greenwich does (a majority): only the last 30 % of the round's
# samples, the western landmarks, are sent after the pause.
EAST = {lid for lid, _, lon in LANDMARKS if lon > 0}


@pytest.mark.parametrize(
    "before,split",
    [(NEAR_HOME, True), (EAST, True), (NEAR_HOME, False)],
    ids=["most-samples-after", "last-30%-after", "no-split"],
)
def test_a_round_spanning_the_switchover_is_split_at_the_clock_step(
    catalogue: Catalogue, tmp_path: Path, before: set[str], split: bool
) -> None:
    """Part of a round answered from Frankfurt, the rest from Madrid after the pause: the part
    after the clock step alone proves the crossing in that very round. Unsplit, the same round is
    a mix of both places and can only raise a suspicion."""
    from geoprobe.watch.signals.clock import ClockSignal

    world = SwitchingWorld(FRANKFURT, seed=7)
    clock = ClockSignal()
    w, emitted, _ = make_watcher(catalogue, world, tmp_path, signals=[SignalAdapter(clock)])
    if not split:
        clock.after_step = lambda ms: None  # type: ignore[method-assign,assignment]
    for _ in range(6):
        w.round()
    world.switch_to(MADRID, before)
    r = w.round()
    assert State.SUSPECT in [t.to for t in r.transitions]
    confirmed = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    if split:
        assert [t.to for t in r.transitions][-2:] == [State.CONFIRMED, State.OUTSIDE]
        (c,) = confirmed
        assert c["crossing"] is True and (c["from"], c["to"]) == ("DE", "ES")
        assert set(r.rtts) == ALL_IDS - before
    else:
        assert confirmed == [] and set(r.rtts) == ALL_IDS


def test_a_watch_started_outside_raises_a_crossing_from_nowhere(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    w, emitted, hooked = make_watcher(catalogue, World(MADRID, seed=11), tmp_path)
    w.round()
    assert emitted == [] and w.interval == 0.0  # the next round decides: at once
    w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["from"] is None and c["to"] == "ES"
    assert c["signals"] == ["jurisdiction"] and types(hooked) == [events.CONFIRMED]
    assert w.fusion.state == State.OUTSIDE and w.baseline.rounds == 0
    for _ in range(5):
        w.round()
    assert len([e for e in emitted if e["type"] == events.CONFIRMED]) == 1
    assert w.fusion.home_fix is None and w.baseline.rounds == 0


def test_a_move_during_warm_up_is_a_move(catalogue: Catalogue, tmp_path: Path) -> None:
    world = World(FRANKFURT, seed=12)
    w, emitted, _ = make_watcher(catalogue, world, tmp_path)
    w.round()  # the first warm-up round: home at Frankfurt
    world.at = MADRID
    for _ in range(3):
        w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["from"] == "DE" and c["to"] == "ES"
    assert w.fusion.state == State.OUTSIDE


class MovedWhileFirstRoundWorld(World):
    """The move lands inside the first round: the landmarks in ``before`` answer from the old
    place, the rest already from the new one; later rounds are wholly at the new place."""

    def __init__(
        self, at: tuple[float, float], dest: tuple[float, float], before: set[str]
    ) -> None:
        super().__init__(at, seed=21)
        self.dest, self.before = dest, before

    def measure(self, landmarks: Sequence[Landmark]) -> list[Measurement]:
        old = super().measure([lm for lm in landmarks if lm.id in self.before])
        self.at = self.dest
        return old + super().measure([lm for lm in landmarks if lm.id not in self.before])


@pytest.mark.parametrize("split", range(10, 16))
def test_a_first_round_that_spans_a_move_is_never_the_home(
    catalogue: Catalogue, tmp_path: Path, split: int
) -> None:
    """Whichever landmarks answer before the move; some splits put the mixed fix in CH, LU or BE."""
    rng = random.Random(split)
    ids = sorted(ALL_IDS)
    world = MovedWhileFirstRoundWorld(FRANKFURT, MADRID, set(rng.sample(ids, rng.randint(1, 59))))
    w, emitted, _ = make_watcher(catalogue, world, tmp_path)
    for _ in range(6):
        w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["to"] == "ES" and c["from"] in (None, "DE"), c
    assert w.fusion.state == State.OUTSIDE and w.fusion.home_fix is None


def test_a_first_round_astride_the_border_waits_for_a_second_before_it_is_home(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    """Basel, where DE, FR and CH meet: the first round is judged astride the border, so it is no
    home yet, but later warm-up rounds are still measured against its fix (a move under the
    warm-up's 100 km is no move), and the second round makes it home."""
    world = World((47.56, 7.59), seed=1)
    w, emitted, _ = make_watcher(catalogue, world, tmp_path)
    w.round()
    assert w.fusion.verdict is not None and w.fusion.verdict.verdict == "straddles"
    assert w.fusion.home_fix is None and w.baseline.fix is not None
    assert types(emitted) == [events.FIX]  # the first fix is told at once all the same
    w.round()
    assert w.fusion.home_fix is not None and w.fusion.state == State.NORMAL


def test_a_move_within_the_allowed_set_during_warm_up_stays_out_of_the_baseline(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world = World(FRANKFURT, seed=13)
    w, emitted, _ = make_watcher(catalogue, world, tmp_path)
    w.round()
    world.at = BERLIN
    r = w.round()
    assert r.shift is not None and r.shift.outcome == "moved"
    assert w.baseline.rounds == 1 and w.fusion.state == State.SUSPECT
    for _ in range(3):
        w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is False and c["from"] == "DE" and c["distance_km"] > 300


def test_a_restart_after_a_crossing_resumes_outside_without_a_new_event(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world, w, _, _ = watch_at_home(catalogue, tmp_path, 14)
    world.at = MADRID
    w.round()
    w.round()
    assert w.fusion.state == State.OUTSIDE
    assert w.store is not None
    w.store.close()  # as after kill -9 right after the crossing was recorded
    w2, emitted2, hooked2 = make_watcher(catalogue, world, tmp_path)
    assert w2.fusion.state == State.OUTSIDE and w2.fusion.home_fix is None
    for _ in range(4):
        w2.round()
        assert w2.fusion.state == State.OUTSIDE  # never "normal" outside the allowed set
    assert [e for e in emitted2 if e["type"] == events.CONFIRMED] == [] and hooked2 == []


def test_a_stored_baseline_outside_the_allowed_set_is_never_adopted(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    from geoprobe.watch.shift import Baseline

    rng = np.random.default_rng(15)
    madrid = Baseline()
    for _ in range(5):
        madrid.add(rtts_at(*MADRID, rng))
    with WatchStore(tmp_path / "geoprobe.sqlite") as st:
        st.save_baseline("rtt", madrid.to_json())
    w, emitted, _ = make_watcher(catalogue, World(MADRID, seed=15), tmp_path)
    assert w.baseline.rounds == 0 and w.fusion.home_fix is None
    w.round()
    w.round()
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["from"] is None


def test_the_metrics_say_when_the_baseline_is_built(catalogue: Catalogue, tmp_path: Path) -> None:
    w, _, _ = make_watcher(catalogue, World(FRANKFURT, seed=16), tmp_path)
    prom = tmp_path / "m.prom"
    w.round()
    assert "\ngeoprobe_watch_warming_up 1.0\n" in prom.read_text()
    while w.warming_up:
        w.round()
    assert "\ngeoprobe_watch_warming_up 0.0\n" in prom.read_text()


class ColdStartWorld(World):
    """The first round answers slowly (cold caches, key setup): 10 ms more on half the landmarks."""

    def __init__(self, at: tuple[float, float], seed: int) -> None:
        super().__init__(at, seed)
        self.first = True

    def measure(self, landmarks: Sequence[Landmark]) -> list[Measurement]:
        ms = super().measure(landmarks)
        if self.first:
            self.first = False
            for m in ms[::2]:
                m.rtts_ms = [r + 10.0 for r in m.rtts_ms]
        return ms


def test_a_slow_first_round_is_no_move_during_warm_up(catalogue: Catalogue, tmp_path: Path) -> None:
    w, emitted, _ = make_watcher(catalogue, ColdStartWorld(FRANKFURT, seed=17), tmp_path)
    for _ in range(10):
        w.round()
    assert set(types(emitted)) == {events.FIX} and w.fusion.state == State.NORMAL


def test_a_large_catalogue_is_probed_near_home_and_chosen_again_after_a_move(
    catalogue: Catalogue, tmp_path: Path
) -> None:

    world = World(FRANKFURT, seed=4)
    probed: list[list[str]] = []

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        probed.append([lm.id for lm in landmarks])
        return world.measure(landmarks)

    w, emitted, _hooked = make_watcher(catalogue, world, tmp_path)
    w.measure = measure
    w.config = WatchConfig(
        interval_s=1.0, warmup_rounds=3, fix_every=5, max_landmarks=20, spread_landmarks=5
    )
    for _ in range(6):
        w.round()
    by_id = {lm.id: lm for lm in catalogue.landmarks}

    def nearest(at: tuple[float, float]) -> str:
        return min(by_id, key=lambda i: float(haversine_km(*at, by_id[i].lat, by_id[i].lon)))

    assert len(probed[0]) == len(catalogue.landmarks)  # the first round places the VM
    assert all(len(p) == 20 for p in probed[1:]) and nearest(FRANKFURT) in probed[-1]
    assert not w.warming_up  # built from the chosen landmarks: three rounds after the first
    world.at = MADRID
    for _ in range(4):
        w.round()
        if any(e["type"] == events.CONFIRMED for e in emitted):
            break
    (c,) = [e["data"] for e in emitted if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["to"] in ("ES", None)
    w.round()
    assert len(probed[-1]) == 20 and nearest(MADRID) in probed[-1]
