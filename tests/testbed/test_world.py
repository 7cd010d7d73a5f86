"""The emulated world: placement, delays, jitter, the distance model and calibration data."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from testbed_world_data import RTTS

from geoprobe.datasets import load_dataset
from geoprobe.errors import InputError
from geoprobe.geo.sphere import haversine_km
from geoprobe.testbed.builtin import builtin_dataset
from geoprobe.testbed.delays import LIGHT_SLOPE, PathDelay
from geoprobe.testbed.world import World, choose_landmarks, parse_position


def _world(d: Path, at: str, jitter: bool = False) -> World:
    ds = load_dataset(d)
    own = ds.index[ds.find(at).id]
    w = World(ds, choose_landmarks(ds, exclude=own), seed=1, jitter=jitter)
    w.place_at_server(at)
    return w


def test_placed_at_server_injects_that_servers_row(small_dataset_dir: Path) -> None:
    w = _world(small_dataset_dir, "Frankfurt")
    assert "Frankfurt" not in w.ids
    inj = w.injected_min_ms()
    for lid, r in inj.items():
        assert r == RTTS[("Frankfurt", lid)]


def test_move_switches_every_delay_to_the_new_row(small_dataset_dir: Path) -> None:
    w = _world(small_dataset_dir, "Frankfurt")
    w.place("Tokyo")
    inj = w.injected_min_ms()
    assert inj["NewYork"] == 160.0 and inj["Paris"] == 225.0
    assert inj["Tokyo"] < 1.0  # the VM now shares a data centre with that landmark
    assert (
        w.placement is not None
        and w.placement.server is not None
        and w.placement.server.name == "Tokyo"
    )


def test_jitter_only_adds_delay_and_has_the_pairs_mean() -> None:
    rng = random.Random(3)
    path = PathDelay(min_ms=20.0, excess_ms=2.0, spread_ms=1.0)
    xs = [path.sample(rng) for _ in range(20000)]
    assert min(xs) >= 20.0
    assert statistics.fmean(xs) == pytest.approx(22.0, abs=0.05)
    assert statistics.pstdev(xs) == pytest.approx(1.0, abs=0.05)


def test_no_jitter_gives_the_floor_every_time(small_dataset_dir: Path) -> None:
    w = _world(small_dataset_dir, "Paris", jitter=False)
    k = w.ids.index("Madrid")
    assert {w.sample_ms(k) for _ in range(50)} == {18.0}
    wj = _world(small_dataset_dir, "Paris", jitter=True)
    samples = [wj.sample_ms(k) for _ in range(200)]
    assert min(samples) >= 18.0 and max(samples) > 18.0


def test_model_placement_never_beats_light_and_tracks_distance() -> None:
    ds = builtin_dataset()
    w = World(ds, list(range(len(ds))), jitter=False)
    w.place_at(50.0, 8.0)
    inj = np.array([p.min_ms for p in w.delays])
    km = np.asarray(haversine_km(50.0, 8.0, ds.lats, ds.lons))
    assert np.all(inj >= km * LIGHT_SLOPE)
    near, far = ds.find("Frankfurt"), ds.find("Sydney")
    assert inj[ds.index[near.id]] < 5.0
    assert inj[ds.index[far.id]] > 100.0


def test_calibration_rtts_are_landmark_pairs_only(small_dataset_dir: Path) -> None:
    w = _world(small_dataset_dir, "Frankfurt")
    rtts = w.calibration_rtts()
    assert len(rtts) == 10  # 5 landmarks, each pair once
    assert all("Frankfurt" not in (a, b) for a, b, _ in rtts)
    assert ("Paris", "Madrid", 18.0) in rtts


def test_landmark_draw_is_deterministic_and_sized() -> None:
    ds = builtin_dataset()
    a = choose_landmarks(ds, exclude=0, count=20, seed=7)
    assert a == choose_landmarks(ds, exclude=0, count=20, seed=7)
    assert len(a) == 20 and 0 not in a
    assert a != choose_landmarks(ds, exclude=0, count=20, seed=8)


def test_bad_placement_is_an_input_error(small_dataset_dir: Path) -> None:
    w = _world(small_dataset_dir, "Frankfurt")
    with pytest.raises(InputError):
        w.place("Atlantis")
    with pytest.raises(InputError):
        w.place("95,10")
    assert parse_position("50.1,8.6") == (50.1, 8.6)
    assert parse_position("Paris") is None


def test_control_requests_are_validated(small_dataset_dir: Path) -> None:
    from geoprobe.testbed import build_testbed

    tb = build_testbed(load_dataset(small_dataset_dir), "Paris")
    assert tb.handle("move")["ok"] is False
    assert "unknown op" in tb.handle({"op": "explode"})["error"]
    assert tb.handle({"op": "move"})["ok"] is False
    bad = tb.handle({"op": "move", "to": "Atlantis"})
    assert bad["ok"] is False and "Atlantis" in bad["error"]
    moved = tb.handle({"op": "move", "to": "Warsaw"})
    assert moved["ok"] and moved["vm"]["server"] == "Warsaw" and moved["moves"] == 1
    assert tb.handle({"op": "delays"})["delays_ms"]["Madrid"] == 45.0


def test_position_next_to_a_server_borrows_its_measured_row(small_dataset_dir: Path) -> None:
    ds = load_dataset(small_dataset_dir)
    w = World(ds, list(range(len(ds))), jitter=False)
    w.place_at(48.86, 2.35)  # exactly at Paris
    inj = w.injected_min_ms()
    assert inj["Madrid"] == pytest.approx(18.0) and inj["Tokyo"] == pytest.approx(225.0)
    w.place_at(48.0, 2.35)  # ~95 km south of Paris: still Paris's row, adjusted by distance
    assert 10.0 < w.injected_min_ms()["Madrid"] < 18.0
