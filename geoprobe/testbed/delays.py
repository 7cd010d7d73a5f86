"""Path delays of the emulated world: per-pair jitter, and a distance model to place the VM
anywhere.

A real path's RTT is a floor (propagation + fixed processing) plus queueing that only ever adds
delay. So a sample is ``min + X`` with ``X >= 0`` drawn from a gamma law whose mean is the pair's
``avg - min`` and whose spread is its ``mdev``: the minimum over a few samples lands near ``min``,
as it does on the internet.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geoprobe.geo.sphere import SOUND_KM_PER_MS, haversine_km

FArray = npt.NDArray[np.float64]

#: No emulated path is faster than light in fibre (ms of RTT per km).
LIGHT_SLOPE = 1.0 / SOUND_KM_PER_MS
#: Delay of a VM in the same data centre as a landmark (ms), when a dataset gives none.
SAME_SITE_MS = 0.2
#: Largest fixed (distance-independent) part of a landmark's RTT the model believes (ms).
MAX_ACCESS_MS = 5.0
#: A dataset server this close to the VM's place lends its measured row to the prediction (km).
NEIGHBOUR_KM = 300.0


@dataclass(frozen=True, slots=True)
class PathDelay:
    """One VM->landmark path: its floor and the mean and spread of the queueing above it (ms)."""

    min_ms: float
    excess_ms: float = 0.0
    spread_ms: float = 0.0

    def sample(self, rng: random.Random) -> float:
        """One RTT in ms: the floor plus a positive gamma-distributed excess."""
        m = self.excess_ms
        if m <= 0.0:
            return self.min_ms
        sd = self.spread_ms if self.spread_ms > 0 else m
        # Gamma with mean m and standard deviation sd; the shape is kept >= 0.3 so a huge mdev
        # does not turn nearly every sample into the floor plus a rare enormous outlier.
        shape = max((m / sd) ** 2, 0.3)
        return self.min_ms + rng.gammavariate(shape, m / shape)

    @classmethod
    def from_stats(cls, rmin: float, ravg: float, rmdev: float) -> PathDelay:
        """From a dataset's min/avg/mdev; missing avg or mdev become a small default excess."""
        excess = ravg - rmin if math.isfinite(ravg) and ravg >= rmin else 0.02 * rmin + 0.05
        spread = rmdev if math.isfinite(rmdev) and rmdev > 0 else excess
        return cls(rmin, excess, spread)


@dataclass(frozen=True, slots=True)
class DistanceModel:
    """Per landmark, ``rtt = intercept + slope * km`` fitted on its row of the dataset.

    It places the VM anywhere (``testbed run --at LAT,LON``) and fills pairs the dataset lacks.
    The slope is never below the speed-of-light slope, so no predicted RTT beats physics, and the
    sound bound of the engine always contains the emulated VM.
    """

    lat: FArray
    lon: FArray
    intercept: FArray
    slope: FArray
    excess: FArray
    spread: FArray

    rtt: FArray | None = None  # the dataset's symmetric min RTTs, for the neighbour correction

    def predict(self, lat: float, lon: float, *, exclude: int | None = None) -> list[PathDelay]:
        """Delays from (lat, lon) to every server.

        Near a dataset server (within ``NEIGHBOUR_KM``), its measured row is the better guide: the
        prediction starts from the nearest such server's RTT and adds the line's slope times the
        change in distance. Elsewhere, the line alone. ``exclude`` hides one server (for tests).
        """
        km = np.asarray(haversine_km(lat, lon, self.lat, self.lon), dtype=float)
        rtt = self.intercept + self.slope * km
        if self.rtt is not None:
            order = [k for k in np.argsort(km) if km[k] <= NEIGHBOUR_KM and k != exclude]
            for j in range(len(rtt)):
                for k in order:
                    if k != j and math.isfinite(self.rtt[k, j]):
                        km_kj = float(
                            haversine_km(self.lat[k], self.lon[k], self.lat[j], self.lon[j])
                        )
                        rtt[j] = self.rtt[k, j] + self.slope[j] * (km[j] - km_kj)
                        break
        rtt = np.maximum(rtt, km * LIGHT_SLOPE + 0.05)
        return [
            PathDelay(float(r), float(e), float(s))
            for r, e, s in zip(rtt, self.excess, self.spread)
        ]


def fit_distance_model(
    lat: FArray, lon: FArray, rtt_min: FArray, rtt_avg: FArray, rtt_mdev: FArray
) -> DistanceModel:
    """Least-squares line per landmark through its (distance, min RTT) pairs, kept physical."""
    n = len(lat)
    km = np.asarray(
        haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]), dtype=float
    )
    sym = np.fmin(rtt_min, rtt_min.T)
    intercept = np.zeros(n)
    slope = np.full(n, 2.0 * LIGHT_SLOPE)
    excess = np.full(n, 0.3)
    spread = np.full(n, 0.3)
    pooled = _pooled_line(km, sym)
    for j in range(n):
        ok = np.isfinite(sym[j]) & (np.arange(n) != j)
        if ok.sum() >= 5:
            x, y = km[j, ok], sym[j, ok]
            _b, a = np.polyfit(x, y, 1)
            # A free intercept extrapolates wildly when a landmark's neighbours are all far away
            # (Tokyo seen from Europe): cap it at a plausible access delay and refit the slope.
            a = min(max(float(a), 0.0), MAX_ACCESS_MS)
            b = float(np.dot(y - a, x) / np.dot(x, x)) if np.dot(x, x) > 0 else pooled[1]
        else:
            a, b = pooled
        slope[j] = max(float(b), LIGHT_SLOPE)
        intercept[j] = float(a)
        ex = (rtt_avg[j] - rtt_min[j])[np.isfinite(rtt_avg[j]) & np.isfinite(rtt_min[j])]
        ex = ex[ex >= 0]
        if ex.size:
            excess[j] = float(np.median(ex))
        md = rtt_mdev[j][np.isfinite(rtt_mdev[j]) & (rtt_mdev[j] > 0)]
        if md.size:
            spread[j] = float(np.median(md))
    return DistanceModel(
        lat=np.asarray(lat, float),
        lon=np.asarray(lon, float),
        intercept=intercept,
        slope=slope,
        excess=excess,
        spread=spread,
        rtt=sym,
    )


def _pooled_line(km: FArray, sym: FArray) -> tuple[float, float]:
    ok = np.isfinite(sym) & (km > 0)
    if ok.sum() < 2:
        return 1.0, 2.0 * LIGHT_SLOPE
    b, a = np.polyfit(km[ok], sym[ok], 1)
    return min(max(float(a), 0.0), MAX_ACCESS_MS), max(float(b), LIGHT_SLOPE)
