"""From measurements (landmark -> minimum RTT) to a Fix: region, estimate, countries, certification.

Two layers answer two questions:

* the **sound region** -- the intersection of speed-of-light caps -- says where the VM *can* be.
  Only it can certify a country, and only when it lies wholly inside that country's polygon.
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
import shapely

from geoprobe.errors import MeasurementError
from geoprobe.geo import calibration, selection
from geoprobe.geo.calibration import Model, measured_rtts, soft_loglik
from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.geo.regions import (
    CapIntersection,
    CountryLookup,
    LandPartLike,
    Sample,
    SampledRegion,
    sample_cap,
)
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
    land: CountryLand

    def weights(self, temperature: float) -> FArray:
        lp = self.loglik / temperature + self.logprior
        lp = lp - lp.max()
        w = np.exp(lp) * self.sample.weight
        return np.asarray(w / w.sum(), dtype=float)


#: Every country with land in the sound region keeps at least a share of this much mass, so none
#: that is physically possible reads as impossible (or its rival as p = 1.0).
FLOOR_MASS = 0.02
FLOOR_EACH = 0.002
NEAREST_POINTS = 4  # posterior density of land no sample point fell on: from this many neighbours


@dataclass(slots=True)
class CountryLand:
    """The countries with land in the sound region (from the polygons), and how to weigh them.

    ``matrix @ w`` is each country's posterior mass: its polygon land area times the posterior
    density on it, read from its own sample points or, for land too small for any point (an
    island), from the nearest points of the region, as if they were land.
    """

    codes: list[str]
    area_km2: FArray
    matrix: FArray  # countries x sample points

    @property
    def shares(self) -> FArray:
        total = float(self.area_km2.sum())
        return self.area_km2 / total if total > 0 else self.area_km2

    def probabilities(self, w: FArray, blend: float = 1.0) -> FArray:
        """Posterior country probabilities, mixed with the land shares by ``blend``, floored."""
        if len(self.codes) == 0:
            return np.zeros(0)
        return self.blended(self.posterior_shares(w), blend)

    def posterior_shares(self, w: FArray) -> FArray:
        """Each country's share of the posterior mass on land (before blend and floor)."""
        mass = self.matrix @ w
        total = float(mass.sum())
        return np.asarray(mass / total if total > 0 else self.shares.copy(), dtype=float)

    def blended(self, p: FArray, blend: float) -> FArray:
        """``posterior_shares`` mixed with the land shares by ``blend``, then floored."""
        n = len(self.codes)
        if blend < 1.0:
            p = blend * p + (1.0 - blend) * self.shares
        if n > 1:
            eps = min(FLOOR_EACH * n, FLOOR_MASS)
            p = (1.0 - eps) * p + eps / n
        return np.asarray(p, dtype=float)


def country_land(
    sample: Sample,
    codes: npt.NDArray[np.str_],
    inside: npt.NDArray[np.bool_],
    logprior: FArray,
    parts: Sequence[LandPartLike],
) -> CountryLand:
    """Build the country-mass matrix (see ``CountryLand``) for one posterior."""
    pts = inside if inside.any() else np.ones(len(codes), dtype=bool)
    if not parts:
        # No polygon land (or no region): fall back to the land the sample points fell on.
        uniq, inv = np.unique(codes[pts], return_inverse=True)
        rows = [(str(c), np.flatnonzero(pts)[inv == k]) for k, c in enumerate(uniq) if c]
        matrix = np.zeros((len(rows), len(codes)))
        for r, (_, ix) in enumerate(rows):
            matrix[r, ix] = 1.0
        area = np.array([float(sample.weight[ix].sum()) for _, ix in rows])
        return CountryLand([c for c, _ in rows], area, matrix)
    matrix = np.zeros((len(parts), len(codes)))
    cand = np.flatnonzero(pts)
    # Density as if on land: undo the sea prior where a neighbour is at sea.
    sea_undo = np.where(codes[cand] == "", math.exp(-SEA_LOG_PRIOR), 1.0)
    wt = sample.weight[cand]
    uniq, inv = np.unique(codes[cand], return_inverse=True)
    row_of = {str(c): k for k, c in enumerate(uniq)}
    own_area = np.bincount(inv, weights=wt, minlength=len(uniq))
    lonely = []
    for r, part in enumerate(parts):
        k = row_of.get(part.code, -1)
        if k >= 0 and part.code:
            own = inv == k
            matrix[r, cand[own]] = part.area_km2 / own_area[k]
        else:
            lonely.append(r)
    if lonely:
        here = to_xyz(
            np.array([parts[r].lat for r in lonely]), np.array([parts[r].lon for r in lonely])
        ).reshape(-1, 3)
        k = min(NEAREST_POINTS, len(cand))
        near = np.argpartition(-(here @ sample.xyz[cand].T), k - 1, axis=1)[:, :k]
        for j, r in enumerate(lonely):
            ix = near[j]
            matrix[r, cand[ix]] = parts[r].area_km2 / k / wt[ix] * sea_undo[ix]
    area = np.array([p.area_km2 for p in parts], dtype=float)
    return CountryLand([p.code for p in parts], area, matrix)


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

    Only caps that can cut the sampled one are tested (a cap that contains it whole changes
    nothing), which keeps a solve with hundreds of landmarks to a few milliseconds of arithmetic.
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
            # Beyond the calibrated reach (but inside the sound bound): a steep penalty, not
            # impossibility.
            u = dist / reach_km[None, :]
            ll = np.where(np.isfinite(ll), ll, model.table[-1, -1] - SOFT_TAIL * (u - 1.0))
            levels.append(ll.sum(axis=1))
        stack = np.array(levels)
        mx = stack.max(axis=0)
        loglik = mx + np.log(np.exp(stack - mx).mean(axis=0))
    if model is not None and inside.any():
        if CBG_PENALTY > 0:
            # Each landmark's own bestline as a soft bound (as a hard one it misses the truth half
            # the time).
            rc = np.maximum(r_used - model.intercept[used], 0.0) / model.slope[used]
            c2 = np.flatnonzero(reach > rc)
            outside = _dots(sample.xyz, cent[c2]) < _cos_radius(rc[c2] + slack)[None, :]
            loglik = loglik - CBG_PENALTY * outside.sum(axis=1)
        logprior = logprior + _kde_logprior(model, sample, used, r_used, cent[s], float(radius[s]))
    loglik = np.where(inside, loglik, -np.inf)
    if not inside.any():
        loglik = np.zeros(len(sample))
    parts = _land_in(sound, codes, countries) if inside.any() else []
    land_ = country_land(sample, codes, inside, logprior, parts)
    return Posterior(sample, loglik, logprior, codes, sound, used, r_used, culprits, land_)


#: Land closer than this to the sound region counts as in it (the cap polygons' own margin is
#: larger: 1 % + 2 km); the outline is tested every ~2 km.
LAND_SLACK_KM = 2.5


def _land_in(
    sound: CapIntersection, codes: npt.NDArray[np.str_], countries: CountryLookup
) -> list[LandPartLike]:
    """The countries with land in the sound region, from the polygons.

    The lon/lat polygon of the caps is a slight superset, and the sample's inside test allows half
    a cell; so a country is kept only when one of its sample points, or a point of its outline,
    lies in every cap (to within ``LAND_SLACK_KM``) on the sphere.
    """
    parts = countries.land_parts(sound.polygon(max_caps=None))
    s = sound.sample
    exact = sound.within(s.lat, s.lon, LAND_SLACK_KM)
    seen = set(codes[exact].tolist())
    unseen = [k for k, p in enumerate(parts) if p.code not in seen]
    found: set[int] = set()
    if unseen:
        rep = sound.within(
            np.array([parts[k].lat for k in unseen]),
            np.array([parts[k].lon for k in unseen]),
            LAND_SLACK_KM,
        )
        found = {k for k, hit in zip(unseen, rep) if hit}
        outlines = np.array([parts[k].outline for k in unseen], dtype=object)
        for densify in (False, True):
            todo = [j for j in range(len(unseen)) if unseen[j] not in found]
            if not todo:
                break
            geoms = outlines[todo]
            if densify:
                geoms = shapely.segmentize(geoms, 0.02)
            xy, which = shapely.get_coordinates(geoms, return_index=True)
            if len(xy):
                hit = sound.within(xy[:, 1], xy[:, 0], LAND_SLACK_KM)
                found |= {unseen[todo[int(j)]] for j in np.unique(which[hit])}
    return [p for k, p in enumerate(parts) if p.code in seen or k in found]


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
    v = mean_direction(post, w)
    lat, lon = from_xyz(v)
    d = np.arccos(np.clip(s.xyz @ v, -1.0, 1.0)) * EARTH_RADIUS_KM
    order = np.argsort(d)
    cum = np.cumsum(w[order])
    radius = float(d[order][min(int(np.searchsorted(cum, 0.9)), len(order) - 1)])
    return float(lat), float(lon), max(radius, s.spacing_km)


def mean_direction(post: Posterior, w: FArray) -> FArray:
    """The estimate as a unit vector (see ``estimate``), without its error radius."""
    s = post.sample
    v = w @ s.xyz
    if np.linalg.norm(v) < MEAN_COHERENCE:
        top = np.argsort(-w)[:400]
        cosr = math.cos(MODE_RADIUS_KM / EARTH_RADIUS_KM)
        score = ((s.xyz[top] @ s.xyz[top].T) >= cosr).astype(float) @ w[top]
        peak = top[int(np.argmax(score))]
        around = (s.xyz @ s.xyz[peak]) >= cosr
        v = (w[around, None] * s.xyz[around]).sum(axis=0)
        if np.linalg.norm(v) < 1e-12:
            v = s.xyz[peak]
    return np.asarray(v / np.linalg.norm(v), dtype=float)


#: A lowest RTT this short is nearly proof of sharing the landmark's site (or city): the estimate
#: is the landmark itself (chosen across all, thinned, European and American WonderProxy settings).
COLOCATED_MS = 2.0


def co_located(post: Posterior, lat: FArray, lon: FArray) -> tuple[float, float] | None:
    """The lowest-RTT landmark's position when its RTT is under ``COLOCATED_MS`` and it lies in
    the sound region; ``lat``/``lon`` are indexed like the model."""
    if not len(post.rtt) or post.sound.empty:
        return None
    k = int(np.argmin(post.rtt))
    if post.rtt[k] > COLOCATED_MS:
        return None
    j = int(post.used[k])
    la, lo = float(lat[j]), float(lon[j])
    return (la, lo) if post.sound.contains(la, lo) else None


def radius_around(post: Posterior, w: FArray, lat: float, lon: float, mass: float = 0.9) -> float:
    """The radius around (lat, lon) that holds ``mass`` of the posterior."""
    s = post.sample
    d = np.arccos(np.clip(s.xyz @ to_xyz(lat, lon), -1.0, 1.0)) * EARTH_RADIUS_KM
    order = np.argsort(d)
    cum = np.cumsum(w[order])
    radius = float(d[order][min(int(np.searchsorted(cum, mass)), len(order) - 1)])
    return max(radius, s.spacing_km)


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
    """Solve with a fitted ``model`` (None: sound bound only). ``ids/lat/lon`` describe the
    landmarks."""
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
    we = post.weights(model.estimate_temperature) if model is not None else w
    lat_e, lon_e, err = estimate(post, we)
    colocated = co_located(post, mlat, mlon)
    if model is not None and colocated is not None:
        lat_e, lon_e = colocated
        err = radius_around(post, we, lat_e, lon_e)
        near = int(np.argmin(post.rtt))
        notes.append(
            f"{all_ids[int(post.used[near])]} answers in {post.rtt[near]:.2f} ms: "
            "placed at that landmark"
        )
    region = (
        hpd(post, w) if model is not None else SampledRegion(post.sample.subset(post.sound.inside))
    )
    probs = post.land.probabilities(w, model.blend if model is not None else 1.0)
    if model is not None and len(post.rtt):
        coef = (model.calibration_slope, model.calibration_rtt, model.calibration_bias)
        probs = recalibrate(probs, float(post.rtt.min()), coef)
    shares = post.land.shares
    countries_out = sorted(
        (
            CountryShare(c, float(p), float(a))
            for c, p, a in zip(post.land.codes, probs, shares)
            if p > 0.0
        ),
        key=lambda cs: -cs.probability,
    )
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


TEMPERATURES = np.geomspace(0.5, 64.0, 29)
BLENDS = (1.0, 0.97, 0.93, 0.85, 0.7, 0.5)


@dataclass(frozen=True, slots=True)
class Tempering:
    """How to read a posterior, fitted on held-out landmarks (see ``fit_tempering``)."""

    temperature: float = 1.0
    blend: float = 1.0
    estimate_temperature: float = 4.0
    #: Top-country recalibration (see ``recalibrate``): slope on its log-odds, the log-odds
    #: added per unit of log lowest RTT, and the intercept.
    calibration: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def apply(self, model: Model) -> None:
        model.temperature, model.blend = self.temperature, self.blend
        model.estimate_temperature = self.estimate_temperature
        model.calibration_slope, model.calibration_rtt, model.calibration_bias = self.calibration


P_EDGE = 1e-4  # log-odds are taken of probabilities clipped to [P_EDGE, 1 - P_EDGE]
RIDGE = 2.0  # pulls the recalibration toward the identity: ~100 cases fit three numbers


def _top_features(p: float, lowest_rtt: float) -> FArray:
    q = min(max(p, P_EDGE), 1.0 - P_EDGE)
    return np.array([math.log(q / (1.0 - q)), math.log(max(lowest_rtt, 0.1)), 1.0])


def recalibrate(
    probs: FArray, lowest_rtt: float, coef: tuple[float, float, float] = (1.0, 0.0, 0.0)
) -> FArray:
    """Read the top country's probability through a logistic map fitted on held-out cases.

    Tempering fits the whole distribution (the log-loss of the truth); what users read is the top
    country's p, and with few landmarks it stayed overconfident. The map's log-odds are
    ``slope * logit(p) + rtt * log(lowest RTT) + bias``: how far to trust the posterior depends
    on how near the nearest landmark is. The other countries share the rest in their proportions,
    and the top country stays on top (the map changes how sure, never which).
    Only one possible country: its p stays 1 (physics, not the model, decides that).
    """
    if len(probs) < 2 or coef == (1.0, 0.0, 0.0):
        return probs
    k = int(np.argmax(probs))
    p = float(probs[k])
    z = float(np.dot(np.asarray(coef), _top_features(p, lowest_rtt)))
    q = 1.0 / (1.0 + math.exp(-min(max(z, -30.0), 30.0)))
    q = min(max(q, P_EDGE), 1.0 - P_EDGE)
    rest = 1.0 - p
    # Never reorder: the top country stays at least as likely as the runner-up, rescaled.
    second = float(np.partition(probs, -2)[-2])
    q = max(q, second / (rest + second)) if rest + second > 0 else q
    out = (
        probs * ((1.0 - q) / rest)
        if rest > 0
        else np.full(len(probs), (1.0 - q) / (len(probs) - 1))
    )
    out[k] = q
    return np.asarray(out / out.sum(), dtype=float)


def fit_recalibration(
    tops: list[tuple[float, float, bool]],
) -> tuple[float, float, float]:
    """Logistic regression of "the top country is right" on its features, ridge toward identity."""
    if len(tops) < 20:
        return (1.0, 0.0, 0.0)
    x = np.array([_top_features(p, r) for p, r, _ in tops])
    y = np.array([float(ok) for _, _, ok in tops])
    prior = np.array([1.0, 0.0, 0.0])

    def loss(b: FArray) -> float:
        z = x @ b
        return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * RIDGE * ((b - prior) ** 2).sum())

    beta = prior.copy()
    for _ in range(100):
        z = np.clip(x @ beta, -30.0, 30.0)
        mu = 1.0 / (1.0 + np.exp(-z))
        grad = x.T @ (mu - y) + RIDGE * (beta - prior)
        hess = (x * (mu * (1.0 - mu))[:, None]).T @ x + RIDGE * np.eye(3)
        step = np.linalg.solve(hess, grad)
        # Damped Newton: near p = 1 the curvature is tiny and a full step overshoots.
        t, base = 1.0, loss(beta)
        while t > 1e-6 and loss(beta - t * step) > base - 1e-4 * t * float(grad @ step):
            t *= 0.5
        beta = beta - t * step
        if float(np.abs(t * step).max()) < 1e-9:
            break
    return (float(beta[0]), float(beta[1]), float(beta[2]))


def fit_tempering(cases: list[tuple[Posterior, str, FArray]]) -> Tempering:
    """Fit the posterior's reading on held-out landmarks whose truth is known.

    Country probabilities: temperature and blend minimise the negative log-probability of each
    case's true country (clipped, so one hopeless case cannot dominate); then the top country's
    recalibration. Point estimate: the temperature with the least geometric-mean distance error.
    Landmark<->landmark RTTs are correlated, so temperatures are usually above 1.
    """
    if len(cases) < 5:
        return Tempering()
    # Every candidate temperature of a case at once: one matrix product each for the country
    # masses and the mean directions (this fit runs on a fresh ``geoprobe locate``).
    nt = len(TEMPERATURES)
    nll = np.zeros((nt, len(BLENDS)))
    log_err = np.zeros(nt)
    for post, truth, xyz in cases:
        lp = post.loglik[None, :] / TEMPERATURES[:, None] + post.logprior[None, :]
        lp = lp - lp.max(axis=1, keepdims=True)
        w = np.exp(lp) * post.sample.weight[None, :]
        w = w / w.sum(axis=1, keepdims=True)
        row = post.land.codes.index(truth) if truth in post.land.codes else -1
        if row >= 0:
            mass = post.land.matrix @ w.T  # countries x temperatures
            total = mass.sum(axis=0)
            land_share = float(post.land.shares[row])
            own = np.where(total > 0, mass[row] / np.where(total > 0, total, 1.0), land_share)
            blends = np.asarray(BLENDS)
            p = blends[None, :] * own[:, None] + (1.0 - blends[None, :]) * land_share
            n = len(post.land.codes)
            if n > 1:  # the floor, as ``CountryLand.blended``
                eps = min(FLOOR_EACH * n, FLOOR_MASS)
                p = (1.0 - eps) * p + eps / n
            nll -= np.log(np.clip(p, 1e-3, 1.0))
        else:
            nll -= math.log(1e-3)
        v = w @ post.sample.xyz
        norm = np.linalg.norm(v, axis=1)
        for k in np.flatnonzero(norm < MEAN_COHERENCE).tolist():
            v[k] = mean_direction(post, w[k])
        v[norm >= MEAN_COHERENCE] /= norm[norm >= MEAN_COHERENCE, None]
        err = np.arccos(np.clip(v @ xyz, -1.0, 1.0)) * EARTH_RADIUS_KM
        log_err += np.log(np.maximum(err, 1.0))
    # First minimum in (temperature, blend) order, as a scan would find it.
    flat = int(np.argmin(nll))
    best = (float(TEMPERATURES[flat // len(BLENDS)]), BLENDS[flat % len(BLENDS)])
    # The geometric mean error: the median alone, on ~100 cases, jumped between temperatures
    # that moved the error tail (p90) by 200 km from one fold draw to the next.
    best_e = float(TEMPERATURES[int(np.argmin(log_err))])
    tops = []
    for post, truth, _ in cases:
        probs = post.land.probabilities(post.weights(best[0]), best[1])
        if len(probs) < 2:
            continue
        k = int(np.argmax(probs))
        tops.append((float(probs[k]), float(post.rtt.min()), post.land.codes[k] == truth))
    return Tempering(best[0], best[1], best_e, fit_recalibration(tops))


def self_tempering(
    model: Model,
    countries: CountryLookup,
    claimed: Sequence[str | None] | None = None,
    *,
    limit: int = 40,
    landmarks: int | None = None,
    seed: int = 0,
    select: int | None = None,
) -> Tempering:
    """Fit the temperature by locating the model's own landmarks, each held out of its own fix.

    Only landmark<->landmark RTTs are used, so an evaluation target that is not in ``model`` never
    influences it. ``landmarks`` limits each case to that many random others (as the evaluation
    does); ``select`` to what coarse-to-fine selection would probe (see ``held_out_case``).
    """
    rng = np.random.default_rng(seed)
    cand = [i for i, lid in enumerate(model.ids) if lid not in model.excluded]
    cases: list[tuple[Posterior, str, FArray]] = []
    for i in rng.permutation(cand)[:limit].tolist():
        case = held_out_case(
            model, i, countries, claimed, landmarks=landmarks, rng=rng, select=select
        )
        if case is not None:
            cases.append(case)
    return fit_tempering(cases)


def held_out_case(
    model: Model,
    i: int,
    countries: CountryLookup,
    claimed: Sequence[str | None] | None = None,
    *,
    landmarks: int | None = None,
    rng: np.random.Generator | None = None,
    select: int | None = None,
) -> tuple[Posterior, str, FArray] | None:
    """Locate the model's landmark ``i`` as a target it never saw: the posterior and the truth.

    With ``landmarks``, the case has what such a target has: that many random others, and a
    calibration fitted from those alone (bestlines drawn through 25 landmarks are looser than
    through 250; tempering on the full model's would be overconfident for a small catalogue).
    With ``select``, the case has what coarse-to-fine selection probes: the spread first round and
    the lowest-RTT rest, ``select`` in all (no first fixes are solved: it is an approximation).
    """
    row = model.rtt[i] if model.rtt.size else np.full(len(model.ids), np.nan)
    others = [
        j
        for j in range(len(model.ids))
        if j != i and np.isfinite(row[j]) and model.ids[j] not in model.excluded
    ]
    truth = (claimed[i] if claimed is not None and i < len(claimed) else None) or str(
        countries.codes_at(model.lat[i : i + 1], model.lon[i : i + 1])[0]
    )
    if not others or not truth:
        return None
    if landmarks is not None and len(others) > landmarks:
        gen = rng if rng is not None else np.random.default_rng(i)
        others = sorted(gen.choice(others, size=landmarks, replace=False).tolist())
        sub = np.array(others)
        held = calibration.fit_arrays(
            [model.ids[j] for j in others],
            model.lat[sub],
            model.lon[sub],
            model.rtt[np.ix_(sub, sub)],
        )
        rtts = {model.ids[j]: float(row[j]) for j in others}
    else:
        held = calibration.hold_out(model, i)
        if select is not None and len(others) > select:
            sub = np.array(others)
            first = set(sub[selection.spread(model.lat[sub], model.lon[sub], selection.COARSE)])
            rest = [j for j in sub[np.argsort(row[sub])] if j not in first]
            others = sorted(first | set(rest[: max(select - len(first), 0)]))
        rtts = {model.ids[j]: float(row[j]) for j in others}
    idx, r = measured_rtts(held, rtts)
    if len(idx) == 0:
        return None
    post = posterior(held, idx, r, held.lat[idx], held.lon[idx], countries)
    return post, truth, to_xyz(model.lat[i], model.lon[i])
