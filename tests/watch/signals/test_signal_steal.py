"""Steal time: parsed from a /proc/stat-shaped file, scored against its history, never decisive."""

from __future__ import annotations

from pathlib import Path

from geoprobe.watch.signals.steal import StealSignal, read_cpu_times


def _write(p: Path, steal: int, total_other: int) -> None:
    p.write_text(f"cpu  {total_other} 0 0 0 0 0 0 {steal} 5 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n")


def test_real_proc_stat_parses() -> None:
    steal, total = read_cpu_times()
    assert 0 <= steal <= total and total > 0
    r = StealSignal().sample()
    assert r.available and not r.decisive


def test_a_burst_of_steal_is_anomalous_but_weak(tmp_path: Path) -> None:
    p = tmp_path / "stat"
    sig = StealSignal(path=p)
    steal, other = 0, 0
    readings = []
    for i in range(12):
        steal += 1 if i % 2 else 0
        other += 100
        _write(p, steal, other)
        readings.append(sig.sample())
    assert readings[0].value is None  # needs two samples
    assert not any(r.anomalous for r in readings)
    assert readings[-1].value is not None and readings[-1].value < 2
    steal += 40
    other += 60
    _write(p, steal, other)
    r = sig.sample()
    assert r.anomalous and r.value == 40.0 and not r.decisive and "never decisive" in r.reason


def test_missing_or_malformed_stat_is_unavailable(tmp_path: Path) -> None:
    r = StealSignal(path=tmp_path / "nope").sample()
    assert not r.available and "nope" in r.reason
    p = tmp_path / "stat"
    p.write_text("cpu  1 2 3 4\n")
    assert "no steal column" in StealSignal(path=p).sample().reason
    p.write_text("intr 1\n")
    assert not StealSignal(path=p).sample().available
