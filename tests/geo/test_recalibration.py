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


def test_tempering_fit_equals_a_scan_of_every_reading() -> None:
    """The fit scores all temperatures of a case at once; a plain scan must pick the same."""
    import math

    from geoprobe.geo import solver

    world = make_world(n=30, seed=4)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    cases = [
        c
        for i in range(len(ds.ids))
        if (c := solver.held_out_case(model, i, countries(), [s.country for s in ds.servers]))
    ]
    assert len(cases) >= 20
    best, best_nll, best_e, best_err = (1.0, 1.0), math.inf, 4.0, math.inf
    for t in solver.TEMPERATURES:
        nll = dict.fromkeys(solver.BLENDS, 0.0)
        errs = []
        for post, truth, xyz in cases:
            w = post.weights(float(t))
            row = post.land.codes.index(truth) if truth in post.land.codes else -1
            for b in solver.BLENDS:
                p = float(post.land.probabilities(w, b)[row]) if row >= 0 else 0.0
                nll[b] -= math.log(min(max(p, 1e-3), 1.0))
            la, lo, _ = solver.estimate(post, w)
            errs.append(max(float(haversine_km(la, lo, *_latlon(xyz))), 1.0))
        for b, v in nll.items():
            if v < best_nll - 1e-9:
                best, best_nll = (float(t), b), v
        gm = float(np.exp(np.mean(np.log(errs))))
        if gm < best_err - 1e-9:
            best_e, best_err = float(t), gm
    fitted = solver.fit_tempering(cases)
    assert (fitted.temperature, fitted.blend) == pytest.approx(best)
    assert fitted.estimate_temperature == pytest.approx(best_e)


def _latlon(xyz: np.ndarray) -> tuple[float, float]:
    from geoprobe.geo.sphere import from_xyz

    la, lo = from_xyz(xyz)
    return float(la), float(lo)
