"""The baselines behave as published: nearest landmark, and the bestline-cap centroid."""

from __future__ import annotations

import numpy as np
from engine_world import countries, make_world

from geoprobe.geo.baselines import cbg, shortest_ping
from geoprobe.geo.calibration import fit_arrays
from geoprobe.geo.sphere import haversine_km


def test_shortest_ping_is_the_lowest_rtt_landmark() -> None:
    world = make_world(n=20, seed=2)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    rtts = world.measure(42.0, 6.0)
    best = min(rtts, key=lambda k: rtts[k])
    fix = shortest_ping(model, rtts, countries())
    s = ds.find(best)
    assert (fix.lat, fix.lon) == (s.lat, s.lon) and fix.method == "shortest-ping"
    assert fix.country == s.country


def test_cbg_centroid_lies_in_its_region_and_region_respects_bestlines() -> None:
    world = make_world(n=30, seed=4)
    ds = world.dataset
    model = fit_arrays(ds.ids, ds.lats, ds.lons, ds.rtt_min)
    errors = []
    for lat, lon in [(45.0, 5.0), (35.0, 15.0), (47.0, 17.0), (33.0, 3.0)]:
        rtts = world.measure(lat, lon)
        fix = cbg(model, rtts, countries())
        assert fix.method == "cbg" and fix.certified is None and fix.region is not None
        # An empty intersection (CBG's known weakness) is reported, not hidden.
        assert fix.region.area_km2 > 0 or any("empty intersection" in n for n in fix.notes)
        # Every bestline radius is at most the sound radius (bestlines are never flatter than
        # light).
        idx = [model.index[k] for k in rtts]
        r = np.array(list(rtts.values()))
        radius = (r - model.intercept[idx]) / model.slope[idx]
        assert (radius <= r * 100 + 1e-6).all()
        errors.append(haversine_km(fix.lat, fix.lon, lat, lon))
    assert np.median(errors) < 400
