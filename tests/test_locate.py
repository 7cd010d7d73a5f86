"""Library entry points: solve with and without calibration, and the catalogue convenience."""

from __future__ import annotations

import dataclasses

import pytest
from engine_world import countries, make_world

from geoprobe.errors import InputError
from geoprobe.locate import fit_catalogue, locate_from_catalogue, method, solve


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return make_world(n=24, seed=13)


def test_locate_from_catalogue_calibrated_and_cached(world) -> None:  # type: ignore[no-untyped-def]
    cat = world.dataset.to_catalogue()
    assert cat.calibrated and len(cat) == 24
    fix = locate_from_catalogue(cat, world.measure(44.0, 9.0), countries())
    assert fix.bound == "calibrated" and fix.sound_region is not None
    assert fix.sound_region.contains(44.0, 9.0)
    assert fit_catalogue(cat, countries()) is fit_catalogue(cat, countries())


def test_without_calibration_data_falls_back_to_sound(world) -> None:  # type: ignore[no-untyped-def]
    cat = world.dataset.to_catalogue()
    cat.rtts = []
    fix = locate_from_catalogue(cat, world.measure(36.0, 4.0), countries())
    assert fix.bound == "sound" and any("sound bound" in n for n in fix.notes)


def test_anycast_landmarks_are_left_out(world) -> None:  # type: ignore[no-untyped-def]
    cat = world.dataset.to_catalogue()
    lms = list(cat.landmarks)
    lms[0] = dataclasses.replace(lms[0], anycast=True)
    fix = solve(lms, world.measure(40.0, 10.0), None, countries())
    assert lms[0].id in fix.excluded and lms[0].id not in fix.landmarks_used


def test_unknown_method() -> None:
    with pytest.raises(InputError):
        method("nearest-guess")


def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new ``geoprobe locate`` sees: no model in memory."""
    import geoprobe.locate as loc

    monkeypatch.setattr(loc, "_MODELS", {})


def test_disk_cache_hit_returns_the_same_model_without_refitting(
    world, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    import geoprobe.locate as loc

    cat = world.dataset.to_catalogue()
    _fresh_process(monkeypatch)
    first = fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
    files = list((tmp_path / "models").glob("*.npz"))
    assert first is not None and len(files) == 1
    _fresh_process(monkeypatch)

    def no_fit(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("a cache hit must not refit")

    monkeypatch.setattr(loc, "fit", no_fit)
    again = fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
    assert again is not None and again is not first
    assert again.ids == first.ids and again.excluded == first.excluded
    assert (again.temperature, again.blend, again.estimate_temperature) == (
        first.temperature,
        first.blend,
        first.estimate_temperature,
    )
    for name in ("lat", "lon", "slope", "intercept", "offset", "table", "rtt"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    rtts = world.measure(42.0, 12.0)
    a, b = (
        solve(cat.landmarks, rtts, first, countries()),
        solve(cat.landmarks, rtts, again, countries()),
    )
    assert (a.lat, a.lon, a.country, a.probability) == (b.lat, b.lon, b.country, b.probability)


def test_corrupt_cache_file_is_refitted_and_replaced(world, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from geoprobe.geo import modelcache

    cat = world.dataset.to_catalogue()
    _fresh_process(monkeypatch)
    fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
    (path,) = (tmp_path / "models").glob("*.npz")
    good = path.read_bytes()
    for garbage in (b"not a zip archive", good[: len(good) // 2]):
        path.write_bytes(garbage)
        assert modelcache.load(path) is None
        _fresh_process(monkeypatch)
        model = fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
        assert model is not None and len(model.ids) == len(cat)
        assert modelcache.load(path) is not None  # rewritten whole
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_cache_key_follows_the_catalogue_and_unnamed_lookups_stay_in_memory(
    world, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    cat = world.dataset.to_catalogue()
    _fresh_process(monkeypatch)
    fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
    src, dst, ms = cat.rtts[0]
    cat.rtts = [(src, dst, ms + 5.0)] + list(cat.rtts[1:])
    fit_catalogue(cat, countries(), countries_key="engine-world", cache_dir=tmp_path)
    assert len(list((tmp_path / "models").glob("*.npz"))) == 2
    other = tmp_path / "unnamed"
    fit_catalogue(
        cat, countries(), cache_dir=other
    )  # a custom lookup without a name: no disk cache
    assert not other.exists()
