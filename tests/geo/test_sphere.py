"""Sphere maths: distances, destinations, and cap polygons that must contain the true cap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point

from geoprobe.geo.regions import sample_cap
from geoprobe.geo.sphere import (
    cap_area_km2,
    cap_polygon,
    destination,
    distance_matrix_km,
    haversine_km,
)


def test_known_distance_london_paris() -> None:
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=1.0)


def test_vectorised_and_matrix_agree() -> None:
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)
    m = distance_matrix_km(lat, lon, lat, lon)
    direct = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert np.allclose(m, direct, atol=1e-3)
    assert np.allclose(m, m.T)


@settings(max_examples=60, deadline=None)
@given(st.floats(-85, 85), st.floats(-180, 180), st.floats(0, 360), st.floats(1, 15000))
def test_destination_travels_the_distance(
    lat: float, lon: float, bearing: float, km: float
) -> None:
    la, lo = destination(lat, lon, bearing, km)
    assert -180.0 <= lo < 180.0
    assert haversine_km(lat, lon, la, lo) == pytest.approx(km, rel=1e-6, abs=1e-3)


@pytest.mark.parametrize(
    ("lat", "lon", "radius"),
    [
        (45.0, 7.0, 300.0),  # ordinary
        (-17.0, 178.5, 400.0),  # crosses the antimeridian (Fiji)
        (82.0, 30.0, 1200.0),  # reaches the north pole
        (-70.0, -60.0, 3000.0),  # reaches the south pole
        (60.0, 100.0, 4000.0),  # large, high latitude
    ],
)
def test_cap_polygon_contains_the_whole_cap(lat: float, lon: float, radius: float) -> None:
    poly = cap_polygon(lat, lon, radius)
    # The boundary itself, and points just inside it, must all be covered (soundness).
    for frac in (0.999, 1.0):
        b = np.linspace(0, 360, 720, endpoint=False)
        la, lo = destination(np.full(720, lat), np.full(720, lon), b, np.full(720, radius * frac))
        missed = [(a, o) for a, o in zip(la, lo) if not poly.covers(Point(o, a))]
        assert not missed, missed[:3]
    # ... and not absurdly more: a point 10 % beyond the radius at a mid bearing is outside.
    reach = math.degrees(radius * 1.1 / 6371)
    if lat + reach < 89 and lat - reach > -89:  # caps reaching a pole become latitude bands
        la, lo = destination(lat, lon, 90.0, radius * 1.1)
        assert not poly.covers(Point(lo, la))


def test_sampled_cap_area_matches_formula() -> None:
    for radius in (50.0, 800.0, 5000.0):
        s = sample_cap(10.0, 20.0, radius, points=3000)
        assert s.weight.sum() == pytest.approx(cap_area_km2(radius), rel=0.03)
        assert haversine_km(10.0, 20.0, s.lat, s.lon).max() <= radius * 1.0001
