"""Which landmarks to probe: a few spread over the world, then the ones near the first fix.

A synced RIPE Atlas catalogue has ~800 landmarks; probing all of them costs time and packets, and
the ones that decide a fix are the few near the VM (soft ranging uses the lowest RTTs; far caps
rarely cut the region). Coarse-to-fine finds those few: a spread first round bounds the VM to a
region, and the second round probes the landmarks nearest the estimate from the first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from geoprobe.geo.sphere import EARTH_RADIUS_KM, to_xyz

FArray = npt.NDArray[np.float64]

#: Probed by default; ``locate --all-landmarks`` probes the whole catalogue.
DEFAULT_LIMIT = 50
#: The first round: enough spread landmarks to bound any VM to a continent.
COARSE = 12

Fix1 = Callable[[Mapping[str, float]], tuple[float, float]]


def spread(lat: FArray, lon: FArray, k: int) -> list[int]:
    """``k`` indices spread over the landmarks (farthest-point order from the most central one)."""
    n = len(lat)
    if n == 0 or k <= 0:
        return []
    xyz = to_xyz(lat, lon).reshape(-1, 3)
    centre = xyz.mean(axis=0)
    first = int(np.argmax(xyz @ centre)) if np.linalg.norm(centre) > 1e-9 else 0
    chosen = [first]
    near = xyz @ xyz[first]
    while len(chosen) < min(k, n):
        j = int(np.argmin(near))
        chosen.append(j)
        near = np.maximum(near, xyz @ xyz[j])
    return chosen


def nearest(lat: FArray, lon: FArray, at: tuple[float, float], skip: set[int], k: int) -> list[int]:
    """The ``k`` landmarks nearest ``at`` (lat, lon), leaving out ``skip``."""
    d = np.arccos(np.clip(to_xyz(lat, lon).reshape(-1, 3) @ to_xyz(*at), -1.0, 1.0))
    order = [int(i) for i in np.argsort(d * EARTH_RADIUS_KM) if int(i) not in skip]
    return order[:k]


def coarse_to_fine(
    ids: Sequence[str],
    lat: FArray,
    lon: FArray,
    probe: Callable[[list[int]], Mapping[str, float]],
    first_fix: Fix1,
    *,
    limit: int = DEFAULT_LIMIT,
    coarse: int = COARSE,
) -> dict[str, float]:
    """Probe ``coarse`` spread landmarks, fix, then probe the nearest to that fix up to ``limit``.

    ``probe(indices)`` measures those landmarks and returns id -> minimum RTT for the ones that
    answered; ``first_fix(rtts)`` locates from a partial set. Landmarks that did not answer in the
    coarse round are replaced by the next spread ones, so a dead landmark costs no coverage.
    """
    n = len(ids)
    if n <= limit:
        return dict(probe(list(range(n))))
    rtts: dict[str, float] = {}
    tried: set[int] = set()
    order = spread(lat, lon, n)
    pos = 0
    while len(rtts) < coarse and pos < n and len(tried) < 2 * coarse:
        batch = order[pos : pos + coarse - len(rtts)]
        pos += len(batch)
        tried.update(batch)
        rtts.update(probe(batch))
    if not rtts:
        return rtts
    at = first_fix(rtts)
    fine = nearest(lat, lon, at, tried, max(limit - len(tried), 0))
    # Half the budget first; then re-fix and spend the rest near the better fix.
    half = fine[: max(len(fine) // 2, 1)]
    tried.update(half)
    rtts.update(probe(half))
    at = first_fix(rtts)
    rest = nearest(lat, lon, at, tried, max(limit - len(tried), 0))
    tried.update(rest)
    rtts.update(probe(rest))
    return rtts
