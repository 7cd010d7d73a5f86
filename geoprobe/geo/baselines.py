"""Baselines kept inside the project, so every evaluation compares against them in the same run.

* ``shortest-ping``: the VM is where its lowest-RTT landmark is.
* ``cbg``: Constraint-Based Geolocation as published (Gueye et al. 2006): each landmark's bestline
  turns its RTT into a distance bound, the caps are intersected, and the estimate is the centroid.

Both have the solver's signature ``(model, rtts, countries) -> Fix``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from geoprobe.errors import MeasurementError
from geoprobe.geo.calibration import Model, bestline_radius_km, measured_rtts
from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.geo.regions import CapIntersection, CountryLookup, sample_cap
from geoprobe.geo.sphere import EARTH_RADIUS_KM, from_xyz, to_xyz


def _measure(model: Model, rtts: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    idx, r = measured_rtts(model, rtts)
    if len(idx) == 0:
        raise MeasurementError("no usable RTT measurement to a known landmark")
    return idx, r


def shortest_ping(model: Model, rtts: Mapping[str, float], countries: CountryLookup) -> Fix:
    idx, r = _measure(model, rtts)
    k = int(idx[int(np.argmin(r))])
    lat, lon = float(model.lat[k]), float(model.lon[k])
    code = str(countries.codes_at(np.array([lat]), np.array([lon]))[0])
    shares = [CountryShare(code, 1.0, 1.0)] if code else []
    return Fix(
        lat=lat,
        lon=lon,
        error_radius_km=float(r.min()) * 100.0,
        bound="calibrated",
        countries=shares,
        certified=None,
        region=None,
        sound_region=None,
        landmarks_used=[model.ids[k]],
        method="shortest-ping",
        notes=[f"nearest landmark by RTT: {model.ids[k]} ({r.min():.2f} ms)"],
    )


def cbg(
    model: Model, rtts: Mapping[str, float], countries: CountryLookup, *, points: int = 3000
) -> Fix:
    idx, r = _measure(model, rtts)
    radius = bestline_radius_km(r, model.slope[idx], model.intercept[idx])
    lat, lon = model.lat[idx], model.lon[idx]
    s = int(np.argmin(radius))
    sample = sample_cap(float(lat[s]), float(lon[s]), float(radius[s]), points=points)
    ang = np.arccos(np.clip(sample.xyz @ to_xyz(lat, lon).T, -1.0, 1.0)) * EARTH_RADIUS_KM
    over = ang - radius[None, :] - sample.spacing_km * 0.75
    inside: npt.NDArray[np.bool_] = np.asarray((over <= 0).all(axis=1), dtype=bool)
    notes: list[str] = []
    chosen = inside
    if not inside.any():
        # Published CBG has no answer here; take the points that violate the fewest bounds.
        count = (over > 0).sum(axis=1)
        chosen = count == count.min()
        notes.append(
            f"empty intersection; centroid of the points violating the fewest ({int(count.min())}) bounds"
        )
    v = (sample.weight[chosen, None] * sample.xyz[chosen]).sum(axis=0)
    v = v / max(float(np.linalg.norm(v)), 1e-12)
    elat, elon = (float(x) for x in from_xyz(v))
    region = CapIntersection(lat, lon, radius, sample, inside)
    codes = countries.codes_at(sample.lat[chosen], sample.lon[chosen])
    wts = sample.weight[chosen]
    land = codes != ""
    shares: dict[str, float] = {}
    if land.any():
        tot = float(wts[land].sum())
        for c, wt in zip(codes[land].tolist(), wts[land].tolist()):
            shares[c] = shares.get(c, 0.0) + wt / tot
    code = str(countries.codes_at(np.array([elat]), np.array([elon]))[0])
    if not code and shares:
        code = max(shares, key=lambda c: shares[c])
    out = (
        [CountryShare(code, shares.get(code, 1.0 if not shares else 0.0), shares.get(code, 0.0))]
        if code
        else []
    )
    out += [
        CountryShare(c, p, p) for c, p in sorted(shares.items(), key=lambda kv: -kv[1]) if c != code
    ]
    d = np.arccos(np.clip(sample.xyz[chosen] @ v, -1.0, 1.0)) * EARTH_RADIUS_KM
    err = float(d.max()) if len(d) else math.nan
    return Fix(
        lat=elat,
        lon=elon,
        error_radius_km=err,
        bound="calibrated",
        countries=out,
        certified=None,
        region=region,
        sound_region=None,
        landmarks_used=[model.ids[i] for i in idx],
        method="cbg",
        notes=notes,
    )
