"""``geoprobe demo``: offline, built-in world, real probes over loopback, the real engine."""

from __future__ import annotations

import io
import json

import numpy as np

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.geo.sphere import SOUND_KM_PER_MS, haversine_km
from geoprobe.testbed.builtin import builtin_dataset


def test_builtin_world_is_physical_and_complete() -> None:
    ds = builtin_dataset()
    assert len(ds) >= 100 and all(s.country and len(s.country) == 2 for s in ds.servers)
    km = np.asarray(
        haversine_km(ds.lats[:, None], ds.lons[:, None], ds.lats[None, :], ds.lons[None, :])
    )
    off = ~np.eye(len(ds), dtype=bool)
    assert np.all(ds.rtt_min[off] >= km[off] / SOUND_KM_PER_MS)  # nothing beats light in fibre
    assert np.allclose(ds.rtt_min[off], ds.rtt_min.T[off])
    assert builtin_dataset().rtt_min[1, 2] == ds.rtt_min[1, 2]  # the same world on every machine


def test_demo_locates_the_vm_in_the_builtin_world() -> None:
    out = io.StringIO()
    code = main(
        ["demo", "--landmarks", "40", "--format", "json"],
        env=Environment(stdout=out, stderr=io.StringIO()),
    )
    assert code == 0
    rec = json.loads(out.getvalue())
    truth = rec["demo_truth"]
    assert truth["server"] == "Frankfurt" and truth["country"] == "DE"
    assert len(rec["measurements"]) == 40 and not rec["failures"]
    assert truth["estimate_error_km"] < 500
    assert rec["countries"][0]["code"] == "DE"


def test_demo_table_names_the_truth() -> None:
    out = io.StringIO()
    code = main(
        ["demo", "--at-server", "Tokyo", "--landmarks", "30"],
        env=Environment(stdout=out, stderr=io.StringIO()),
    )
    assert code == 0
    text = out.getvalue()
    assert "the VM stands at Tokyo (JP)" in text and "truth: Tokyo (JP)" in text
