"""The library entry points for "where am I?": fit a catalogue's calibration, then solve.

``solve(landmarks, rtts, model)`` is what probing and watching call with fresh measurements;
``locate_from_catalogue`` fits (once, cached per catalogue content) and solves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from geoprobe.errors import InputError
from geoprobe.geo import baselines, solver
from geoprobe.geo.calibration import Model, fit, fit_arrays
from geoprobe.geo.fix import Fix
from geoprobe.geo.regions import CountryLookup
from geoprobe.landmarks import Catalogue, Landmark

Method = Callable[[Model, Mapping[str, float], CountryLookup], Fix]


def _geoprobe(model: Model, rtts: Mapping[str, float], countries: CountryLookup) -> Fix:
    return solver.solve_model(model, model.ids, model.lat, model.lon, rtts, countries)


#: Every named method has the same signature, so evaluations run them side by side.
METHODS: dict[str, Method] = {
    "geoprobe": _geoprobe,
    "cbg": baselines.cbg,
    "shortest-ping": baselines.shortest_ping,
}


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r} (known: {', '.join(METHODS)})", field="methods") from None


def default_countries() -> CountryLookup:
    from geoprobe.geo.countries import default_index

    return default_index()


def solve(landmarks: Sequence[Landmark], rtts: Mapping[str, float], model: Model | None,
          countries: CountryLookup | None = None) -> Fix:
    """Locate from measured minimum RTTs (landmark id -> ms).

    Without a model only the sound bound is used, and the Fix says so (``bound == "sound"``).
    """
    countries = countries if countries is not None else default_countries()
    ids = [lm.id for lm in landmarks]
    lat = np.array([lm.lat for lm in landmarks], dtype=float)
    lon = np.array([lm.lon for lm in landmarks], dtype=float)
    usable = {k: v for k, v in rtts.items() if not _anycast(landmarks, k)}
    fix = solver.solve_model(model, ids, lat, lon, usable, countries)
    for k in rtts:
        if k not in usable:
            fix.excluded[k] = "anycast address: answers from the nearest site, so it is no landmark"
    return fix


def _anycast(landmarks: Sequence[Landmark], lid: str) -> bool:
    return any(lm.id == lid and lm.anycast for lm in landmarks)


_MODELS: dict[str, Model] = {}


def _key(cat: Catalogue) -> str:
    raw = json.dumps([[lm.id, lm.lat, lm.lon] for lm in cat.landmarks] + [list(r) for r in cat.rtts])
    return hashlib.sha256(raw.encode()).hexdigest()


def fit_catalogue(cat: Catalogue, countries: CountryLookup | None = None) -> Model | None:
    """Fit the catalogue's calibration (cached by content); None when it carries no RTTs."""
    if not cat.rtts:
        return None
    key = _key(cat)
    if key not in _MODELS:
        countries = countries if countries is not None else default_countries()
        model = fit(cat)
        solver.self_tempering(model, countries, [lm.country for lm in cat.landmarks]).apply(model)
        _MODELS[key] = model
    return _MODELS[key]


def locate_from_catalogue(cat: Catalogue, rtts: Mapping[str, float],
                          countries: CountryLookup | None = None) -> Fix:
    """Fit the catalogue's calibration (cached) and solve; sound bound only if it has no RTTs."""
    countries = countries if countries is not None else default_countries()
    return solve(cat.landmarks, rtts, fit_catalogue(cat, countries), countries)


__all__ = ["METHODS", "Method", "fit_arrays", "fit_catalogue", "locate_from_catalogue", "method", "solve"]
