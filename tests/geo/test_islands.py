"""Small island states in the built-in world: country shares come from the polygons.

A point sample of a region thousands of km wide misses Mauritius or Malta; the engine measures
each country's land in the sound region on the polygons, so the true country is never zero, a
country without land in the region never gets probability, and an island that is the only land
in the region gets the top probability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from geoprobe.datasets import Dataset, Server
from geoprobe.geo.countries import CountryIndex, default_index
from geoprobe.geo.fix import Fix
from geoprobe.geo.regions import CapIntersection
from geoprobe.geo.sphere import EARTH_RADIUS_KM, haversine_km, to_xyz
from geoprobe.locate import fit_catalogue, solve
from geoprobe.testbed.builtin import ACCESS_MS, builtin_dataset

#: Island capitals added as landmarks, and a VM position on each island a few km away.
ISLANDS = {
    "MU": ((-20.16, 57.50), (-20.25, 57.55)),
    "FJ": ((-18.14, 178.44), (-18.05, 178.50)),
    "VU": ((-17.73, 168.32), (-17.70, 168.35)),
    "MT": ((35.90, 14.51), (35.88, 14.45)),
    "SG": ((1.29, 103.85), (1.35, 103.82)),
}
INFLATION = 1.5


def _rtt(km: np.ndarray) -> np.ndarray:
    return np.asarray(2 * ACCESS_MS + km / 100.0 * INFLATION, dtype=float)


@pytest.fixture(scope="module")
def world() -> tuple[Dataset, object]:
    base = builtin_dataset()
    extra = [
        Server(id=f"isle-{c}", name=f"isle-{c}", lat=pos[0], lon=pos[1], country=c)
        for c, (pos, _vm) in ISLANDS.items()
    ]
    servers = base.servers + extra
    lat = np.array([s.lat for s in servers])
    lon = np.array([s.lon for s in servers])
    n, m = len(servers), len(base.servers)
    rtt = np.full((n, n), np.nan)
    rtt[:m, :m] = base.rtt_min
    km = np.asarray(haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]))
    new = _rtt(km)
    rtt[m:, :] = new[m:, :]
    rtt[:, m:] = new[:, m:]
    np.fill_diagonal(rtt, np.nan)
    ds = Dataset("islands", servers, rtt, rtt * 1.03, rtt * 0.01)
    cat = ds.to_catalogue()
    return ds, fit_catalogue(cat, default_index())


def _measure(ds: Dataset, lat: float, lon: float, *, island_landmarks: bool) -> dict[str, float]:
    km = np.asarray(haversine_km(lat, lon, ds.lats, ds.lons))
    r = _rtt(km)
    return {
        s.id: float(v)
        for s, v in zip(ds.servers, r)
        if island_landmarks or not s.id.startswith("isle-")
    }


def _touches_region(index: CountryIndex, code: str, region: CapIntersection) -> bool:
    """Independent of the engine's polygon maths: some point of the country's outline or of its
    land, densified to ~2 km, lies within every cap (with the engine's 1 % + 2 km cap margin)."""
    geom = index.polygon(code)
    pts = shapely.get_coordinates(shapely.segmentize(geom.boundary, 0.02))
    xyz = to_xyz(pts[:, 1], pts[:, 0]).reshape(-1, 3)
    cent = to_xyz(region.lat, region.lon).reshape(-1, 3)
    limit = region.radius_km * 1.01 + 2.5
    inside = np.ones(len(xyz), dtype=bool)
    for k in range(len(cent)):
        d = np.arccos(np.clip(xyz @ cent[k], -1.0, 1.0)) * EARTH_RADIUS_KM
        inside &= d <= limit[k]
    return bool(inside.any())


def _check(fix: Fix, truth: str, index: CountryIndex) -> None:
    region = fix.sound_region
    assert isinstance(region, CapIntersection)
    named = {c.code: c.probability for c in fix.countries}
    assert named.get(truth, 0.0) > 0.0, (truth, fix.countries[:5])
    for code, p in named.items():
        assert p > 0.0
        if code != truth and region.area_km2 < 2e7:
            assert _touches_region(index, code, region), (code, truth)
    assert math.isclose(sum(named.values()), 1.0, rel_tol=1e-6)
    assert fix.probability < 1.0 or len(named) == 1


@pytest.mark.parametrize("code", sorted(ISLANDS))
def test_island_alone_in_its_region_gets_the_top_probability(world, code: str) -> None:  # type: ignore[no-untyped-def]
    ds, model = world
    index = default_index()
    vm = ISLANDS[code][1]
    fix = solve(ds.to_catalogue().landmarks, _measure(ds, *vm, island_landmarks=True), model, index)
    _check(fix, code, index)
    land = {p.code for p in index.land_parts(fix.sound_region.polygon(max_caps=None))}
    if land == {code}:
        assert fix.country == code and fix.probability > 0.99
    else:
        # Singapore's region reaches Johor (MY) and Batam (ID): more than one country is possible.
        assert code == "SG" and {"MY", "ID"} & land
        assert fix.probability < 0.999


@pytest.mark.parametrize("code", sorted(ISLANDS))
def test_island_far_from_every_landmark_is_never_zero(world, code: str) -> None:  # type: ignore[no-untyped-def]
    """Without the island's own landmark the region is thousands of km wide."""
    ds, model = world
    index = default_index()
    vm = ISLANDS[code][1]
    rtts = _measure(ds, *vm, island_landmarks=False)
    if code == "SG":
        rtts.pop("Singapore")
    fix = solve(ds.to_catalogue().landmarks, rtts, model, index)
    assert fix.sound_region is not None and fix.sound_region.contains(*vm)
    _check(fix, code, index)


def test_no_probability_for_a_country_outside_the_region(world) -> None:  # type: ignore[no-untyped-def]
    """Malta's region from nearby landmarks holds MT, IT and TN land; Greece and Libya's coast are
    farther than its bound: whatever the posterior's sample says, they get nothing."""
    ds, model = world
    index = default_index()
    rtts = _measure(ds, 35.88, 14.45, island_landmarks=True)
    rtts = {k: v + (0.0 if k == "isle-MT" else 2.0) for k, v in rtts.items()}
    rtts["isle-MT"] = 2.5  # a 250 km bound around Valletta
    fix = solve(ds.to_catalogue().landmarks, rtts, model, index)
    named = {c.code for c in fix.countries}
    assert "MT" in named and "GR" not in named
    for c in named:
        assert _touches_region(index, c, fix.sound_region), c  # type: ignore[arg-type]


def test_land_parts_measure_polygon_area() -> None:
    """A 1x1 degree box at the equator is ~12,390 km2; half of it inside the region is half that."""
    box = shapely.box(10.0, 0.0, 11.0, 1.0)
    index = CountryIndex({"AA": box, "BB": shapely.box(20.0, 0.0, 21.0, 1.0)}, cell_deg=0.5)
    parts = index.land_parts(shapely.box(10.5, -1.0, 12.0, 2.0))
    assert [p.code for p in parts] == ["AA"]
    assert parts[0].area_km2 == pytest.approx(111.32**2 * 0.5, rel=1e-3)
    assert 10.5 <= parts[0].lon <= 11.0 and 0.0 <= parts[0].lat <= 1.0
    whole = index.land_parts(shapely.box(0.0, -5.0, 30.0, 5.0))
    assert {p.code: round(p.area_km2) for p in whole} == {
        "AA": pytest.approx(12392, rel=1e-3),
        "BB": pytest.approx(12392, rel=1e-3),
    }
    assert index.land_parts(shapely.box(50.0, 0.0, 51.0, 1.0)) == []
