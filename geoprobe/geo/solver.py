"""From measurements (landmark -> minimum RTT) to a Fix: region, estimate, countries, certification.

Two layers answer two questions:

* the **sound region** -- the intersection of speed-of-light caps -- says where the VM *can* be. Only
  it can certify a country, and only when it lies wholly inside that country's polygon.
* the **posterior** over points sampled inside the smallest sound cap says where the VM probably is:
  the soft-ranging likelihood of every RTT (calibrated per landmark), tempered so that its country
  probabilities are calibrated, times a prior that VMs live on land near other data centres.

An empty sound intersection means a bad input; the constraints to blame are found (the fewest caps
whose removal leaves a point) and named, never papered over by growing every circle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geoprobe.errors import MeasurementError
from geoprobe.geo import calibration
from geoprobe.geo.calibration import Model, measured_rtts, soft_loglik
from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.geo.regions import CapIntersection, CountryLookup, Sample, SampledRegion, sample_cap
from geoprobe.geo.sphere import EARTH_RADIUS_KM, SOUND_KM_PER_MS, from_xyz, to_xyz

FArray = npt.NDArray[np.float64]
IArray = npt.NDArray[np.intp]

#: Soft ranging uses the landmarks with the lowest RTTs; every landmark still bounds (sound caps).
SOFT_LANDMARKS = 60
#: A VM sits on land: sea points keep a little mass only because coastlines are generalised.
SEA_LOG_PRIOR = math.log(0.02)
HPD_MASS = 0.95  # the calibrated region is this highest-posterior set
#: The VM's unknown access delay, as shares of its lowest RTT, marginalised over.
ACCESS_LEVELS = (0.0, 0.3, 0.6)
PROFILE_LANDMARKS = 10  # nearest landmarks whose RTTs make the delay-space profile
PROFILE_GAIN = 1.0
MEAN_COHERENCE = 0.97  # |mean unit vector| below this: modes > ~1500 km apart
MODE_RADIUS_KM = 300.0
CBG_PENALTY = 2.0  # log-likelihood per violated bestline (before tempering)
SOFT_TAIL = 20.0  # log-likelihood per unit of distance beyond a landmark's calibrated reach


@dataclass(slots=True)
class Posterior:
    """Everything the solver knows about the sampled points; kept for temperature fitting."""

    sample: Sample
    loglik: FArray
    logprior: FArray
    codes: npt.NDArray[np.str_]
    sound: CapIntersection
    used: IArray  # model indices of the measurements used
    rtt: FArray
    culprits: list[int]

    def weights(self, temperature: float) -> FArray:
        lp = self.loglik / temperature + self.logprior
        lp = lp - lp.max()
        w = np.exp(lp) * self.sample.weight
        return np.asarray(w / w.sum(), dtype=float)


def country_probabilities(codes: npt.NDArray[np.str_], w: FArray) -> list[tuple[str, float]]:
    """Posterior mass per country, renormalised over land (a VM sits on land)."""
    land = codes != ""
    total = float(w[land].sum())
    if total <= 0:
        return []
    uniq, inv = np.unique(codes[land], return_inverse=True)
    mass = np.bincount(inv, weights=w[land]) / total
    order = np.argsort(-mass)
    return [(str(uniq[k]), float(mass[k])) for k in order if mass[k] > 1e-6]


def blended_probabilities(post: Posterior, w: FArray, blend: float) -> list[tuple[str, float]]:
    """Posterior country mass, mixed with the land shares of the sound region.

    The mixture keeps probabilities honest when the likelihood is confidently wrong (correlated
    landmark errors): no country the VM can physically be in is ever driven to zero.
    """
    probs = dict(country_probabilities(post.codes, w))
    if blend < 1.0:
        inside = post.sound.inside if post.sound.inside.any() else np.ones(len(w), dtype=bool)
        area = post.sample.weight * inside
        shares = dict(country_probabilities(post.codes, area / max(float(area.sum()), 1e-300)))
        probs = {
            c: blend * probs.get(c, 0.0) + (1.0 - blend) * shares.get(c, 0.0)
            for c in set(probs) | set(shares)
        }
    return sorted(probs.items(), key=lambda kv: -kv[1])


def _cos_radius(radius_km: FArray) -> FArray:
    return np.asarray(np.cos(np.minimum(radius_km / EARTH_RADIUS_KM, math.pi)), dtype=float)


def find_inconsistent(lat: FArray, lon: FArray, radius_km: FArray) -> list[int]:
    """The smallest set of caps whose removal leaves a common point (searched on a global grid).

    Candidates: a Fibonacci lattice over the globe (~100 km apart) plus samples of every small cap;
    the point violating the fewest caps (ties: the least total overshoot) names the culprits.
    """
    n = 40_000
    k = np.arange(n) + 0.5
    glat = np.degrees(np.arcsin(1 - 2 * k / n))
    glon = (np.degrees(np.pi * (1 + 5**0.5) * k) + 180.0) % 360.0 - 180.0
    pts = [to_xyz(glat, glon)]
    for i in np.argsort(radius_km)[:10]:
        pts.append(sample_cap(float(lat[i]), float(lon[i]), float(radius_km[i]), points=800).xyz)
    xyz = np.concatenate(pts)
    cent = to_xyz(lat, lon)
    ang = np.arccos(np.clip(xyz @ cent.T, -1.0, 1.0)) * EARTH_RADIUS_KM
    over = np.maximum(ang - radius_km[None, :], 0.0)
    count = (over > 0).sum(axis=1)
    best = np.flatnonzero(count == count.min())
    j = int(best[np.argmin(over[best].sum(axis=1))])
    return [int(i) for i in np.flatnonzero(over[j] > 0)]


def _dots(xyz: FArray, cent: FArray) -> FArray:
    return np.asarray(xyz @ cent.T, dtype=float)


def posterior(
    model: Model | None,
    idx: IArray,
    rtt: FArray,
    lat: FArray,
    lon: FArray,
    countries: CountryLookup,
    *,
    points: int = 2500,
) -> Posterior:
    """Sample the smallest sound cap and score every point. ``lat``/``lon`` are the landmarks'.

    Only caps that can cut the sampled one are tested (a cap that contains it whole changes nothing),
    which keeps a solve with hundreds of landmarks to a few milliseconds of arithmetic.
    """
    culprits: list[int] = []
    keep = np.ones(len(idx), dtype=bool)
    for _ in range(3):
        radius = np.maximum(rtt[keep], 0.0) * SOUND_KM_PER_MS
        llat, llon = lat[keep], lon[keep]
        s = int(np.argmin(radius))
        sample = sample_cap(float(llat[s]), float(llon[s]), float(radius[s]), points=points)
        cent = to_xyz(llat, llon)
        dcent = np.arccos(np.clip(cent @ cent[s], -1.0, 1.0)) * EARTH_RADIUS_KM
        # A point stands for a cell: allow half a cell diagonal so thin regions are not lost.
        slack = sample.spacing_km * 0.75
        reach = dcent + radius[s] + slack
        cut = np.flatnonzero(reach > radius)
        inside: npt.NDArray[np.bool_] = np.asarray(
            (_dots(sample.xyz, cent[cut]) >= _cos_radius(radius[cut] + slack)[None, :]).all(axis=1),
            dtype=bool,
        )
        if inside.any():
            break
        bad = find_inconsistent(llat, llon, radius)
        if not bad:
            break
        live = np.flatnonzero(keep)
        culprits.extend(int(idx[live[b]]) for b in bad)
        keep[live[bad]] = False
    sound = CapIntersection(llat, llon, radius, sample, inside)
    codes = countries.codes_at(sample.lat, sample.lon)
    land = codes != ""
    logprior = np.where(land, 0.0, SEA_LOG_PRIOR)
    loglik = np.zeros(len(sample))
    used = idx[keep]
    r_used = rtt[keep]
    if model is not None and inside.any() and SOFT_LANDMARKS > 0:
        near = np.argsort(r_used)[:SOFT_LANDMARKS]
        dist = np.arccos(np.clip(_dots(sample.xyz, cent[near]), -1.0, 1.0)) * EARTH_RADIUS_KM
        bestline_reach = calibration.SOFT_REACH.startswith("bestline")
        base = r_used[near] if bestline_reach else r_used[near] - model.offset[used[near]]
        # The VM's own access delay adds to every RTT alike: marginalise over it.
        levels = []
        for frac in ACCESS_LEVELS:
            radj = np.maximum(base - frac * base.min(), 0.25)
            reach_km = (
                np.maximum(radj - model.intercept[used[near]], 1e-3) / model.slope[used[near]]
                if bestline_reach
                else SOUND_KM_PER_MS * radj
            )
            ll = soft_loglik(model.table, radj, dist, reach_km)
            # Beyond the calibrated reach (but inside the sound bound): a steep penalty, not impossibility.
            u = dist / reach_km[None, :]
            ll = np.where(np.isfinite(ll), ll, model.table[-1, -1] - SOFT_TAIL * (u - 1.0))
            levels.append(ll.sum(axis=1))
        stack = np.array(levels)
        mx = stack.max(axis=0)
        loglik = mx + np.log(np.exp(stack - mx).mean(axis=0))
    if model is not None and inside.any():
        if CBG_PENALTY > 0:
            # Each landmark's own bestline as a soft bound (as a hard one it misses the truth half the time).
            rc = np.maximum(r_used - model.intercept[used], 0.0) / model.slope[used]
            c2 = np.flatnonzero(reach > rc)
            outside = _dots(sample.xyz, cent[c2]) < _cos_radius(rc[c2] + slack)[None, :]
            loglik = loglik - CBG_PENALTY * outside.sum(axis=1)
        logprior = logprior + _kde_logprior(model, sample, used, r_used, cent[s], float(radius[s]))
    loglik = np.where(inside, loglik, -np.inf)
    if not inside.any():
        loglik = np.zeros(len(sample))
    return Posterior(sample, loglik, logprior, codes, sound, used, r_used, culprits)


def _kde_logprior(
    model: Model, sample: Sample, used: IArray, rtt: FArray, centre: FArray, radius_km: float
) -> FArray:
    """Data centres cluster: a kernel density of the (vetted) landmarks' own positions.

    Each landmark's kernel is weighted by how well its RTTs to the VM's nearest landmarks match the
    VM's own (delay-space nearest neighbours, as in GeoPing): a peer with the same RTT profile is
    probably in the same place.
    """
    h = model.prior_bandwidth_km
    mxyz = to_xyz(model.lat, model.lon)
    dc = np.arccos(np.clip(mxyz @ centre, -1.0, 1.0)) * EARTH_RADIUS_KM
    ok = np.array([lid not in model.excluded for lid in model.ids]) & (dc <= radius_km + 4 * h)
    near = np.argsort(rtt)[:PROFILE_LANDMARKS]
    cand = np.flatnonzero(ok)
    if len(cand) == 0 or not model.rtt.size:
        return np.full(len(sample), math.log(model.prior_floor))
    prof = model.rtt[np.ix_(cand, used[near])]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(np.log(np.maximum(prof, 0.1)) - np.log(np.maximum(rtt[near], 0.1))[None, :])
    fin = np.isfinite(diff)
    has = fin.sum(axis=1) >= min(3, len(near))
    srt = np.sort(np.where(fin, diff, np.inf), axis=1)
    cnt = np.maximum(fin.sum(axis=1), 1)
    delta = srt[np.arange(len(cand)), (cnt - 1) // 2]  # (lower) median of the finite differences
    wk = np.where(has, np.exp(-((delta / model.profile_width) ** 2)), 0.0)
    sel = wk > 1e-4
    if not sel.any():
        return np.full(len(sample), math.log(model.prior_floor))
    d = np.arccos(np.clip(_dots(sample.xyz, mxyz[cand[sel]]), -1.0, 1.0)) * EARTH_RADIUS_KM
    dens = (np.exp(-0.5 * (d / h) ** 2) * wk[sel][None, :]).sum(axis=1)
    return np.asarray(np.log(model.prior_floor + PROFILE_GAIN * dens), dtype=float)


def estimate(post: Posterior, w: FArray) -> tuple[float, float, float]:
    """Point estimate and its 90 % error radius.

    The posterior mean minimises the expected squared error; when the posterior is split between
    far-apart modes (the mean would fall between them), the mean around the heaviest mode is used.
    """
    s = post.sample
    v = (w[:, None] * s.xyz).sum(axis=0)
    if np.linalg.norm(v) < MEAN_COHERENCE:
        top = np.argsort(-w)[:400]
        cosr = math.cos(MODE_RADIUS_KM / EARTH_RADIUS_KM)
        score = ((s.xyz[top] @ s.xyz[top].T) >= cosr).astype(float) @ w[top]
        peak = top[int(np.argmax(score))]
        around = (s.xyz @ s.xyz[peak]) >= cosr
        v = (w[around, None] * s.xyz[around]).sum(axis=0)
        if np.linalg.norm(v) < 1e-12:
            v = s.xyz[peak]
    v = v / np.linalg.norm(v)
    lat, lon = from_xyz(v)
    d = np.arccos(np.clip(s.xyz @ v, -1.0, 1.0)) * EARTH_RADIUS_KM
    order = np.argsort(d)
    cum = np.cumsum(w[order])
    radius = float(d[order][min(int(np.searchsorted(cum, 0.9)), len(order) - 1)])
    return float(lat), float(lon), max(radius, s.spacing_km)


def hpd(post: Posterior, w: FArray, mass: float = HPD_MASS) -> SampledRegion:
    order = np.argsort(-w)
    cum = np.cumsum(w[order])
    k = min(int(np.searchsorted(cum, mass)) + 1, len(order))
    mask = np.zeros(len(w), dtype=bool)
    mask[order[:k]] = True
    return SampledRegion(post.sample.subset(mask))


def certify(post: Posterior, countries: CountryLookup) -> str | None:
    """Certify only when the sound region's land lies in one country (checked on polygons)."""
    if post.sound.empty:
        return None
    land = post.codes[post.sound.inside]
    land = land[land != ""]
    if len(set(land.tolist())) > 1:
        return None  # the sample already shows two countries: no need for polygons
    return countries.certify(post.sound.polygon())


def solve_model(
    model: Model | None,
    ids: list[str],
    lat: FArray,
    lon: FArray,
    rtts: Mapping[str, float],
    countries: CountryLookup,
    *,
    method: str = "geoprobe",
    temperature: float | None = None,
) -> Fix:
    """Solve with a fitted ``model`` (None: sound bound only). ``ids/lat/lon`` describe the landmarks."""
    notes: list[str] = []
    excluded: dict[str, str] = {}
    if model is not None:
        excluded.update({k: v for k, v in model.excluded.items() if k in rtts})
        pos = model.index
        idx, r = measured_rtts(model, rtts)
        mlat, mlon = model.lat, model.lon
    else:
        pos = {k: i for i, k in enumerate(ids)}
        pairs = [
            (pos[k], float(v)) for k, v in rtts.items() if k in pos and math.isfinite(v) and v >= 0
        ]
        idx = np.array([p[0] for p in pairs], dtype=np.intp)
        r = np.array([p[1] for p in pairs], dtype=float)
        mlat, mlon = np.asarray(lat, float), np.asarray(lon, float)
        notes.append("no calibration data: the region and verdict rest on the sound bound only")
    for k in rtts:
        if k not in pos:
            excluded[k] = "not in the catalogue"
    if len(idx) == 0:
        raise MeasurementError("no usable RTT measurement to a known landmark")
    all_ids = model.ids if model is not None else list(ids)
    post = posterior(model, idx, r, mlat[idx], mlon[idx], countries)
    inconsistent = [all_ids[i] for i in post.culprits]
    for lid in inconsistent:
        excluded[lid] = "inconsistent: its bound leaves no common point with the others"
    if inconsistent:
        notes.append(
            f"empty intersection: left out {len(inconsistent)} inconsistent constraint(s): "
            + ", ".join(inconsistent)
        )
    if post.sound.empty:
        notes.append("no point satisfies the remaining bounds; estimate is the best compromise")
    t = (
        temperature
        if temperature is not None
        else (model.temperature if model is not None else 1.0)
    )
    w = post.weights(t)
    lat_e, lon_e, err = estimate(
        post, post.weights(model.estimate_temperature) if model is not None else w
    )
    region = (
        hpd(post, w) if model is not None else SampledRegion(post.sample.subset(post.sound.inside))
    )
    probs = blended_probabilities(post, w, model.blend if model is not None else 1.0)
    shares = _shares(region.sample, countries)
    countries_out = [CountryShare(c, p, shares.get(c, 0.0)) for c, p in probs]
    cert = certify(post, countries)
    return Fix(
        lat=lat_e,
        lon=lon_e,
        error_radius_km=err,
        bound="calibrated" if model is not None else "sound",
        countries=countries_out,
        certified=cert,
        region=region,
        sound_region=post.sound,
        landmarks_used=[all_ids[i] for i in post.used],
        excluded=excluded,
        inconsistent=inconsistent,
        method=method,
        notes=notes,
    )


def _shares(sample: Sample, countries: CountryLookup) -> dict[str, float]:
    if len(sample) == 0:
        return {}
    codes = countries.codes_at(sample.lat, sample.lon)
    land = codes != ""
    tot = float(sample.weight[land].sum())
    if tot <= 0:
        return {}
    out: dict[str, float] = {}
    for c, wt in zip(codes[land].tolist(), sample.weight[land].tolist()):
        out[c] = out.get(c, 0.0) + wt / tot
    return out


TEMPERATURES = np.geomspace(0.5, 64.0, 29)
BLENDS = (1.0, 0.97, 0.93, 0.85, 0.7, 0.5)


@dataclass(frozen=True, slots=True)
class Tempering:
    """How to read a posterior, fitted on held-out landmarks (see ``fit_tempering``)."""

    temperature: float = 1.0
    blend: float = 1.0
    estimate_temperature: float = 4.0

    def apply(self, model: Model) -> None:
        model.temperature, model.blend = self.temperature, self.blend
        model.estimate_temperature = self.estimate_temperature


def fit_tempering(cases: list[tuple[Posterior, str, FArray]]) -> Tempering:
    """Fit the posterior's reading on held-out landmarks whose truth is known.

    Country probabilities: temperature and blend minimise the negative log-probability of each
    case's true country (clipped, so one hopeless case cannot dominate). Point estimate: the
    temperature with the least geometric-mean distance error. Landmark<->landmark RTTs are correlated,
    so temperatures are usually above 1.
    """
    if len(cases) < 5:
        return Tempering()
    # The truth's share of each case, as a mask over points: a bincount per candidate reading would
    # be the same sum, thousands of times over (this fit runs on a fresh ``geoprobe locate``).
    prepared = []
    for post, truth, xyz in cases:
        land = post.codes != ""
        at_truth = land & (post.codes == truth)
        inside = post.sound.inside if post.sound.inside.any() else np.ones(len(land), dtype=bool)
        area = post.sample.weight * inside
        share = _land_share(area, land, at_truth)
        prepared.append((post, land, at_truth, share, xyz))
    best, best_nll = (1.0, 1.0), math.inf
    best_e, best_err = 4.0, math.inf
    for t in TEMPERATURES:
        errs = []
        nll = dict.fromkeys(BLENDS, 0.0)
        for post, land, at_truth, share, xyz in prepared:
            w = post.weights(float(t))
            mass = _land_share(w, land, at_truth)
            for b in BLENDS:
                p = mass if b >= 1.0 else b * mass + (1.0 - b) * share
                nll[b] -= math.log(min(max(p, 1e-3), 1.0))
            la, lo, _ = estimate(post, w)
            errs.append(
                float(np.arccos(np.clip(to_xyz(la, lo) @ xyz, -1.0, 1.0))) * EARTH_RADIUS_KM
            )
        for b, v in nll.items():
            if v < best_nll - 1e-9:
                best, best_nll = (float(t), b), v
        med = float(np.median(errs))
        if med < best_err - 1e-9:
            best_e, best_err = float(t), med
    return Tempering(best[0], best[1], best_e)


def _land_share(w: FArray, land: npt.NDArray[np.bool_], at: npt.NDArray[np.bool_]) -> float:
    """The share of ``w``'s land mass at ``at``, as ``country_probabilities`` reports it."""
    total = float(w[land].sum())
    if total <= 0:
        return 0.0
    share = float(w[at].sum()) / total
    return share if share > 1e-6 else 0.0


def self_tempering(
    model: Model,
    countries: CountryLookup,
    claimed: Sequence[str | None] | None = None,
    *,
    limit: int = 40,
    landmarks: int | None = None,
    seed: int = 0,
) -> Tempering:
    """Fit the temperature by locating the model's own landmarks, each held out of its own fix.

    Only landmark<->landmark RTTs are used, so an evaluation target that is not in ``model`` never
    influences it. ``landmarks`` limits each case to that many random others (as the evaluation does).
    """
    rng = np.random.default_rng(seed)
    cand = [i for i, lid in enumerate(model.ids) if lid not in model.excluded]
    cases: list[tuple[Posterior, str, FArray]] = []
    for i in rng.permutation(cand)[:limit].tolist():
        row = model.rtt[i] if model.rtt.size else np.full(len(model.ids), np.nan)
        others = [j for j in range(len(model.ids)) if j != i and np.isfinite(row[j])]
        if landmarks is not None and len(others) > landmarks:
            others = sorted(rng.choice(others, size=landmarks, replace=False).tolist())
        rtts = {model.ids[j]: float(row[j]) for j in others}
        truth = (claimed[i] if claimed is not None and i < len(claimed) else None) or str(
            countries.codes_at(model.lat[i : i + 1], model.lon[i : i + 1])[0]
        )
        if not rtts or not truth:
            continue
        held = calibration.hold_out(model, i)
        idx, r = measured_rtts(held, rtts)
        if len(idx) == 0:
            continue
        post = posterior(held, idx, r, held.lat[idx], held.lon[idx], countries)
        cases.append((post, truth, to_xyz(model.lat[i], model.lon[i])))
    return fit_tempering(cases)
