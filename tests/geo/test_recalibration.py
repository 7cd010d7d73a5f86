"""Reading the posterior: top-country recalibration and co-location."""

from __future__ import annotations

import numpy as np
import pytest
from engine_world import countries, make_world

from geoprobe.geo.calibration import fit_arrays
from geoprobe.geo.solver import fit_recalibration, recalibrate, solve_model
from geoprobe.geo.sphere import haversine_km


def test_overconfident_cases_are_read_lower() -> None:
    """Cases that say 0.99 but are right 70 % of the time: the fitted map brings 0.99 toward 0.7."""
    rng = np.random.default_rng(0)
    tops = [(0.99, 5.0, bool(rng.random() < 0.7)) for _ in range(200)]
    tops += [(0.6, 5.0, bool(rng.random() < 0.6)) for _ in range(100)]
    coef = fit_recalibration(tops)
    out = recalibrate(np.array([0.99, 0.006, 0.004]), 5.0, coef)
    assert 0.6 < out[0] < 0.85
    assert out.sum() == pytest.approx(1.0)
    assert out[1] / out[2] == pytest.approx(0.006 / 0.004)  # the rest keeps its proportions


def test_calibrated_cases_leave_probabilities_nearly_alone() -> None:
    rng = np.random.default_rng(1)
    ps = rng.uniform(0.3, 0.999, 400)
    tops = [(float(p), 5.0, bool(rng.random() < p)) for p in ps]
    coef = fit_recalibration(tops)
    for p in (0.5, 0.8, 0.95):
        q = recalibrate(np.array([p, 1.0 - p]), 5.0, coef)[0]
        assert abs(q - p) < 0.08, (p, q, coef)


def test_too_few_cases_and_single_country_are_identity() -> None:
    assert fit_recalibration([(0.9, 1.0, True)] * 5) == (1.0, 0.0, 0.0)
    only = np.array([1.0])
    assert recalibrate(only, 3.0, (0.5, 0.1, -1.0)) is only


def test_a_sub_2ms_rtt_places_the_vm_at_that_landmark() -> None:
    world = make_world(n=30, seed=5)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    lm = ds.servers[4]
    rtts = world.measure(lm.lat + 0.05, lm.lon + 0.05, access=0.2)
    rtts[lm.id] = 0.8
    fix = solve_model(model, model.ids, model.lat, model.lon, rtts, countries())
    assert (fix.lat, fix.lon) == pytest.approx((lm.lat, lm.lon))
    assert any(lm.id in n for n in fix.notes)
    # 3 ms is no proof of co-location: the posterior's estimate stands.
    rtts[lm.id] = 3.0
    far = solve_model(model, model.ids, model.lat, model.lon, rtts, countries())
    assert float(haversine_km(far.lat, far.lon, lm.lat, lm.lon)) > 0.5


def test_recalibration_never_changes_the_top_country() -> None:
    probs = np.array([0.55, 0.44, 0.01])
    out = recalibrate(probs, 50.0, (0.2, -1.0, -3.0))  # a map that reads everything far lower
    assert int(np.argmax(out)) == 0 and out[0] >= out[1]
    assert out.sum() == pytest.approx(1.0)
