"""The watch's metrics over real rounds: last-round values, up cleared on exit, the endpoint."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import FRANKFURT, World, catalogue

from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement
from geoprobe.watch.daemon import WatchConfig, Watcher
from geoprobe.watch.jurisdiction import Jurisdiction

__all__ = ["catalogue"]  # the module-scoped fixture, shared with the daemon tests


def values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def watcher(cat: Catalogue, world: World, tmp: Path, **kw: object) -> Watcher:
    from geoprobe.locate import locate_from_catalogue

    return Watcher(
        cat,
        Jurisdiction.of(["DE"]),
        measure=world.measure,
        solve=lambda rtts: locate_from_catalogue(cat, rtts),
        emit=lambda ev: None,
        config=WatchConfig(interval_s=0.01, warmup_rounds=2, fix_every=50),
        **kw,  # type: ignore[arg-type]
    )


def test_fix_gauges_are_this_rounds_and_up_is_cleared_on_exit(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    prom = tmp_path / "geoprobe.prom"
    world = World(FRANKFURT, seed=5)
    seen: list[dict[str, float]] = []

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        if prom.exists():
            seen.append(values(prom.read_text()))
        ms = world.measure(landmarks)
        ms[0].rejected = {"bad signature": 2}  # one forged reply per round, refused by the prober
        return ms

    w = watcher(catalogue, world, tmp_path, metrics_path=prom)
    w.measure = measure
    w.run(threading.Event(), max_rounds=6)
    final = values(prom.read_text())
    # Written after every round: the first reading is after round 1, and so on.
    assert [v["geoprobe_watch_rounds_total"] for v in seen] == [1, 2, 3, 4, 5]
    for n, v in enumerate(seen, start=1):
        assert v["geoprobe_up"] == 1
        # Every round has a fix of its own (quiet rounds solve none, fix_every=50): no lag.
        assert abs(v["geoprobe_fix_latitude_degrees"] - FRANKFURT[0]) < 2
        assert v['geoprobe_rejected_replies_total{reason="bad signature"}'] == 2 * n
    assert final["geoprobe_up"] == 0  # the watch has exited
    assert final["geoprobe_watch_rounds_total"] == 6
    assert final["geoprobe_last_round_timestamp_seconds"] > 1.7e9


def test_a_crash_clears_up_too(catalogue: Catalogue, tmp_path: Path) -> None:
    prom = tmp_path / "geoprobe.prom"
    world = World(FRANKFURT, seed=6)
    rounds = iter(range(100))

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        if next(rounds) == 3:
            raise RuntimeError("a bug in a round")
        return world.measure(landmarks)

    w = watcher(catalogue, world, tmp_path, metrics_path=prom)
    w.measure = measure
    with pytest.raises(RuntimeError):
        w.run(threading.Event())
    v = values(prom.read_text())
    assert v["geoprobe_up"] == 0 and v["geoprobe_watch_rounds_total"] == 3


def test_scrape_endpoint_while_the_watch_runs(catalogue: Catalogue, tmp_path: Path) -> None:
    world = World(FRANKFURT, seed=7)
    w = watcher(catalogue, world, tmp_path, metrics_listen=("127.0.0.1", 0))
    assert w.metrics is not None and w.metrics.address is not None
    host, port = w.metrics.address
    scraped: list[dict[str, float]] = []

    def measure(landmarks: Sequence[Landmark]) -> list[Measurement]:
        if w.counters.rounds == 2:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
                scraped.append(values(resp.read().decode()))
        return world.measure(landmarks)

    w.measure = measure
    w.run(threading.Event(), max_rounds=3)
    assert scraped[0]["geoprobe_up"] == 1 and scraped[0]["geoprobe_watch_rounds_total"] == 2
    with pytest.raises(OSError):  # stopped with the watch
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)
