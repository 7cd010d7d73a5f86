"""Sentinel landmarks: which ones are chosen, and when their samples ask for a full round."""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_daemon import World, catalogue, make_watcher  # noqa: F401  (fixture)
from watch_world import LANDMARKS

from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.watch.daemon import WatchConfig
from geoprobe.watch.sentinel import (
    Sentinel,
    SentinelConfig,
    SentinelDetector,
    Trigger,
    _bearing,
    select_sentinels,
)


def lm(lid: str, lat: float, lon: float) -> Landmark:
    return Landmark(lid, lat, lon)


# A VM at Frankfurt; landmarks around it at growing distance, in all directions.
HOME = (50.1, 8.7)
RING = [
    lm("near-w", 50.1, 7.9),  # ~60 km
    lm("near-e", 50.1, 9.6),  # ~65 km
    lm("north", 55.7, 9.0),
    lm("north2", 56.0, 9.5),
    lm("south", 44.0, 8.9),
    lm("east", 50.1, 19.0),
    lm("west", 50.0, -1.0),
]
RTTS = {"near-w": 1.5, "near-e": 1.8, "north": 9.0, "north2": 9.5, "south": 10.0}
RTTS |= {"east": 12.0, "west": 11.0}


def test_the_nearest_come_first_then_far_ones_in_other_directions() -> None:
    got = select_sentinels(RTTS, RING, HOME, SentinelConfig(near=2, far=3))
    assert got[:2] == ["near-w", "near-e"]
    # north and north2 lie in one direction: only one of them, and south, east or west with it.
    far = got[2:]
    assert len(far) == 3 and len(set(far) & {"north", "north2"}) == 1
    bearings = sorted(_bearing(*HOME, RING_BY_ID[x].lat, RING_BY_ID[x].lon) for x in far)
    assert all(b - a >= 45 for a, b in itertools.pairwise(bearings))


RING_BY_ID = {x.id: x for x in RING}


def test_noisy_and_slow_landmarks_are_left_out_while_enough_others_remain() -> None:
    noise = dict.fromkeys(RTTS, 0.1) | {"near-w": 1.0}  # 1 ms on 1.5 ms: too jittery to watch
    got = select_sentinels(RTTS, RING, HOME, SentinelConfig(near=2, far=1), noise=noise)
    assert "near-w" not in got and got[0] == "near-e"
    slow = select_sentinels(RTTS, RING, HOME, SentinelConfig(near=1, far=1, max_rtt_ms=10.0))
    assert all(RTTS[x] <= 10.0 for x in slow)
    # Without a home the far ones are simply the next lowest RTTs; unknown ids are ignored.
    plain = select_sentinels(RTTS | {"ghost": 0.1}, RING, None, SentinelConfig(near=1, far=2))
    assert plain == ["near-w", "near-e", "north"]


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([x.id for x in RING]),
        st.one_of(st.floats(min_value=-5, max_value=400), st.just(float("nan"))),
        max_size=7,
    ),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_selection_never_fails_and_never_repeats(
    rtts: dict[str, float], near: int, far: int
) -> None:
    if near + far == 0:
        return
    got = select_sentinels(rtts, RING, HOME, SentinelConfig(near=near, far=far))
    assert len(got) == len(set(got)) <= near + far
    assert all(0 <= rtts[x] <= 150 for x in got)


def feed(
    d: SentinelDetector, lid: str, rtts: list[float], offset: float | None = None
) -> list[Trigger]:
    out = []
    for i, r in enumerate(rtts):
        t = d.add(lid, r, offset, float(i))
        if t is not None:
            out.append(t)
            d.reset(lid)
    return out


def jittered(floor: float, n: int, rng: random.Random, scale: float = 0.4) -> list[float]:
    """Queueing only adds delay: floor plus a gamma-distributed excess."""
    return [floor + rng.gammavariate(1.0, scale) for _ in range(n)]


def test_jitter_at_rest_never_triggers() -> None:
    rng = random.Random(1)
    d = SentinelDetector(SentinelConfig())
    for lid, floor in (("a", 2.0), ("b", 9.0), ("c", 40.0)):
        assert feed(d, lid, jittered(floor, 2000, rng, scale=0.1 * floor**0.5), 0.0) == []


def test_a_lasting_rise_triggers_and_a_spike_does_not() -> None:
    rng = random.Random(2)
    c = SentinelConfig()
    d = SentinelDetector(c)
    base = jittered(2.0, c.learn + 10, rng)
    spike = [*base, 30.0, 2.1, 2.2, *jittered(2.0, 20, rng)]
    assert feed(d, "a", spike) == []
    d.reset()
    moved = [*base, *jittered(12.0, c.rise_n, rng)]
    got = feed(d, "a", moved)
    assert [t.kind for t in got] == ["rise"] and got[0].change_ms > 8
    assert "rose" in got[0].describe()


def test_a_fall_triggers_after_fall_n_samples() -> None:
    rng = random.Random(3)
    c = SentinelConfig()
    d = SentinelDetector(c)
    got = feed(d, "far", [*jittered(40.0, c.learn + 5, rng), 30.0, 30.4])
    assert [t.kind for t in got] == ["fall"] and got[0].change_ms < -8
    # One low sample is not enough: the floor may have been learnt while the VM was loaded.
    d.reset()
    assert feed(d, "far", [*jittered(40.0, c.learn + 5, rng), 30.0, 41.0, 40.5]) == []
    # Within the margin is no fall; a learnt floor of a quiet path is tight.
    d.reset()
    fall = [*jittered(40.0, c.learn + 5, rng, scale=0.05), 39.0, 38.7]
    assert feed(d, "far", fall) == []
    assert feed(d, "far", [37.0, 37.2]) != []


def test_a_clock_step_on_two_sentinels_triggers_and_on_one_does_not() -> None:
    c = SentinelConfig()
    d = SentinelDetector(c)
    for i in range(c.learn + 2):
        for lid in ("a", "b"):
            assert d.add(lid, 5.0, 0.3 * (i % 3), float(i)) is None
    assert d.add("a", 5.0, 60.0, 20.0) is None
    assert d.add("a", 5.0, 61.0, 20.5) is None  # one landmark: a path's asymmetry, not a step
    assert d.add("b", 5.0, 60.5, 21.0) is None
    t = d.add("b", 5.0, 60.2, 21.5)
    assert t is not None and t.kind == "clock" and t.change_ms > 50


def test_bad_samples_are_ignored_and_margins_follow_the_floor() -> None:
    c = SentinelConfig()
    d = SentinelDetector(c)
    assert d.add("a", float("nan")) is None and d.add("a", -1.0) is None
    assert d.margins("a") is None and not d.ready
    feed(d, "a", [100.0] * c.learn)
    assert d.ready
    fall, rise = d.margins("a") or (0.0, 0.0)
    assert fall == pytest.approx(c.fall_rel * 100) and rise == pytest.approx(c.rise_rel * 100)


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        SentinelConfig(near=0, far=0)
    with pytest.raises(ValueError):
        SentinelConfig(period_s=0)
    assert SentinelConfig(near=2, far=2, period_s=0.5).probes_per_s == 8


class FakeSentinel:
    def __init__(self) -> None:
        self.config = SentinelConfig(near=1, far=2)
        self.sets: list[list[str]] = []
        self.held: list[bool] = []

    def watch(self, landmarks: list[Landmark]) -> None:
        self.sets.append([x.id for x in landmarks])

    def hold(self, held: bool) -> None:
        self.held.append(held)


def test_the_watcher_arms_sentinels_after_warm_up_and_a_trigger_cuts_the_wait(
    catalogue: Catalogue,  # noqa: F811
    tmp_path: Path,
) -> None:
    world = World((50.1, 8.7))
    s = FakeSentinel()
    w, _evs, _hooked = make_watcher(catalogue, world, tmp_path, sentinel=s)
    w.config = WatchConfig(interval_s=30.0, warmup_rounds=3)
    w.round()
    assert s.sets == []  # warming up: no sentinels yet
    while w.warming_up:
        w.round()
    assert len(s.sets) == 1 and len(s.sets[0]) == 3
    assert s.held[-2:] == [True, False]  # held while a round probes
    nearest = min(LANDMARKS, key=lambda x: abs(x[1] - 50.1) + abs(x[2] - 8.7))[0]
    assert nearest in s.sets[0]
    stop = threading.Event()
    t = threading.Timer(0.3, lambda: w.trigger(Trigger("rise", nearest, 9.0, 3.0, 0.0)))
    t.start()
    thread = threading.Thread(target=w.run, args=(stop,), kwargs={"max_rounds": 2})
    thread.start()
    thread.join(10.0)  # two rounds 30 s apart, unless the trigger starts the second one
    stop.set()
    assert not thread.is_alive() and w.counters.sentinel_triggers == 1


def test_a_rise_every_sentinel_shares_is_load_not_a_move() -> None:
    c = SentinelConfig()
    floors = {"a": 2.0, "b": 3.0, "c": 20.0}
    d = SentinelDetector(c)
    for i in range(c.learn):
        for lid, f in floors.items():
            assert d.add(lid, f + 0.1 * (i % 2), None, float(i)) is None
    # Every path 40 ms slower (the VM starved of CPU, or delay added on its link): no trigger.
    got = [d.add(lid, f + 40.0, None, 10.0 + k) for k in range(4) for lid, f in floors.items()]
    assert got == [None] * 12
    # Unequal changes on top of it are a move: "c" rises 15 ms more than the others.
    got = [d.add("c", floors["c"] + 55.0, None, 20.0 + k) for k in range(c.rise_n)]
    assert got[-1] is not None and got[-1].kind == "rise" and 10 < got[-1].change_ms < 20


def test_triggered_rounds_come_from_a_bucket(catalogue: Catalogue, tmp_path: Path) -> None:  # noqa: F811
    w, _evs, _hooked = make_watcher(catalogue, World((50.1, 8.7)), tmp_path)
    w.config = WatchConfig(interval_s=30.0, trigger_burst=2, trigger_refill_s=3600.0)
    w._tokens = 2.0
    why = Trigger("fall", "lm00", -9.0, 2.0, 0.0)
    for _ in range(4):
        w.trigger(why)
        w._wake.clear()  # the round it asked for ran
    assert w.counters.sentinel_triggers == 2  # the bucket is empty until it refills
    w.trigger(why)
    assert not w._wake.is_set()
    # A second sentinel firing within seconds of the first is a move's signature: no token needed.
    w.trigger(Trigger("fall", "lm01", -9.0, 2.0, 0.0))
    assert w._wake.is_set() and w.counters.sentinel_triggers == 3


def test_a_trigger_whose_round_finds_a_move_gives_its_token_back(
    catalogue: Catalogue,  # noqa: F811
    tmp_path: Path,
) -> None:
    world = World((50.1, 8.7))
    w, _evs, _hooked = make_watcher(catalogue, world, tmp_path)
    w.config = WatchConfig(interval_s=30.0, warmup_rounds=3, trigger_refill_s=3600.0)
    while w.warming_up:
        w.round()
    for _ in range(3):
        w.round()
    w._tokens = 1.0
    why = Trigger("rise", "lm00", 9.0, 3.0, 0.0)
    w.trigger(why)
    w.round()  # nothing moved: the token is spent
    w.trigger(why)
    assert w.counters.sentinel_triggers == 1 and not w._wake.is_set()
    w._tokens = 1.0
    w.trigger(why)
    world.at = (40.42, -3.70)  # Madrid
    w.round()  # the move is seen: the token comes back
    assert w._tokens == pytest.approx(1.0, abs=1e-3)


def test_a_clock_step_needs_no_token_and_a_refusal_is_said_once(
    catalogue: Catalogue,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w, _evs, _hooked = make_watcher(catalogue, World((50.1, 8.7)), tmp_path)
    w.config = WatchConfig(interval_s=30.0, warmup_rounds=3, trigger_refill_s=3600.0)
    while w.warming_up:
        w.round()
    w._tokens = 0.0
    caplog.set_level("INFO", logger="geoprobe.watch")
    rise = Trigger("rise", "lm00", 9.0, 3.0, 0.0)
    assert not w.trigger(rise) and not w.trigger(rise)  # budget spent: refused, asked again
    assert caplog.text.count("budget is spent") == 1
    # A clock step is several sentinels at once: a migration's pause, worth a round always.
    assert w.trigger(Trigger("clock", "lm01", 60.0, 20.0, 0.0))
    assert w._wake.is_set() and w.counters.sentinel_triggers == 1
    assert w.trigger(rise)  # a round is due already: nothing to keep asking for
    w.round()
    assert not w._wake.is_set() and w.counters.sentinel_triggers == 1


@dataclass
class _Sample:
    rtt_ms: float
    clock_offset_ms: float | None = None


class _Prober:
    """A sentinel prober whose one landmark's path gets 15 ms longer after its sixth sample."""

    def __init__(self) -> None:
        self.sent = 0

    def supports(self, _lm: Landmark) -> str | None:
        return None

    async def send(self, _lm: Landmark, _addr: str) -> _Sample:
        self.sent += 1
        return _Sample(5.0 if self.sent <= 6 else 20.0)

    def close(self) -> None:
        pass


def test_a_refused_sentinel_keeps_its_floor_until_a_round_is_granted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geoprobe.probe import scheduler

    prober = _Prober()

    async def open_prober(_method: str) -> _Prober:
        return prober

    async def resolve(_lm: Landmark, _timeout: float) -> str:
        return "127.0.0.1"

    monkeypatch.setattr(scheduler, "open_prober", open_prober)
    monkeypatch.setattr(scheduler, "resolve", resolve)
    asked: list[Trigger] = []
    granted = threading.Event()

    def on_trigger(t: Trigger) -> bool:
        asked.append(t)
        if len(asked) < 4:
            return False  # the budget is spent: no round yet
        granted.set()
        return True

    config = SentinelConfig(near=1, far=0, period_s=0.01, learn=3, rise_n=1)
    s = Sentinel("udp", on_trigger, config)
    s.watch([lm("a", 50.0, 8.0)])
    s.start()
    try:
        assert granted.wait(10.0)
        time.sleep(0.2)  # after the granted one it learns the new floor: no more asking
    finally:
        s.stop()
    assert len(asked) == 4 and all(t.kind == "rise" for t in asked) and s.triggers == 1
    assert s.detector.margins("a") is not None  # learnt anew, at 20 ms
    assert s.detector._tracks["a"].floor == pytest.approx(20.0)
