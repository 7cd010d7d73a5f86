"""Coarse-to-fine landmark selection: few probes, and the ones that matter near the VM."""

from __future__ import annotations

import numpy as np

from geoprobe.geo.selection import coarse_to_fine, nearest, spread
from geoprobe.geo.sphere import haversine_km
from geoprobe.locate import fit_catalogue, select_and_probe, solve
from geoprobe.testbed.builtin import builtin_dataset


def _world() -> tuple[list[str], np.ndarray, np.ndarray]:
    ds = builtin_dataset()
    return ds.ids, ds.lats, ds.lons


def test_spread_is_far_apart_and_nearest_is_near() -> None:
    ids, lat, lon = _world()
    pick = spread(lat, lon, 8)
    assert len(set(pick)) == 8
    d = np.asarray(haversine_km(lat[pick][:, None], lon[pick][:, None], lat[pick], lon[pick]))
    np.fill_diagonal(d, np.inf)
    # Eight spread landmarks of a world catalogue are continents apart, not one city's.
    assert d.min() > 1500.0
    frankfurt = ids.index("Frankfurt")
    near = nearest(lat, lon, (lat[frankfurt], lon[frankfurt]), {frankfurt}, 3)
    assert frankfurt not in near
    km = np.asarray(haversine_km(lat[frankfurt], lon[frankfurt], lat[near], lon[near]))
    assert (km < 600.0).all()


def test_coarse_to_fine_probes_at_most_the_limit_and_the_nearest() -> None:
    ids, lat, lon = _world()
    vm = (48.2, 16.4)  # Vienna
    km = np.asarray(haversine_km(vm[0], vm[1], lat, lon))
    rtt = 0.6 + km / 100.0 * 1.5
    probed: list[int] = []
    dead = set(spread(lat, lon, 4)[1:])  # three of the first spread landmarks never answer

    def probe(ix: list[int]) -> dict[str, float]:
        assert not set(ix) & set(probed), "a landmark was probed twice"
        probed.extend(ix)
        return {ids[i]: float(rtt[i]) for i in ix if i not in dead}

    def first_fix(rtts: dict[str, float]) -> tuple[float, float]:
        best = min(rtts, key=lambda k: rtts[k])
        return float(lat[ids.index(best)]), float(lon[ids.index(best)])

    got = coarse_to_fine(ids, lat, lon, probe, first_fix, limit=30, coarse=10)
    assert len(probed) <= 30
    assert len(got) >= 10
    closest = [ids[i] for i in np.argsort(km) if i not in dead][:5]
    assert set(closest) <= set(got), (closest, sorted(got))


def test_small_catalogue_probes_everything_once() -> None:
    ids, lat, lon = _world()
    few = ids[:20]
    calls: list[list[int]] = []

    def probe(ix: list[int]) -> dict[str, float]:
        calls.append(ix)
        return {few[i]: 1.0 + i for i in ix}

    got = coarse_to_fine(few, lat[:20], lon[:20], probe, lambda r: (0.0, 0.0), limit=50)
    assert calls == [list(range(20))] and len(got) == 20


def test_select_and_probe_locates_as_well_as_probing_all() -> None:
    ds = builtin_dataset()
    cat = ds.to_catalogue()
    model = fit_catalogue(cat)
    vm = (41.0, 28.95)  # Istanbul
    km = np.asarray(haversine_km(vm[0], vm[1], ds.lats, ds.lons))
    full = {s.id: float(0.6 + k / 100.0 * 1.5) for s, k in zip(ds.servers, km)}
    asked: list[str] = []

    def probe(lms: list) -> dict[str, float]:  # type: ignore[type-arg]
        asked.extend(lm.id for lm in lms)
        return {lm.id: full[lm.id] for lm in lms}

    chosen = select_and_probe(cat, probe, limit=25)
    assert len(asked) == len(set(asked)) <= 25 < len(cat)
    few = solve(cat.landmarks, chosen, model)
    every = solve(cat.landmarks, full, model)
    e_few = float(haversine_km(few.lat, few.lon, *vm))
    e_all = float(haversine_km(every.lat, every.lon, *vm))
    assert e_few <= max(2 * e_all, 150.0)
    assert few.sound_region is not None and few.sound_region.contains(*vm)
