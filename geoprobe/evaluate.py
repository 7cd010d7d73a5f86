"""Leave-one-out evaluation of every method on a dataset, in one run.

Each located server in turn is the target; the others (or K random others) are its landmarks.
Calibration is refitted per target from landmark<->landmark RTTs only, so the target's position
never reaches its own fix. The probability temperature is fitted per fold of targets on landmarks
outside that fold (cross-fitting), which is target-free as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from geoprobe.datasets import Dataset
from geoprobe.errors import GeoprobeError, InputError
from geoprobe.geo import solver
from geoprobe.geo.calibration import fit_arrays
from geoprobe.geo.regions import CountryLookup
from geoprobe.geo.sphere import SOUND_KM_PER_MS, distance_matrix_km, haversine_km
from geoprobe.locate import METHODS, method

Progress = Callable[[int, int], None]
FOLDS = 8
CALIBRATION_CASES = 100  # held-out landmarks per fold that fit the temperatures


@dataclass(slots=True)
class Record:
    """One target located by one method (the ``--format jsonl`` line)."""

    target: str
    method: str
    true_lat: float
    true_lon: float
    est_lat: float | None
    est_lon: float | None
    error_km: float | None
    region_km2: float | None
    truth_in_region: bool | None
    country: str | None
    probability: float
    certified: bool
    solve_ms: float
    # Not in the jsonl record; used for the summary.
    true_country: str | None = None
    consistent: bool = True  # no speed-of-light violation against any other server
    vetted_out: bool = False  # flagged as a liar when the whole dataset is vetted
    certified_as: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("true_country", "consistent", "vetted_out", "certified_as"):
            d.pop(k)
        for k in ("est_lat", "est_lon"):
            if d[k] is not None:
                d[k] = round(d[k], 5)
        for k, nd in (("error_km", 1), ("region_km2", 0), ("probability", 4), ("solve_ms", 2)):
            if d[k] is not None:
                d[k] = round(d[k], nd)
        return d


@dataclass(slots=True)
class Evaluation:
    dataset: str
    records: list[Record]
    methods: list[str]
    landmarks_per_target: int | None
    seed: int
    seconds: float
    temperatures: list[solver.Tempering] = field(default_factory=list)
    vetted: dict[str, str] = field(default_factory=dict)  # landmarks left out in the full-data fit
    inconsistent_targets: list[str] = field(default_factory=list)
    #: Servers with no RTT to any other: nothing to locate them by, so they are no targets.
    unmeasured: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {m: summarise([r for r in self.records if r.method == m]) for m in self.methods}

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "targets": len({r.target for r in self.records}),
            "landmarks_per_target": self.landmarks_per_target,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "methods": self.summary(),
            "tempering": [
                {
                    "temperature": round(t.temperature, 3),
                    "blend": t.blend,
                    "estimate_temperature": round(t.estimate_temperature, 3),
                    "recalibration": [round(c, 3) for c in t.calibration],
                }
                for t in self.temperatures
            ],
            "vetted_landmarks": self.vetted,
            "inconsistent_targets": self.inconsistent_targets,
            "unmeasured_servers": self.unmeasured,
        }


def expected_calibration_error(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE of top-class probabilities over ``bins`` equal-width bins."""
    if len(prob) == 0:
        return math.nan
    b = np.minimum((prob * bins).astype(int), bins - 1)
    ece = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - prob[m].mean())
    return float(ece)


NOISE_DRAWS = 400


def calibration_noise(prob: np.ndarray, draws: int = NOISE_DRAWS) -> tuple[float, float | None]:
    """How far a *perfectly* calibrated predictor with these probabilities strays by chance.

    Outcomes are drawn as Bernoulli(p) for every target: the 95th percentile of their ECE, and
    the 5th percentile of their accuracy where p >= 0.9 (None: no such target). With ~100
    targets a perfect predictor's ECE is ~0.10 on its own, so a figure inside this band says
    nothing about the engine, and one outside it is a real miscalibration.
    """
    if len(prob) == 0:
        return math.nan, None
    rng = np.random.default_rng(0)  # fixed: the same figures every run
    hi = prob >= 0.9
    eces, accs = [], []
    for _ in range(draws):
        y = (rng.random(len(prob)) < prob).astype(float)
        eces.append(expected_calibration_error(prob, y))
        if hi.any():
            accs.append(float(y[hi].mean()))
    return float(np.percentile(eces, 95)), float(np.percentile(accs, 5)) if accs else None


def summarise(records: Sequence[Record]) -> dict[str, Any]:
    if not records:
        return {"targets": 0}
    err = np.array([r.error_km if r.error_km is not None else math.inf for r in records])
    correct = np.array([r.country is not None and r.country == r.true_country for r in records])
    prob = np.array([r.probability for r in records])
    tin = [r for r in records if r.truth_in_region is not None]
    tin_c = [r for r in tin if r.consistent]
    tin_v = [r for r in tin if not r.vetted_out]
    cert = np.array([r.certified for r in records])
    cert_ok = np.array([r.certified and r.certified_as == r.true_country for r in records])
    cert_bad = [r for r in records if r.certified and r.certified_as != r.true_country]
    hi = prob >= 0.9
    honest = np.array([not r.vetted_out for r in records])
    consistent = np.array([r.consistent for r in records], dtype=bool)
    noise_all = calibration_noise(prob)
    noise_c = calibration_noise(prob[consistent])
    return {
        "targets": len(records),
        "median_km": float(np.median(err)),
        "p80_km": float(np.percentile(err, 80)),
        "p90_km": float(np.percentile(err, 90)),
        "within_100km": float((err <= 100).mean()),
        "country_accuracy": float(correct.mean()),
        "truth_in_region": float(np.mean([r.truth_in_region for r in tin])) if tin else None,
        "truth_in_region_consistent": float(np.mean([r.truth_in_region for r in tin_c]))
        if tin_c
        else None,
        "truth_in_region_not_vetted": float(np.mean([r.truth_in_region for r in tin_v]))
        if tin_v
        else None,
        "consistent_targets": len(tin_c),
        "certified": float(cert.mean()),
        "certified_correct": float(cert_ok.mean()),
        "certified_wrong": len(cert_bad) / len(records),
        "certified_wrong_consistent": sum(r.consistent for r in cert_bad) / len(records),
        "certified_wrong_targets": [r.target for r in cert_bad],
        "accuracy_at_p90": float(correct[hi].mean()) if hi.any() else None,
        "share_p90": float(hi.mean()),
        "ece": expected_calibration_error(prob, correct.astype(float)),
        # The same, leaving out targets whose own claimed location vetting proves false (their
        # "truth" is wrong, so a right answer about where they really are counts as an error above).
        "country_accuracy_not_vetted": float(correct[honest].mean()) if honest.any() else None,
        "accuracy_at_p90_not_vetted": float(correct[hi & honest].mean())
        if (hi & honest).any()
        else None,
        "ece_not_vetted": expected_calibration_error(prob[honest], correct[honest].astype(float)),
        # The same on consistent targets: a target whose claimed position is faster than light
        # from another server has a label its own RTTs can contradict (one end of the pair lies).
        "accuracy_at_p90_consistent": float(correct[hi & consistent].mean())
        if (hi & consistent).any()
        else None,
        "share_p90_consistent": float(hi[consistent].mean()) if consistent.any() else None,
        # What a perfectly calibrated predictor would show by chance (``calibration_noise``).
        "ece_noise_p95": noise_all[0],
        "accuracy_at_p90_noise_p5": noise_all[1],
        "ece_consistent_noise_p95": noise_c[0],
        "accuracy_at_p90_consistent_noise_p5": noise_c[1],
        "ece_consistent": expected_calibration_error(
            prob[consistent], correct[consistent].astype(float)
        ),
        "mean_solve_ms": float(np.mean([r.solve_ms for r in records])),
    }


def _countries() -> CountryLookup:
    from geoprobe.geo.countries import default_index

    return default_index()


def evaluate(
    ds: Dataset,
    *,
    methods: Sequence[str] = tuple(METHODS),
    landmarks_per_target: int | None = None,
    targets: int | None = None,
    seed: int = 0,
    countries: CountryLookup | None = None,
    progress: Progress | None = None,
    extra_delay: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Evaluation:
    """Leave-one-out over the dataset's servers. ``extra_delay`` (tests, benchmarks) may add delay
    to each target's measured RTTs, as an adversary on the path could."""
    start = time.perf_counter()
    for m in methods:
        method(m)
    if landmarks_per_target is not None and landmarks_per_target < 1:
        raise InputError("must be at least 1", field="landmarks-per-target")
    if targets is not None and targets < 1:
        raise InputError("must be at least 1", field="targets")
    countries = countries if countries is not None else _countries()
    n = len(ds)
    if n < 3:
        raise InputError(
            "a leave-one-out evaluation needs at least 3 located servers", file=ds.source
        )
    rng = np.random.default_rng(seed)
    lat, lon = ds.lats, ds.lons
    km = distance_matrix_km(lat, lon, lat, lon)
    sym = np.fmin(ds.rtt_min, ds.rtt_min.T)
    np.fill_diagonal(sym, np.nan)
    with np.errstate(invalid="ignore"):
        violates = np.nan_to_num(sym < km / SOUND_KM_PER_MS, nan=0.0).astype(bool)
    consistent = np.asarray(~violates.any(axis=1), dtype=bool)
    truth_codes = [
        s.country or str(countries.codes_at(lat[i : i + 1], lon[i : i + 1])[0]) or None
        for i, s in enumerate(ds.servers)
    ]
    fin = np.isfinite(ds.rtt_min)
    measured = np.asarray(fin.any(axis=0) | fin.any(axis=1), dtype=bool)
    order = rng.permutation(n)
    order = order[measured[order]]
    chosen = np.sort(order[:targets]) if targets is not None else np.flatnonzero(measured)
    fold_of = {int(t): k % FOLDS for k, t in enumerate(rng.permutation(chosen))}
    folds = sorted(set(fold_of.values()))
    temps: dict[int, solver.Tempering] = {}
    total = len(chosen) + len(folds)
    done = 0
    if "geoprobe" in methods:
        for f in folds:
            out = [t for t, g in fold_of.items() if g == f]
            keep = np.setdiff1d(np.arange(n), out)
            model = fit_arrays(
                [ds.ids[i] for i in keep],
                lat[keep],
                lon[keep],
                ds.rtt_min[np.ix_(keep, keep)],
                km=km[np.ix_(keep, keep)],
            )
            temps[f] = solver.self_tempering(
                model,
                countries,
                [truth_codes[i] for i in keep],
                limit=CALIBRATION_CASES,
                landmarks=landmarks_per_target,
                seed=seed + f,
            )
            done += 1
            if progress:
                progress(done, total)
    else:
        total = len(chosen)
    records: list[Record] = []
    for t in chosen.tolist():
        others = np.array([i for i in range(n) if i != t])
        if landmarks_per_target is not None and len(others) > landmarks_per_target:
            others = np.sort(rng.choice(others, size=landmarks_per_target, replace=False))
        model = fit_arrays(
            [ds.ids[i] for i in others],
            lat[others],
            lon[others],
            ds.rtt_min[np.ix_(others, others)],
            km=km[np.ix_(others, others)],
        )
        temps.get(fold_of[t], solver.Tempering()).apply(model)
        rtts = ds.rtts_to(t, others.tolist())
        if extra_delay is not None and rtts:
            keys = list(rtts)
            added = extra_delay(np.array([rtts[k] for k in keys]))
            rtts = {k: float(v) for k, v in zip(keys, added)}
        for name in methods:
            records.append(
                _one(ds, t, name, model, rtts, countries, truth_codes[t], bool(consistent[t]))
            )
        done += 1
        if progress:
            progress(done, total)
    full = fit_arrays(ds.ids, lat, lon, ds.rtt_min, km=km)  # only to report who vetting flags
    for r in records:
        r.vetted_out = r.target in full.excluded
    return Evaluation(
        dataset=ds.name,
        records=records,
        methods=list(methods),
        landmarks_per_target=landmarks_per_target,
        seed=seed,
        seconds=time.perf_counter() - start,
        temperatures=[temps[f] for f in sorted(temps)],
        vetted=full.excluded,
        inconsistent_targets=[ds.ids[i] for i in np.flatnonzero(~consistent)],
        unmeasured=[ds.ids[i] for i in np.flatnonzero(~measured)],
    )


def _one(
    ds: Dataset,
    t: int,
    name: str,
    model: Any,
    rtts: dict[str, float],
    countries: CountryLookup,
    truth: str | None,
    consistent: bool,
) -> Record:
    s = ds.servers[t]
    t0 = time.perf_counter()
    try:
        fix = method(name)(model, rtts, countries)
    except GeoprobeError:
        return Record(
            s.id,
            name,
            s.lat,
            s.lon,
            None,
            None,
            None,
            None,
            None,
            None,
            0.0,
            False,
            (time.perf_counter() - t0) * 1000,
            truth,
            consistent,
        )
    ms = (time.perf_counter() - t0) * 1000
    region = fix.sound_region if fix.sound_region is not None else fix.region
    return Record(
        target=s.id,
        method=name,
        true_lat=s.lat,
        true_lon=s.lon,
        est_lat=fix.lat,
        est_lon=fix.lon,
        error_km=float(haversine_km(fix.lat, fix.lon, s.lat, s.lon)),
        region_km2=region.area_km2 if region is not None else None,
        truth_in_region=region.contains(s.lat, s.lon) if region is not None else None,
        country=fix.country,
        probability=fix.probability,
        certified=fix.certified is not None,
        solve_ms=ms,
        true_country=truth,
        consistent=consistent,
        certified_as=fix.certified,
    )
