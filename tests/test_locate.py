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
