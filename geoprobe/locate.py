"""The library entry points for "where am I?": fit a catalogue's calibration, then solve.

``solve(landmarks, rtts, model)`` is what probing and watching call with fresh measurements;
``locate_from_catalogue`` fits (once, cached per catalogue content) and solves.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from geoprobe import paths
from geoprobe.errors import InputError
from geoprobe.geo import baselines, modelcache, selection, solver
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
        raise InputError(
            f"unknown method {name!r} (known: {', '.join(METHODS)})", field="methods"
        ) from None


def default_countries(cache_dir: Path | None = None) -> CountryLookup:
    """The process-wide country index; its raster is cached in ``cache_dir`` on first use."""
    from geoprobe.geo.countries import default_index

    return default_index(cache_dir)


def solve(
    landmarks: Sequence[Landmark],
    rtts: Mapping[str, float],
    model: Model | None,
    countries: CountryLookup | None = None,
    *,
    cache_dir: Path | None = None,
) -> Fix:
    """Locate from measured minimum RTTs (landmark id -> ms).

    Without a model only the sound bound is used, and the Fix says so (``bound == "sound"``).
    """
    countries = countries if countries is not None else default_countries(cache_dir)
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


def _default_countries_key() -> str:
    """Names the packaged (or ``$GEOPROBE_COUNTRIES``) polygons by their content.

    By content, not path and time, so a fit cached on one machine is found on another with the same
    polygons (the QEMU lab fits on the host and ships the cache to its guest).
    """
    from geoprobe.geo import countries as cmod

    return _countries_key(os.environ.get(cmod.ENV))


@functools.lru_cache(maxsize=4)
def _countries_key(env: str | None) -> str:
    """Hashing ~0.8 MB of polygons takes milliseconds: once per process and polygon source."""
    from geoprobe.geo import countries as cmod

    files = (
        [Path(env)]
        if env
        else [
            cmod.TOPOJSON,
            cmod.SUPPLEMENT,
            cmod.ISO_TABLE,
            cmod.UNASSIGNED_TABLE,
            cmod.SPLITS_TABLE,
        ]
    )
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(f"{f.name}:missing".encode())
    return "default|" + h.hexdigest()[:20]


def fit_catalogue(
    cat: Catalogue,
    countries: CountryLookup | None = None,
    *,
    countries_key: str | None = None,
    cache_dir: Path | None = None,
) -> Model | None:
    """Fit the catalogue's calibration; None when it carries no RTTs.

    Cached by content in memory and on disk (``geoprobe.paths.cache_dir()``, or ``cache_dir``), so a
    fresh process reuses the fit. The tempering depends on the country lookup, so the disk cache is
    used for the default lookup, or for a custom one the caller names with ``countries_key``.
    """
    if not cat.rtts:
        return None
    if countries is None:
        countries_key = _default_countries_key()
    landmarks = [(lm.id, lm.lat, lm.lon, lm.country) for lm in cat.landmarks]
    key = modelcache.model_key(landmarks, cat.rtts, countries_key or f"memory:{id(countries)}")
    if key in _MODELS:
        return _MODELS[key]
    path = modelcache.cache_path(cache_dir if cache_dir is not None else paths.cache_dir(), key)
    model = modelcache.load(path) if countries_key is not None else None
    if model is None:
        lookup = countries if countries is not None else default_countries(cache_dir)
        model = fit(cat)
        # Tempered on cases that probe what ``locate`` probes by default (coarse-to-fine selection).
        solver.self_tempering(
            model, lookup, [lm.country for lm in cat.landmarks], select=selection.DEFAULT_LIMIT
        ).apply(model)
        if countries_key is not None:
            try:
                modelcache.save(path, model)
            except OSError:
                pass  # a read-only or full cache dir costs the next process a refit, nothing more
    _MODELS[key] = model
    return model


def select_and_probe(
    cat: Catalogue,
    probe: Callable[[list[Landmark]], Mapping[str, float]],
    *,
    limit: int = selection.DEFAULT_LIMIT,
    countries: CountryLookup | None = None,
    cache_dir: Path | None = None,
) -> dict[str, float]:
    """Probe at most ``limit`` landmarks, coarse to fine (see ``geoprobe.geo.selection``).

    ``probe(landmarks)`` measures them and returns id -> minimum RTT for those that answered.
    Anycast landmarks are never chosen: they answer from the nearest site. The calibration it
    locates with is the one ``fit_catalogue`` caches in ``cache_dir``.
    """
    usable = [lm for lm in cat.landmarks if not lm.anycast]
    lookup = countries if countries is not None else default_countries(cache_dir)
    model = fit_catalogue(cat, countries, cache_dir=cache_dir)
    lat = np.array([lm.lat for lm in usable], dtype=float)
    lon = np.array([lm.lon for lm in usable], dtype=float)

    def first_fix(rtts: Mapping[str, float]) -> tuple[float, float]:
        fix = solve(cat.landmarks, rtts, model, lookup)
        return fix.lat, fix.lon

    return selection.coarse_to_fine(
        [lm.id for lm in usable],
        lat,
        lon,
        lambda ix: probe([usable[i] for i in ix]),
        first_fix,
        limit=limit,
    )


def locate_from_catalogue(
    cat: Catalogue,
    rtts: Mapping[str, float],
    countries: CountryLookup | None = None,
    *,
    cache_dir: Path | None = None,
) -> Fix:
    """Fit the catalogue's calibration (cached in ``cache_dir``) and solve; sound bound only if it
    has no RTTs."""
    model = fit_catalogue(cat, countries, cache_dir=cache_dir)
    return solve(cat.landmarks, rtts, model, countries, cache_dir=cache_dir)


__all__ = [
    "METHODS",
    "Method",
    "fit_arrays",
    "fit_catalogue",
    "locate_from_catalogue",
    "method",
    "select_and_probe",
    "solve",
]
