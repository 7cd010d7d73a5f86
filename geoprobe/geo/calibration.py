"""Delay-to-distance calibration from landmark<->landmark RTTs, and landmark vetting.

Three models, from sound to sharp:

(a) the sound bound: 100 km per ms of RTT (light in fibre, round trip). Added delay only widens it.
(b) CBG's bestline (Gueye et al. 2006): per landmark, the line ``rtt = m * km + b`` below all of
    that landmark's (distance, RTT) points, with ``m`` at least the speed-of-light slope and ``b >=
    0``, that minimises the total vertical distance to the points. The distance bound is ``(rtt - b)
    / m``.
(c) geoprobe's soft ranging: an empirical distribution, given the RTT, of ``u`` = distance as a
    share of the landmark's own bestline reach (its routing, not the world's), pooled over all
    landmark pairs. A likelihood, not a bound: it ranks places (with a land and data-centre prior,
    in the solver); only the sound bound certifies.

Vetting comes first: a pair whose RTT is faster than light over the claimed distance proves one of
the two landmarks lies about its location; the landmark in most such pairs is left out, greedily.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from geoprobe.geo.sphere import SOUND_KM_PER_MS, distance_matrix_km

if TYPE_CHECKING:
    from geoprobe.landmarks import Catalogue

FArray = npt.NDArray[np.float64]

#: Speed-of-light slope in ms of RTT per km: no bestline may be flatter.
LIGHT_SLOPE = 1.0 / SOUND_KM_PER_MS
#: RTT bins (ms, log-spaced) and u bins of the soft-ranging table.
R_EDGES = np.geomspace(0.25, 640.0, 29)
U_BINS = 50
#: What soft ranging measures distance against: each landmark's bestline reach, or the sound bound.
SOFT_REACH = "bestline"


def sound_radius_km(rtt_ms: float | FArray) -> float | FArray:
    """(a) The sound bound: no added delay can make it exclude the true location."""
    return (
        np.maximum(np.asarray(rtt_ms, dtype=float), 0.0) * SOUND_KM_PER_MS
        if isinstance(rtt_ms, np.ndarray)
        else max(float(rtt_ms), 0.0) * SOUND_KM_PER_MS
    )


# ----------------------------------------------------------------------------------------------
# (b) CBG bestline


def bestline_lp(km: FArray, rtt: FArray) -> tuple[float, float]:
    """The bestline by the linear program of Gueye et al. (reference implementation, scipy)."""
    from scipy.optimize import linprog

    d, r = np.asarray(km, float), np.asarray(rtt, float)
    # minimise sum(r - m d - b) == maximise m*sum(d) + n*b, s.t. m d_j + b <= r_j, m >= light, b >=
    # 0.
    res = linprog(
        c=[-d.sum(), -float(len(d))],
        A_ub=np.column_stack([d, np.ones_like(d)]),
        b_ub=r,
        bounds=[(LIGHT_SLOPE, None), (0.0, None)],
        method="highs",
    )
    if not res.success:
        return LIGHT_SLOPE, 0.0
    return float(res.x[0]), float(res.x[1])


def bestline(km: FArray, rtt: FArray) -> tuple[float, float]:
    """The same LP solved exactly in closed form, fast enough to refit per target in leave-one-out.

    Minimising the vertical distances is maximising the line's height at the mean distance; for a
    slope ``m`` the highest feasible intercept is ``min_j(r_j - m d_j)``, a concave function of
    ``m`` whose breakpoints are the slopes of the lower convex hull. Infeasible (a point faster than
    light): the speed-of-light line through the origin.
    """
    d, r = np.asarray(km, float), np.asarray(rtt, float)
    ok = np.isfinite(d) & np.isfinite(r)
    d, r = d[ok], r[ok]
    if len(d) == 0:
        return LIGHT_SLOPE, 0.0
    pos = d > 0
    if (r < 0).any() or (pos.any() and (r[pos] / d[pos]).min() < LIGHT_SLOPE):
        return LIGHT_SLOPE, 0.0
    m_max = float((r[pos] / d[pos]).min()) if pos.any() else math.inf
    if not math.isfinite(m_max):
        return LIGHT_SLOPE, float(r.min())
    order = np.lexsort((r, d))
    hull: list[tuple[float, float]] = []
    for x, y in zip(d[order].tolist(), r[order].tolist()):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append((x, y))
    hx, hy = np.array(hull).T
    dx = np.diff(hx)
    slopes = np.diff(hy)[dx > 0] / dx[dx > 0]
    cand = np.unique(np.clip(np.concatenate([slopes, [LIGHT_SLOPE, m_max]]), LIGHT_SLOPE, m_max))
    intercepts = (r[None, :] - cand[:, None] * d[None, :]).min(axis=1)
    score = cand * d.mean() + intercepts
    k = int(np.argmax(score))
    return float(cand[k]), float(max(intercepts[k], 0.0))


def bestline_radius_km(rtt_ms: FArray, slope: FArray, intercept: FArray) -> FArray:
    return np.asarray(np.maximum(np.asarray(rtt_ms) - intercept, 0.0) / slope, dtype=float)


# ----------------------------------------------------------------------------------------------
# Vetting


@dataclass(frozen=True, slots=True)
class Liar:
    index: int
    violations: int
    example: str


def vet(
    km: FArray, rtt: FArray, ids: Sequence[str] | None = None, *, tolerance: float = 0.0
) -> list[Liar]:
    """Greedily find landmarks whose RTTs are faster than light over their claimed distances.

    ``km`` and ``rtt`` are n x n (RTT NaN where unknown). Each round removes the landmark in most
    violating pairs (ties: the larger total excess), until no violation is left.
    """
    n = km.shape[0]
    names = list(ids) if ids is not None else [str(i) for i in range(n)]
    with np.errstate(invalid="ignore"):
        excess = km / SOUND_KM_PER_MS - rtt * (1.0 + tolerance)
    viol = np.nan_to_num(excess, nan=-1.0) > 0
    np.fill_diagonal(viol, False)
    viol = viol | viol.T
    ex = np.where(viol, np.nan_to_num(np.maximum(excess, excess.T), nan=0.0), 0.0)
    alive = np.ones(n, dtype=bool)
    out: list[Liar] = []
    while True:
        v = viol & alive[None, :] & alive[:, None]
        counts = v.sum(axis=1)
        if counts.max(initial=0) == 0:
            return out
        sev = np.where(v, ex, 0.0).sum(axis=1)
        cand = np.flatnonzero(counts == counts.max())
        i = int(cand[np.argmax(sev[cand])])
        j = int(np.flatnonzero(v[i])[np.argmax(ex[i][v[i]])])
        # A lone violating pair cannot say which end lies: leave both out (soundness first).
        for a, b in ((i, j), (j, i)) if counts.max() == 1 else ((i, j),):
            r = np.fmin(rtt[a, b], rtt[b, a])
            out.append(
                Liar(
                    a,
                    int(counts[a]),
                    f"RTT {r:.1f} ms to {names[b]} is faster than light over "
                    f"the claimed {km[a, b]:.0f} km ({int(counts[a])} such pair(s))",
                )
            )
            alive[a] = False


# ----------------------------------------------------------------------------------------------
# (c) soft ranging


def rtt_bin(rtt: FArray) -> npt.NDArray[np.intp]:
    """The soft-ranging table's row for each RTT (``R_EDGES``; out-of-range RTTs clamp to the
    ends)."""
    return np.clip(np.searchsorted(R_EDGES, rtt) - 1, 0, len(R_EDGES) - 2)


def _gaussian_smooth(h: FArray, sigma: tuple[float, float]) -> FArray:
    """``scipy.ndimage.gaussian_filter(h, sigma, mode="nearest")`` in numpy: importing scipy.ndimage
    costs a fresh ``geoprobe locate`` a third of a second."""
    out = np.asarray(h, dtype=float)
    for axis, s in enumerate(sigma):
        r = int(4.0 * s + 0.5)
        x = np.arange(-r, r + 1, dtype=float)
        k = np.exp(-0.5 * (x / s) ** 2)
        k /= k.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        out = np.apply_along_axis(np.convolve, axis, padded, k, mode="valid")
    return np.asarray(out, dtype=float)


def soft_table(
    km: FArray, rtt: FArray, *, pseudo: float = 2.0, reach: FArray | None = None
) -> FArray:
    """log p(u bin | RTT bin) from pooled (distance, RTT) pairs, smoothed across neighbouring bins.

    ``u`` is the distance as a share of ``reach`` (default: the sound bound of the RTT).
    """
    if reach is None:
        reach = SOUND_KM_PER_MS * rtt
    ok = np.isfinite(km) & np.isfinite(rtt) & (rtt > 0) & np.isfinite(reach) & (reach > 0)
    u = np.clip(km[ok] / reach[ok], 0.0, 1.0 - 1e-9)
    h = np.zeros((len(R_EDGES) - 1, U_BINS))
    np.add.at(h, (rtt_bin(rtt[ok]), (u * U_BINS).astype(int)), 1.0)
    h = _gaussian_smooth(h, (0.8, 1.0))
    # Rows with little data borrow from the whole table rather than go flat.
    pooled = h.sum(axis=0) / max(h.sum(), 1e-12)
    p = (h + pseudo * pooled[None, :] + 1e-3) / (
        h.sum(axis=1, keepdims=True) + pseudo + U_BINS * 1e-3
    )
    return np.asarray(np.log(p), dtype=float)


def soft_loglik(table: FArray, rtt: FArray, km: FArray, reach: FArray | None = None) -> FArray:
    """log-likelihood of distances ``km`` (points x landmarks) given each landmark's RTT (1-D).

    Beyond ``reach`` (default: the sound bound) the value is -inf.
    """
    rtt = np.asarray(rtt, dtype=float).reshape(-1)
    rows = table[rtt_bin(rtt)]  # landmarks x U_BINS
    if reach is None:
        reach = SOUND_KM_PER_MS * np.maximum(rtt, 1e-6)
    u = km * (1.0 / np.maximum(reach, 1e-6))[None, :]
    ub = np.minimum((u * U_BINS).astype(np.intp), U_BINS - 1)
    out = rows[np.arange(len(rtt))[None, :], ub]
    return np.asarray(np.where(u <= 1.0, out, -np.inf), dtype=float)


# ----------------------------------------------------------------------------------------------
# The fitted model


@dataclass(slots=True)
class Model:
    """Calibration of a set of landmarks. Arrays are indexed like ``ids``."""

    ids: list[str]
    lat: FArray
    lon: FArray
    slope: FArray  # CBG bestline, ms per km
    intercept: FArray  # CBG bestline, ms
    offset: FArray  # per-landmark access delay (ms) subtracted before soft ranging
    table: FArray  # soft-ranging log p(u | rtt)
    excluded: dict[str, str] = field(default_factory=dict)  # vetted out: id -> why
    temperature: float = 1.0  # divides the log-likelihood; fitted so probabilities are calibrated
    estimate_temperature: float = 4.0  # the same for the point estimate, fitted for the least error
    blend: float = (
        1.0  # share of the posterior in country probabilities; the rest: sound-region land shares
    )
    calibration_slope: float = 1.0  # top-country recalibration (solver.recalibrate)
    calibration_rtt: float = 0.0
    calibration_bias: float = 0.0
    prior_bandwidth_km: float = 60.0
    prior_floor: float = 0.3
    profile_width: float = 0.35  # log-RTT difference at which a peer's RTT profile stops matching
    pairs: int = 0
    rtt: FArray = field(default_factory=lambda: np.zeros((0, 0)))  # vetted symmetric min-RTT matrix

    @property
    def index(self) -> dict[str, int]:
        return {lid: i for i, lid in enumerate(self.ids)}


def fit_arrays(
    ids: Sequence[str],
    lat: FArray,
    lon: FArray,
    rtt: FArray,
    *,
    vetting: bool = True,
    km: FArray | None = None,
) -> Model:
    """Fit every model from positions and an n x n min-RTT matrix (NaN unknown; rows = sources)."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    n = len(ids)
    dist = distance_matrix_km(lat, lon, lat, lon) if km is None else km
    r = np.array(rtt, dtype=float, copy=True)
    np.fill_diagonal(r, np.nan)
    excluded: dict[str, str] = {}
    alive = np.ones(n, dtype=bool)
    if vetting:
        for liar in vet(dist, r, ids):
            excluded[ids[liar.index]] = liar.example
            alive[liar.index] = False
    # The lower RTT of the two directions is the better measurement of the pair.
    sym = np.fmin(r, r.T)
    sym[~alive, :] = np.nan
    sym[:, ~alive] = np.nan
    slope = np.full(n, LIGHT_SLOPE)
    intercept = np.zeros(n)
    for i in np.flatnonzero(alive):
        ok = np.isfinite(sym[i])
        if ok.sum() >= 2:
            slope[i], intercept[i] = bestline(dist[i, ok], sym[i, ok])
    offset = _offsets(dist, sym)
    if SOFT_REACH == "bestline":
        # Distance as a share of each landmark's own bestline bound: its routing, not the world's.
        reach = np.maximum(sym - intercept[:, None], 1e-3) / slope[:, None]
        fin = np.isfinite(sym)
        table = soft_table(dist[fin], sym[fin], reach=reach[fin])
    else:
        adj = sym - offset[:, None] - offset[None, :]
        table = soft_table(dist[np.isfinite(adj)], np.maximum(adj[np.isfinite(adj)], R_EDGES[0]))
    return Model(
        ids=list(ids),
        lat=lat,
        lon=lon,
        slope=slope,
        intercept=intercept,
        offset=offset,
        table=table,
        excluded=excluded,
        pairs=int(np.isfinite(sym).sum() // 2),
        rtt=sym,
    )


def _offsets(km: FArray, sym: FArray, *, shrink: float = 10.0) -> FArray:
    """Per-landmark access delay: how much slower than its peers a landmark is at the same distance.

    The residual of each pair against the pooled lower envelope (the 10th percentile RTT per
    distance band) is split evenly between its two ends; a landmark's offset is the shrunken median
    of its half-residuals, never negative and never above its own lowest RTT.
    """
    n = km.shape[0]
    ok = np.isfinite(sym)
    if ok.sum() < 20:
        return np.zeros(n)
    edges = np.concatenate([[0.0], np.geomspace(50, 20_000, 24)])
    band = np.clip(np.searchsorted(edges, km) - 1, 0, len(edges) - 2)
    base = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        v = sym[ok & (band == b)]
        if len(v) >= 5:
            base[b] = np.percentile(v, 10)
    idx = np.arange(len(base))
    good = np.isfinite(base)
    if good.sum() < 2:
        return np.zeros(n)
    base = np.interp(idx, idx[good], base[good])
    resid = np.where(ok, (sym - base[band]) / 2.0, np.nan)
    out = np.zeros(n)
    for i in range(n):
        v = resid[i][np.isfinite(resid[i])]
        if len(v):
            med = float(np.median(v))
            out[i] = med * len(v) / (len(v) + shrink)
    lowest = np.nanmin(np.where(ok, sym, np.inf), axis=1)
    return np.asarray(
        np.clip(out, 0.0, np.where(np.isfinite(lowest), 0.5 * lowest, 0.0)), dtype=float
    )


def hold_out(model: Model, i: int) -> Model:
    """``model`` as if landmark ``i`` had never been in it: vetted out, and every bestline that
    rests on a pair with ``i`` refitted without it.

    Locating a landmark with bestlines that were fitted to pass just under its own RTTs would make
    it an easier case than any real target, and probabilities fitted on it overconfident. Only the
    bestlines for which ``i`` is a supporting point change (a handful), so this costs ~1 ms, not a
    refit. The pooled soft-ranging table keeps ``i``'s pairs: one landmark's share of it is tiny.
    """
    lid = model.ids[i]
    out = dataclasses.replace(model, excluded={**model.excluded, lid: "held out"})
    if not model.rtt.size:
        return out
    d = distance_matrix_km(model.lat, model.lon, model.lat[i : i + 1], model.lon[i : i + 1])[:, 0]
    r = model.rtt[:, i]
    tight = np.flatnonzero(
        np.isfinite(r) & (np.abs(r - (model.slope * d + model.intercept)) <= 1e-6)
    )
    if len(tight) == 0:
        return out
    slope, intercept = model.slope.copy(), model.intercept.copy()
    for j in tight.tolist():
        row = model.rtt[j].copy()
        row[i] = np.nan
        ok = np.isfinite(row)
        if ok.sum() >= 2:
            dj = distance_matrix_km(
                model.lat[j : j + 1], model.lon[j : j + 1], model.lat[ok], model.lon[ok]
            )[0]
            slope[j], intercept[j] = bestline(dj, row[ok])
    out.slope, out.intercept = slope, intercept
    return out


def fit(catalogue: Catalogue, *, vetting: bool = True) -> Model:
    """Fit from a catalogue's landmarks and its landmark<->landmark RTTs."""
    from geoprobe.landmarks import rtt_matrix

    ids, _sym = rtt_matrix(catalogue)
    lms = catalogue.by_id()
    index = {lid: i for i, lid in enumerate(ids)}
    r = np.full((len(ids), len(ids)), np.nan)
    for a, b, v in catalogue.rtts:
        i, j = index[a], index[b]
        if i != j and (np.isnan(r[i, j]) or v < r[i, j]):
            r[i, j] = v
    r = np.where(np.isnan(r), r.T, r)
    lat = np.array([lms[i].lat for i in ids])
    lon = np.array([lms[i].lon for i in ids])
    return fit_arrays(ids, lat, lon, r, vetting=vetting)


def measured_rtts(model: Model, rtts: Mapping[str, float]) -> tuple[npt.NDArray[np.intp], FArray]:
    """Indices into the model and RTTs of the usable measurements (known, not vetted out,
    finite)."""
    idx = model.index
    pairs = [
        (idx[k], float(v))
        for k, v in rtts.items()
        if k in idx and k not in model.excluded and math.isfinite(v) and v >= 0
    ]
    if not pairs:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    i, r = zip(*pairs)
    return np.array(i, dtype=np.intp), np.array(r, dtype=float)
