"""The fingerprint change test: quiet when nothing moved, firm on real moves, unmoved by added
delay."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from watch_world import LANDMARKS, make_fix, rtts_at

from geoprobe.geo.fix import Fix
from geoprobe.geo.sphere import haversine_km
from geoprobe.watch.shift import Baseline, ShiftTest, binom_sf

FRANKFURT = (50.11, 8.68)
PARIS = (48.86, 2.35)
MUNICH = (48.14, 11.58)


def baseline_at(lat: float, lon: float, rng: np.random.Generator, rounds: int = 5) -> Baseline:
    b = Baseline()
    for _ in range(rounds):
        b.add(rtts_at(lat, lon, rng))
    b.fix = make_fix(lat, lon)
    return b


class CountingSolver:
    def __init__(self, lat: float, lon: float) -> None:
        self.calls = 0
        self.lat, self.lon = lat, lon

    def __call__(self, rtts: Mapping[str, float]) -> Fix:
        self.calls += 1
        return make_fix(self.lat, self.lon)


def test_binom_sf_matches_direct_sum() -> None:
    for n, p in ((10, 0.02), (60, 0.1), (5, 0.5)):
        for k in range(n + 2):
            direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
            assert binom_sf(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-15)


def test_stationary_rounds_never_move_and_never_solve() -> None:
    rng = np.random.default_rng(1)
    b = baseline_at(*FRANKFURT, rng)
    test = ShiftTest()
    solver = CountingSolver(*FRANKFURT)
    outcomes = [test.assess(b, rtts_at(*FRANKFURT, rng), solve=solver).outcome for _ in range(300)]
    assert outcomes.count("moved") == 0
    assert outcomes.count("not_moved") >= 295
    assert solver.calls == outcomes.count("unsure")


def test_cross_border_move_is_moved_with_unforgeable_decreases() -> None:
    rng = np.random.default_rng(2)
    b = baseline_at(*FRANKFURT, rng)
    solver = CountingSolver(*PARIS)
    r = ShiftTest().assess(b, rtts_at(*PARIS, rng), solve=solver)
    assert r.outcome == "moved"
    assert solver.calls == 1 and r.fix is not None
    # Landmarks west of Frankfurt got closer: their RTTs fell, which added delay cannot do.
    assert r.decreased and all(
        {i: lo for i, _, lo in LANDMARKS}[lid] < 8.68 for lid in r.decreased[:5]
    )
    true_km = float(haversine_km(*FRANKFURT, *PARIS))
    assert r.distance_km == pytest.approx(true_km, rel=1e-6)
    # The sound "still near X" bound never understates the true move.
    assert r.max_move_km is not None and r.max_move_km >= true_km


def test_short_move_is_still_detected() -> None:
    rng = np.random.default_rng(3)
    b = baseline_at(*FRANKFURT, rng)
    r = ShiftTest().assess(b, rtts_at(*MUNICH, rng), solve=CountingSolver(*MUNICH))
    assert r.outcome == "moved"


def test_common_mode_added_delay_is_not_a_move() -> None:
    rng = np.random.default_rng(4)
    b = baseline_at(*FRANKFURT, rng)
    r = ShiftTest().assess(b, rtts_at(*FRANKFURT, rng, added=8.0))
    assert r.outcome == "not_moved"
    assert len(r.increased) == len(LANDMARKS)
    assert not r.decreased
    assert r.common_mode_ms == pytest.approx(8.0, abs=0.5)
    assert any("common-mode" in x for x in r.reasons)


def test_delay_added_to_some_landmarks_is_unsure_not_moved() -> None:
    rng = np.random.default_rng(5)
    b = baseline_at(*FRANKFURT, rng)
    rtts = rtts_at(*FRANKFURT, rng)
    for lid, _, _ in LANDMARKS[:20]:
        rtts[lid] += 15.0
    r = ShiftTest().assess(b, rtts)
    assert r.outcome == "unsure"
    assert len(r.changed) == 20 and not r.decreased
    assert any("rises alone" in x for x in r.reasons)
    # The same rises with RTT falling to two landmarks are a move.
    for lid, _, _ in LANDMARKS[-2:]:
        rtts[lid] -= 6.0
    assert ShiftTest().assess(b, rtts).outcome == "moved"


def test_too_few_landmarks_is_unsure() -> None:
    rng = np.random.default_rng(6)
    b = baseline_at(*FRANKFURT, rng)
    few = dict(list(rtts_at(*PARIS, rng).items())[:3])
    assert ShiftTest().assess(b, few).outcome == "unsure"


def test_noisy_landmarks_leave_the_stable_subset() -> None:
    rng = np.random.default_rng(7)
    b = Baseline()
    for _ in range(6):
        r = rtts_at(*FRANKFURT, rng)
        r["lm00"] = float(rng.uniform(5, 80))  # a landmark behind a congested link
        b.add(r)
    assert "lm00" not in ShiftTest().stable_subset(b)
    assert "lm01" in ShiftTest().stable_subset(b)


def test_baseline_round_trips_through_json() -> None:
    rng = np.random.default_rng(8)
    b = baseline_at(*FRANKFURT, rng, rounds=7)
    c = Baseline.from_json(b.to_json())
    assert c.rounds == b.rounds == 7
    for lid, _, _ in LANDMARKS:
        assert c.rtt(lid) == b.rtt(lid)
        assert c.scale(lid, floor_ms=0.3, rel_floor=0.03) == b.scale(
            lid, floor_ms=0.3, rel_floor=0.03
        )


def test_baseline_window_forgets_old_rounds() -> None:
    b = Baseline(window=3)
    for v in (10.0, 10.0, 10.0, 50.0, 50.0, 50.0):
        b.add({"x": v})
    assert b.rtt("x") == 50.0
