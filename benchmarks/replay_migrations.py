"""Replay live migrations between WonderProxy servers through the real watch logic.

Each run places the VM at server A, builds the baseline (warm-up rounds), watches a few quiet
rounds, then (unless stationary) moves it to server B and watches until the state machine confirms
or ``--rounds`` pass. Every round draws, for every landmark, ``--samples`` RTTs from the pair's
statistics (min + a gamma-distributed queueing delay with the pair's avg - min as mean and mdev as
standard deviation) and keeps their minimum, as the prober does. The real ``ShiftTest``, ``Fusion``
and ``Jurisdiction`` run on them; fixes come from the engine (``geoprobe.geo.solver``).

Calibration is fitted once per world: servers are split into ``--folds`` folds, and runs whose
endpoints lie in one fold use the other folds as landmarks (so a VM never measures itself and the
model never saw its RTT profile).

VM positions: servers with a country that the calibration's vetting accepts, less those whose
labelled place lies outside the sound region of their own floor RTTs (faster than light from
there: hosted elsewhere than their label says; the script names them).

Kinds of run: ``stationary`` (no move), ``same-country`` (A and B in one country), ``cross-border``
(different countries; reported separately above and below 500 km). The allowed set is A's country.

Time: rounds start every ``--interval`` (``--fast`` while suspicious) and take ``--round-s``; a
moved fingerprint is re-measured as soon as its round is over, as the daemon does. Seconds to
confirmation run from the move (uniform within the interval before the round that sees it) to the
end of the confirming round.

Targets (one PASS/MISS line each, per basis; the exit status follows ``--basis``):

* cross-border moves over 500 km whose migration is confirmed (a ``migration.confirmed`` event,
  whatever its ``crossing``) >= 0.99;
* of those moves whose crossing the sound rule *can* prove -- the sound region of B's noise-free
  floor RTTs leaves A's country -- the share confirmed with ``crossing: true`` >= 0.99. The rest
  cannot be proven by any watch that keeps the rule that a confirmed crossing needs the sound
  region to leave the allowed set (WonderProxy paths run at about half the speed of light in
  fibre), so they end ``crossing: null`` and the policy's ``unknown`` verdict applies;
* stationary runs with a false confirmation <= 0.001.

Usage: python benchmarks/replay_migrations.py [--dataset DIR] [--moves 1200] [--stationary 2000]
       [--basis sound|calibrated] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoprobe.datasets import Dataset, load_dataset
from geoprobe.geo.calibration import Model, fit_arrays
from geoprobe.geo.countries import default_index
from geoprobe.geo.fix import Fix
from geoprobe.geo.solver import solve_model
from geoprobe.geo.sphere import haversine_km
from geoprobe.watch.fusion import Fusion, Observation, State
from geoprobe.watch.jurisdiction import Jurisdiction
from geoprobe.watch.shift import Baseline, ShiftTest

DEFAULT_DATASET = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wonderproxy-pings-2020-07"
)


@dataclass
class World:
    """One fold: the landmarks (everything outside it) and their calibration."""

    lm: np.ndarray  # dataset indices of the landmarks
    ids: list[str]
    model: Model


BASES = ("sound", "calibrated")


@dataclass
class RunResult:
    kind: str
    basis: str
    a: str
    b: str
    km: float
    suspected: bool
    confirmed: bool = False
    crossing: bool | None = False  # None: unknown (RTTs only rose, or the region still straddles)
    rule: str | None = None
    rounds: int | None = None  # rounds after the move until confirmation
    seconds: float | None = None
    to: str | None = None
    # Whether the sound rule can prove this crossing at all: the sound region of B's noise-free
    # floor RTTs leaves A's country. No watch that keeps the sound rule can do better.
    provable: bool | None = None


class Noise:
    """Per-pair queueing delay: gamma with mean avg - min and sd mdev (exponential when unknown)."""

    def __init__(self, ds: Dataset) -> None:
        mn, avg, sd = ds.rtt_min, ds.rtt_avg, ds.rtt_mdev
        # Use the lower-RTT direction's statistics, as the dataset's rtts_to does.
        use_t = np.fmin(mn, mn.T) == mn.T
        self.min = np.fmin(mn, mn.T)
        mean = np.where(use_t, avg.T - mn.T, avg - mn)
        sdev = np.where(use_t, sd.T, sd)
        mean = np.where(
            np.isfinite(mean) & (mean > 1e-3), mean, 0.05 + 0.01 * np.nan_to_num(self.min)
        )
        sdev = np.where(np.isfinite(sdev) & (sdev > 1e-3), sdev, mean)
        self.shape = np.clip((mean / sdev) ** 2, 0.05, 50.0)
        self.scale = mean / self.shape

    def round(self, vm: int, lm: np.ndarray, rng: np.random.Generator, samples: int) -> np.ndarray:
        k, th = self.shape[vm, lm], self.scale[vm, lm]
        q = rng.gamma(k[None, :].repeat(samples, 0), th[None, :].repeat(samples, 0))
        return np.asarray(self.min[vm, lm] + q.min(axis=0), dtype=float)


class Replay:
    def __init__(
        self,
        ds: Dataset,
        *,
        folds: int,
        seed: int,
        samples: int,
        warmup: int,
        quiet_rounds: int,
        rounds: int,
        stationary_rounds: int,
        interval: float,
        fast: float,
        round_s: float,
        min_probability: float,
    ) -> None:
        self.ds = ds
        self.rng = np.random.default_rng(seed)
        self.noise = Noise(ds)
        self.countries = default_index()
        self.samples, self.warmup, self.quiet_rounds, self.rounds = (
            samples,
            warmup,
            quiet_rounds,
            rounds,
        )
        self.stationary_rounds = stationary_rounds
        self.interval, self.fast, self.round_s = interval, fast, round_s
        self.min_probability = min_probability
        self.test = ShiftTest()
        n = len(ds)
        order = self.rng.permutation(n)
        self.fold_of = np.empty(n, dtype=int)
        self.worlds: list[World] = []
        for f in range(folds):
            self.fold_of[order[f::folds]] = f
        for f in range(folds):
            lm = np.flatnonzero(self.fold_of != f)
            ids = [ds.servers[i].id for i in lm]
            model = fit_arrays(ids, ds.lats[lm], ds.lons[lm], ds.rtt_min[np.ix_(lm, lm)])
            self.worlds.append(World(lm, ids, model))
        # VM positions: servers with a country whose location the engine's vetting accepts.
        liars: set[str] = set()
        for w in self.worlds:
            liars |= set(w.model.excluded)
        vetted = [i for i, s in enumerate(ds.servers) if s.country and s.id not in liars]
        # A VM position whose labelled place lies outside the sound region of its own floor RTTs is
        # faster than light from there: the label is wrong (the server is hosted elsewhere), so
        # "A's country" would not be where the VM is. Such positions test the data, not the watch.
        self.impossible = [ds.servers[i].name for i in vetted if not self._physical(i)]
        self.candidates = [i for i in vetted if ds.servers[i].name not in self.impossible]

    def _floor_fix(self, vm: int, w: World) -> Fix:
        """The fix from ``vm``'s floor RTTs (no queueing at all) to world ``w``'s landmarks."""
        floor = self.noise.min[vm, w.lm]
        fix: Fix = self.solver(w)({lid: float(v) for lid, v in zip(w.ids, floor) if np.isfinite(v)})
        return fix

    def _physical(self, i: int) -> bool:
        fix = self._floor_fix(i, self.worlds[self.fold_of[i]])
        s = self.ds.servers[i]
        return fix.sound_region is None or fix.sound_region.contains(s.lat, s.lon)

    def solver(self, w: World) -> Any:
        lat, lon = self.ds.lats[w.lm], self.ds.lons[w.lm]

        def solve(rtts: Mapping[str, float]) -> Fix:
            return solve_model(w.model, w.ids, lat, lon, rtts, self.countries)

        return solve

    def provable(self, a: int, b: int) -> bool:
        """Does the sound region of B's floor RTTs (no queueing at all) leave A's country?"""
        fix = self._floor_fix(b, self.worlds[self.fold_of[a]])
        judge = Jurisdiction.of([self.ds.servers[a].country or ""]).judge(fix)
        return judge.verdict == "outside" and judge.rule in ("sound", "certified")

    def measure(self, vm: int, w: World) -> dict[str, float]:
        r = self.noise.round(vm, w.lm, self.rng, self.samples)
        return {lid: float(v) for lid, v in zip(w.ids, r) if np.isfinite(v)}

    def run(self, kind: str, a: int, b: int | None) -> list[RunResult]:
        """One run, watched by one state machine per basis on the same measurements."""
        w = self.worlds[self.fold_of[a]]
        solve = self.solver(w)
        sa = self.ds.servers[a]
        sb = self.ds.servers[b] if b is not None else sa
        fusions = {
            basis: Fusion(
                Jurisdiction.of(
                    [sa.country or ""],
                    basis=basis,  # type: ignore[arg-type]
                    min_probability=self.min_probability,
                )
            )
            for basis in BASES
        }
        base = Baseline()
        for _ in range(self.warmup):
            base.add(self.measure(a, w))
        base.fix = solve(self.measure(a, w))
        for f in fusions.values():
            f.rebaseline(base.fix)
        quiet = self.quiet_rounds if b is not None else self.stationary_rounds
        results: dict[str, RunResult] = {}
        km = self._km(a, b)
        suspected: dict[str, bool] = {k: False for k in BASES}
        t, moved_at, after, at_once = 0.0, None, 0, False
        for k in range(quiet + (self.rounds if b is not None else 0)):
            lead = fusions["sound"]
            if b is not None and k == quiet:
                # The move happens at a uniformly random time within the interval before this round.
                moved_at = t - float(self.rng.uniform(0, self.fast if lead.fast else self.interval))
            at = b if moved_at is not None and b is not None else a
            rtts = self.measure(at, w)
            shift = self.test.assess(base, rtts, solve=solve)
            after += moved_at is not None
            for basis, f in fusions.items():
                if basis in results:
                    continue
                for tr in f.step(Observation(shift, shift.fix, (), t)):
                    suspected[basis] |= tr.to == State.SUSPECT
                    if tr.to == State.CONFIRMED:
                        results[basis] = RunResult(
                            kind,
                            basis,
                            sa.name,
                            sb.name,
                            km,
                            suspected[basis],
                            confirmed=True,
                            crossing=tr.data["crossing"],
                            rule=tr.data["jurisdiction"]["rule"],
                            rounds=after if moved_at is not None else None,
                            seconds=(t + self.round_s - moved_at) if moved_at is not None else None,
                            to=tr.data["to"],
                        )
            if len(results) == len(BASES):
                break
            if shift.outcome == "not_moved" and lead.state == State.NORMAL:
                base.add(rtts)
            # As the daemon (WatchConfig.remeasure_at_once): a moved fingerprint is re-measured as
            # soon as the round is over; otherwise rounds start every (fast) interval.
            at_once = (
                not at_once
                and shift.outcome == "moved"
                and lead.state in (State.SUSPECT, State.CONFIRMING)
            )
            t += max(self.round_s, 0.0 if at_once else self.fast if lead.fast else self.interval)
        for basis in BASES:
            if basis not in results:
                results[basis] = RunResult(kind, basis, sa.name, sb.name, km, suspected[basis])
        if b is not None and kind.startswith("cross-border"):
            provable = self.provable(a, b)
            for r in results.values():
                r.provable = provable
        return [results[k] for k in BASES]

    def _km(self, a: int, b: int | None) -> float:
        if b is None:
            return 0.0
        s, u = self.ds.servers[a], self.ds.servers[b]
        return float(haversine_km(s.lat, s.lon, u.lat, u.lon))

    def pairs(self, kind: str, count: int) -> list[tuple[int, int]]:
        """Random (A, B) in one fold: same country, or different countries (> 500 km for 'far')."""
        cands = self.candidates
        out: list[tuple[int, int]] = []
        tries = 0
        while len(out) < count and tries < count * 2000:
            tries += 1
            a, b = (int(x) for x in self.rng.choice(cands, 2, replace=False))
            if self.fold_of[a] != self.fold_of[b]:
                continue
            same = self.ds.servers[a].country == self.ds.servers[b].country
            km = self._km(a, b)
            if (
                kind == "same-country"
                and same
                or kind == "cross-border-far"
                and not same
                and km > 500
                or kind == "cross-border-near"
                and not same
                and km <= 500
            ):
                out.append((a, b))
        return out


def rate(n: int, d: int) -> str:
    return f"{n}/{d} = {n / d:.4f}" if d else "n/a"


def summarise(results: list[RunResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for basis in BASES:
        for kind in ("stationary", "same-country", "cross-border-near", "cross-border-far"):
            rs = [r for r in results if r.kind == kind and r.basis == basis]
            if not rs:
                continue
            conf = [r for r in rs if r.confirmed]
            cross = [r for r in conf if r.crossing]
            provable = [r for r in rs if r.provable]
            unknown = [r for r in conf if r.crossing is None]
            rounds = [r.rounds for r in cross if r.rounds is not None]
            secs = [r.seconds for r in cross if r.seconds is not None]
            rules: dict[str, int] = {}
            for r in cross:
                rules[r.rule or "?"] = rules.get(r.rule or "?", 0) + 1
            out.setdefault(basis, {})[kind] = {
                "runs": len(rs),
                "suspected": len([r for r in rs if r.suspected]),
                "confirmed": len(conf),
                "confirmed_crossing": len(cross),
                "confirmed_unknown": len(unknown),
                "confirmed_false": len([r for r in conf if r.crossing is False]),
                "provable": len(provable),
                "provable_confirmed_crossing": len(
                    [r for r in provable if r.confirmed and r.crossing]
                ),
                "crossing_rules": rules,
                "rounds_to_confirm_median": float(np.median(rounds)) if rounds else None,
                "rounds_to_confirm_p95": float(np.percentile(rounds, 95)) if rounds else None,
                "seconds_to_confirm_median": float(np.median(secs)) if secs else None,
                "seconds_to_confirm_p95": float(np.percentile(secs, 95)) if secs else None,
            }
    return out


def report(s: dict[str, Any], basis: str) -> None:
    k = s.get(basis, {})
    far, st, same, near = (
        k.get(x, {})
        for x in ("cross-border-far", "stationary", "same-country", "cross-border-near")
    )
    print(f"basis={basis}:")
    if far:
        print(
            f"  cross-border > 500 km: migration confirmed {rate(far['confirmed'], far['runs'])} "
            f"(target >= 0.99): crossing true {far['confirmed_crossing']} (by rule "
            f"{far['crossing_rules']}), unknown (null) {far['confirmed_unknown']}, "
            f"false {far['confirmed_false']}"
        )
        print(
            f"    sound rule can prove the crossing from B's floor RTTs: "
            f"{rate(far['provable'], far['runs'])}; of those confirmed as crossing: "
            f"{rate(far['provable_confirmed_crossing'], far['provable'])}"
        )
        if far["rounds_to_confirm_median"] is not None:
            print(
                f"    rounds after the move to confirmation: median {far['rounds_to_confirm_median']:g}, "
                f"p95 {far['rounds_to_confirm_p95']:g}; "
                f"seconds: median {far['seconds_to_confirm_median']:.1f}, "
                f"p95 {far['seconds_to_confirm_p95']:.1f}"
            )
    if near:
        print(
            "  cross-border <= 500 km confirmed as crossing: "
            f"{rate(near['confirmed_crossing'], near['runs'])}; "
            f"move confirmed at all: {rate(near['confirmed'], near['runs'])}"
        )
    if same:
        print(
            f"  same-country moves: confirmed {rate(same['confirmed'], same['runs'])}; "
            f"wrongly called a crossing: {rate(same['confirmed_crossing'], same['runs'])}"
        )
    if st:
        print(
            f"  stationary: false confirmation {rate(st['confirmed'], st['runs'])} (target <= 0.001); "
            f"false crossing {rate(st['confirmed_crossing'], st['runs'])}; "
            f"false suspicion {rate(st['suspected'], st['runs'])}"
        )


def verdicts(s: dict[str, Any], basis: str) -> list[tuple[str, bool, str]]:
    """The two targets for one basis: (name, passed, figure)."""
    k = s.get(basis, {})
    out = []
    far, st = k.get("cross-border-far"), k.get("stationary")
    if far and far["runs"]:
        r = far["confirmed"] / far["runs"]
        out.append(("cross-border > 500 km migration confirmed >= 0.99", r >= 0.99, f"{r:.4f}"))
    if far and far["provable"]:
        r = far["provable_confirmed_crossing"] / far["provable"]
        out.append(
            (
                "cross-border > 500 km that the sound rule can prove, confirmed as crossing >= 0.99",
                r >= 0.99,
                f"{r:.4f}",
            )
        )
    if st and st["runs"]:
        r = st["confirmed"] / st["runs"]
        out.append(("stationary false confirmation <= 0.001", r <= 0.001, f"{r:.4f}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--moves", type=int, default=1200, help="cross-border moves over 500 km")
    ap.add_argument("--near", type=int, default=300, help="cross-border moves up to 500 km")
    ap.add_argument("--same", type=int, default=300, help="same-country moves")
    ap.add_argument("--stationary", type=int, default=2000)
    ap.add_argument("--min-probability", type=float, default=0.9, help="as the policy default")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quiet-rounds", type=int, default=5, help="rounds before the move")
    ap.add_argument("--stationary-rounds", type=int, default=30, help="rounds of a stationary run")
    ap.add_argument("--rounds", type=int, default=8, help="rounds after the move")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--fast", type=float, default=2.5)
    ap.add_argument("--round-s", type=float, default=0.5, help="time one probe round takes (s)")
    ap.add_argument(
        "--basis",
        choices=BASES,
        default="sound",
        help="the basis whose targets set the exit status (both are always reported)",
    )
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not args.dataset.exists():
        print(f"dataset not found: {args.dataset}", file=sys.stderr)
        return 3
    t0 = time.monotonic()
    ds = load_dataset(args.dataset)
    rp = Replay(
        ds,
        folds=args.folds,
        seed=args.seed,
        samples=args.samples,
        warmup=args.warmup,
        quiet_rounds=args.quiet_rounds,
        rounds=args.rounds,
        stationary_rounds=args.stationary_rounds,
        interval=args.interval,
        fast=args.fast,
        round_s=args.round_s,
        min_probability=args.min_probability,
    )
    print(
        f"{len(ds)} servers, {len(rp.candidates)} usable as VM positions, {args.folds} worlds "
        f"fitted in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )
    if rp.impossible:
        print(
            f"left out as VM positions (labelled place outside their own speed-of-light region): "
            f"{', '.join(rp.impossible)}"
        )
    results: list[RunResult] = []
    plan = [
        ("cross-border-far", args.moves),
        ("cross-border-near", args.near),
        ("same-country", args.same),
    ]
    for kind, count in plan:
        t1 = time.monotonic()
        for a, b in rp.pairs(kind, count):
            results.extend(rp.run(kind, a, b))
        print(f"  {kind}: {count} runs in {time.monotonic() - t1:.1f} s", file=sys.stderr)
    t1 = time.monotonic()
    for a in rp.rng.choice(rp.candidates, args.stationary, replace=True):
        results.extend(rp.run("stationary", int(a), None))
    print(f"  stationary: {args.stationary} runs in {time.monotonic() - t1:.1f} s", file=sys.stderr)
    s = summarise(results)
    n_moves = sum(1 for r in results if r.kind != "stationary") // len(BASES)
    print(
        f"\nreplay of {n_moves} migrations + {args.stationary} stationary runs of {args.stationary_rounds} "
        f"rounds (interval {args.interval:g} s, fast {args.fast:g} s, {args.samples} samples per landmark)"
    )
    for basis in BASES:
        report(s, basis)
    print(f"  total {time.monotonic() - t0:.1f} s")
    ok = True
    for basis in BASES:
        for name, passed, figure in verdicts(s, basis):
            print(f"{'PASS' if passed else 'MISS'}  basis={basis}: {name}: {figure}")
            ok &= passed or basis != args.basis
    if args.json:
        args.json.write_text(
            json.dumps({"summary": s, "runs": [r.__dict__ for r in results]}, indent=1)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
