"""The emulated world: which dataset servers are landmarks, where the VM stands, and its path
delays.

The landmark set is fixed when the world is made; moving the VM only swaps the delay row, so a
catalogue written at start stays valid after any number of moves (as in a real cloud, where the
landmarks stay put and the VM goes).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoprobe.datasets import Dataset, Server
from geoprobe.errors import InputError
from geoprobe.testbed.delays import SAME_SITE_MS, DistanceModel, PathDelay, fit_distance_model


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the emulated VM stands: at a dataset server (its measured row) or anywhere (the
    model)."""

    lat: float
    lon: float
    server: Server | None = None

    @property
    def label(self) -> str:
        if self.server is not None:
            return f"{self.server.name} ({self.server.country or '??'})"
        return f"{self.lat:.4f},{self.lon:.4f}"

    def to_json(self) -> dict[str, object]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "server": self.server.name if self.server else None,
            "country": self.server.country if self.server else None,
        }


def landmark_ids(dataset: Dataset) -> list[str]:
    """Catalogue ids for the servers: their names when those are unique (readable), else their
    ids."""
    names = [s.name for s in dataset.servers]
    ok = len(set(names)) == len(names) and all(0 < len(n.encode()) <= 128 for n in names)
    return names if ok else dataset.ids


def choose_landmarks(
    dataset: Dataset, *, exclude: int | None = None, count: int | None = None, seed: int = 0
) -> list[int]:
    """Dataset indices of the landmarks: every server but the VM's own, or ``count`` drawn with
    ``seed``."""
    pool = [i for i in range(len(dataset)) if i != exclude]
    if count is not None and count < len(pool):
        if count < 1:
            raise InputError(f"need at least 1 landmark, got {count}", field="landmarks")
        pool = sorted(random.Random(seed).sample(pool, count))
    return pool


class World:
    """Landmarks drawn from a dataset, and the VM's current delays to each of them."""

    def __init__(
        self, dataset: Dataset, landmarks: Sequence[int], *, seed: int = 0, jitter: bool = True
    ) -> None:
        if not landmarks:
            raise InputError("the world has no landmarks", field="landmarks")
        self.dataset = dataset
        self.indices = list(landmarks)
        all_ids = landmark_ids(dataset)
        self.ids = [all_ids[i] for i in self.indices]
        self.jitter = jitter
        self.rng = random.Random(seed)
        self._model: DistanceModel | None = None
        self.placement: Placement | None = None
        self.delays: list[PathDelay] = []

    @property
    def servers(self) -> list[Server]:
        return [self.dataset.servers[i] for i in self.indices]

    @property
    def model(self) -> DistanceModel:
        """Fitted on first use: only ``--at LAT,LON`` and pairs missing from the dataset need it."""
        if self._model is None:
            d = self.dataset
            self._model = fit_distance_model(d.lats, d.lons, d.rtt_min, d.rtt_avg, d.rtt_mdev)
        return self._model

    def place_at_server(self, name_or_id: str) -> Placement:
        server = self.dataset.find(name_or_id)
        s = self.dataset.index[server.id]
        d = self.dataset
        predicted: list[PathDelay] | None = None
        delays: list[PathDelay] = []
        for j in self.indices:
            if j == s:  # the VM moved into a landmark's data centre
                diag = d.rtt_min[s, s]
                floor = max(float(diag), SAME_SITE_MS) if math.isfinite(diag) else SAME_SITE_MS
                delays.append(PathDelay(floor, 0.02, 0.02))
                continue
            # The lower of both directions is the pair's RTT; keep that direction's avg and mdev.
            a, b = d.rtt_min[s, j], d.rtt_min[j, s]
            src, dst = (s, j) if not math.isfinite(b) or (math.isfinite(a) and a <= b) else (j, s)
            rmin = d.rtt_min[src, dst]
            if math.isfinite(rmin):
                delays.append(
                    PathDelay.from_stats(
                        float(rmin), float(d.rtt_avg[src, dst]), float(d.rtt_mdev[src, dst])
                    )
                )
            else:
                if predicted is None:
                    predicted = self.model.predict(server.lat, server.lon)
                delays.append(predicted[j])
        self.delays = delays
        self.placement = Placement(server.lat, server.lon, server)
        return self.placement

    def place_at(self, lat: float, lon: float) -> Placement:
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise InputError(f"not a position on Earth: {lat},{lon}", field="at")
        predicted = self.model.predict(lat, lon)
        self.delays = [predicted[j] for j in self.indices]
        self.placement = Placement(lat, lon, None)
        return self.placement

    def place(self, spec: str) -> Placement:
        """``LAT,LON`` places the VM anywhere; anything else names a server."""
        pos = parse_position(spec)
        return self.place_at(*pos) if pos is not None else self.place_at_server(spec)

    def sample_ms(self, k: int) -> float:
        """One RTT sample to landmark ``k`` (an index into ``self.ids``), in ms."""
        if not self.delays:
            raise RuntimeError("the VM has not been placed yet")
        path = self.delays[k]
        return path.sample(self.rng) if self.jitter else path.min_ms

    def delay_source(self, k: int) -> Callable[[], float]:
        """What a responder calls per request: seconds to hold the reply. Reads the current row,
        so a move takes effect at the next request without touching the responders."""
        return lambda: self.sample_ms(k) / 1000.0

    def injected_min_ms(self) -> dict[str, float]:
        """The floor of each path now: the RTT a perfect prober would measure as its minimum."""
        return {lid: p.min_ms for lid, p in zip(self.ids, self.delays)}

    def calibration_rtts(self) -> list[tuple[str, str, float]]:
        """Landmark<->landmark minimum RTTs (each pair once, the lower direction)."""
        idx = np.asarray(self.indices)
        sub = self.dataset.rtt_min[np.ix_(idx, idx)]
        sym = np.fmin(sub, sub.T)
        out: list[tuple[str, str, float]] = []
        n = len(idx)
        for a in range(n):
            for b in range(a + 1, n):
                r = sym[a, b]
                if math.isfinite(r):
                    out.append((self.ids[a], self.ids[b], round(float(r), 4)))
        return out


def parse_position(spec: str) -> tuple[float, float] | None:
    """``"50.11,8.68"`` -> (50.11, 8.68); None when ``spec`` is not two numbers."""
    parts = spec.split(",")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None
