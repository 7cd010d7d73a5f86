"""The interface the watch daemon consumes: every signal is a Signal, and its Readings are JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from geoprobe.watch.cloud import CloudNotices, GceMaintenance
from geoprobe.watch.signals import BackgroundSignal, Reading, Signal
from geoprobe.watch.signals.base import robust_center_scale, robust_z
from geoprobe.watch.signals.clock import ClockSignal, NtpClockSignal
from geoprobe.watch.signals.fingerprint import FingerprintSignal
from geoprobe.watch.signals.gaps import GapSignal
from geoprobe.watch.signals.steal import StealSignal
from geoprobe.watch.signals.writes import WriteLatencySignal


def test_every_signal_meets_the_protocol_and_reads_as_json(tmp_path: Path) -> None:
    clock = ClockSignal()
    clock.add({"a": 1.0, "b": 2.0, "c": 3.0})
    signals: list[Signal] = [
        clock,
        NtpClockSignal([]),
        StealSignal(),
        FingerprintSignal(root=tmp_path),
        CloudNotices([GceMaintenance("http://127.0.0.1:9", timeout=0.5)]),  # discard port: refused
        GapSignal(),
        WriteLatencySignal(),
    ]
    for s in signals:
        assert isinstance(s, Signal)
        r = s.sample()
        assert isinstance(r, Reading) and r.name == s.name and r.decisive == s.decisive
        assert r.available or r.reason  # unavailable always says why
        json.dumps(r.to_json())
    assert isinstance(GapSignal(), BackgroundSignal) and isinstance(
        WriteLatencySignal(), BackgroundSignal
    )
    assert not isinstance(StealSignal(), BackgroundSignal)
    assert not StealSignal().decisive


def test_robust_statistics_ignore_an_outlier() -> None:
    med, scale = robust_center_scale([10.0, 10.5, 9.5, 10.2, 9.8, 1000.0])
    assert 9.5 < med < 10.5 and scale < 1.0
    z, _, _ = robust_z(20.0, [10.0, 10.5, 9.5, 10.2, 9.8, 1000.0], floor=0.1)
    assert z > 10
    assert math.isnan(robust_center_scale([])[0])
    with pytest.raises(TypeError):
        Reading()  # type: ignore[call-arg]
