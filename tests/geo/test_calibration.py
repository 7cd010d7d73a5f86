"""Calibration: the closed-form bestline equals the published LP; vetting finds planted liars."""

from __future__ import annotations

import numpy as np
import pytest
from engine_world import make_world

from geoprobe.geo.calibration import (
    LIGHT_SLOPE,
    bestline,
    bestline_lp,
    fit_arrays,
    soft_loglik,
    sound_radius_km,
    vet,
)
from geoprobe.geo.sphere import distance_matrix_km


def test_sound_bound_is_100_km_per_ms() -> None:
    assert sound_radius_km(12.5) == pytest.approx(1250.0)
    assert sound_radius_km(-1.0) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_bestline_matches_linprog_and_lies_below_every_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    km = rng.uniform(0, 8000, 60)
    rtt = km / 100 * rng.uniform(1.1, 3.0, 60) + rng.uniform(0, 20, 60)
    m, b = bestline(km, rtt)
    m_lp, b_lp = bestline_lp(km, rtt)
    assert m == pytest.approx(m_lp, rel=1e-6, abs=1e-9)
    assert b == pytest.approx(b_lp, rel=1e-6, abs=1e-6)
    assert m >= LIGHT_SLOPE and b >= 0
    assert (m * km + b <= rtt + 1e-9).all()


def test_bestline_faster_than_light_point_falls_back_to_light() -> None:
    km = np.array([1000.0, 2000.0, 3000.0])
    rtt = np.array([5.0, 30.0, 40.0])  # 5 ms over 1000 km is faster than light
    assert bestline(km, rtt) == (LIGHT_SLOPE, 0.0)


def test_vetting_catches_a_planted_liar() -> None:
    world = make_world(n=30, seed=3)
    ds = world.dataset
    lat, lon = ds.lats.copy(), ds.lons.copy()
    lat[4], lon[4] = lat[4] - 12.0, lon[4] + 15.0  # landmark 4 now claims a place ~1700 km away
    km = distance_matrix_km(lat, lon, lat, lon)
    liars = vet(km, ds.rtt_min, ds.ids)
    assert liars and liars[0].index == 4
    assert "faster than light" in liars[0].example
    model = fit_arrays(ds.ids, lat, lon, ds.rtt_min)
    assert ds.ids[4] in model.excluded
    honest = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    assert honest.excluded == {}


def test_soft_ranging_rules_out_points_beyond_the_sound_bound() -> None:
    world = make_world(n=30, seed=5)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    ll = soft_loglik(model.table, np.array([10.0]), np.array([[500.0], [999.0], [1001.0]]))
    assert np.isfinite(ll[:2]).all() and ll[2, 0] == -np.inf


def test_hold_out_refits_exactly_the_bestlines_that_rest_on_the_landmark() -> None:
    """Tempering locates held-out landmarks; bestlines fitted through their own pairs would make
    them easier cases than any real target."""
    from geoprobe.geo.calibration import hold_out

    world = make_world(n=30, seed=21)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    km = distance_matrix_km(ds.lats, ds.lons, ds.lats, ds.lons)
    support = np.abs(model.rtt - (model.slope[:, None] * km + model.intercept[:, None])) <= 1e-6
    i = int(np.argmax(support.sum(axis=0)))  # the landmark most bestlines rest on
    leaning = np.flatnonzero(support[:, i])
    assert len(leaning) > 0
    held = hold_out(model, i)
    assert ds.ids[i] in held.excluded and ds.ids[i] not in model.excluded
    for j in range(len(ds.ids)):
        if j in leaning:
            row = model.rtt[j].copy()
            row[i] = np.nan
            ok = np.isfinite(row)
            assert (held.slope[j], held.intercept[j]) == pytest.approx(bestline(km[j, ok], row[ok]))
            # Without its support the line is no longer forced under the held-out pair.
            assert held.intercept[j] + held.slope[j] * km[j, i] >= model.rtt[j, i] - 1e-9
        else:
            assert (held.slope[j], held.intercept[j]) == (model.slope[j], model.intercept[j])


def test_table_smoothing_equals_scipy_gaussian_filter() -> None:
    from scipy.ndimage import gaussian_filter

    from geoprobe.geo.calibration import _gaussian_smooth

    h = np.random.default_rng(3).random((28, 50)) * 7.0
    np.testing.assert_allclose(
        _gaussian_smooth(h, (0.8, 1.0)),
        gaussian_filter(h, sigma=(0.8, 1.0), mode="nearest"),
        atol=1e-12,
    )
