"""The merged timeline of one run, counted from the switchover (the source's STOP)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.lab.scenarios import CONFIRMED, SUSPECTED, RunPlan, RunRecord
from benchmarks.lab.sites import Place
from benchmarks.lab.timeline import lines, main

A = Place("Frankfurt", "DE", 50.1167, 8.6833)
B = Place("Madrid", "ES", 40.4, -3.6833)


def _qmp(name: str, t: float, **data: object) -> dict[str, object]:
    return {"event": name, "data": data, "qemu_time": t, "received": t}


def _record_json(confirm_at: float) -> dict[str, object]:
    rec = RunRecord(
        plan=RunPlan("cross", A, B), program="geoprobe", started=1000.0, guest_ready=1060.0
    )
    rec.src_events = [
        _qmp("MIGRATION", 1075.0, status="setup"),
        _qmp("STOP", 1077.0),
        _qmp("MIGRATION", 1077.05, status="completed"),
    ]
    rec.dst_events = [_qmp("RESUME", 1077.08)]
    cloud = {"specversion": "1.0", "type": CONFIRMED, "data": {"crossing": True, "to": "ES"}}
    rec.console = [
        (1010.0, "LAB-READY uptime=4.2"),
        (1077.9, "geoprobe watch: INFO: normal -> suspect: 40 of 88 landmarks changed"),
        (1078.0, json.dumps({"specversion": "1.0", "type": SUSPECTED, "data": {}})),
        (confirm_at, json.dumps(cloud)),
    ]
    return json.loads(json.dumps(rec.to_json()))


def test_lines_are_ordered_and_relative_to_the_stop() -> None:
    out = list(lines(_record_json(1080.5), start=-1.0, end=4.0))
    times = [t for t, _ in out]
    assert times == sorted(times)
    assert (0.0, "QMP src STOP") in out
    assert any(abs(t - 0.08) < 1e-6 and s == "QMP dst RESUME" for t, s in out)
    assert any(
        abs(t - 3.5) < 1e-6 and s.startswith("guest confirmed None→ES crossing=True")
        for t, s in out
    )
    assert any(s.startswith("console geoprobe watch: INFO: normal -> suspect") for _, s in out)
    assert all(-1.0 <= t <= 4.0 for t in times)  # the setup at -2 s and the boot are left out


def test_cli_reads_a_kept_run_directory(tmp_path: Path, capsys: object) -> None:
    (tmp_path / "record.json").write_text(json.dumps(_record_json(1081.0)))
    assert main([str(tmp_path), "--from", "0", "--to", "5"]) == 0
    text = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "+0.000  QMP src STOP" in text and "+4.000  guest confirmed" in text
    assert main([str(tmp_path / "missing")]) == 2


def test_the_timeline_shows_dirty_syncs_and_vcpu_run_delay() -> None:
    record = {
        "src_events": [{"event": "STOP", "data": {}, "qemu_time": 100.0, "received": 100.0}],
        "dst_events": [],
        "samples": [
            {"t": 99.0, "status": "active", "ram": {"dirty-sync-count": 1}},
            {"t": 99.1, "status": "active", "ram": {"dirty-sync-count": 1}},
            {"t": 99.5, "status": "active", "ram": {"dirty-sync-count": 2, "remaining": 4e6}},
        ],
        "host": {
            "schedstat": [
                {"t": 98.0, "vm": "src", "tid": 3, "run_ns": 0, "wait_ns": 0},
                {"t": 98.5, "vm": "src", "tid": 3, "run_ns": 0, "wait_ns": 10_000_000},
                {"t": 99.0, "vm": "src", "tid": 3, "run_ns": 0, "wait_ns": 210_000_000},
            ]
        },
        "console": [(99.2, "LAB-VMSTAT 9.00 pgfault=1")],
        "guest_ready": 50.0,
        "started": 40.0,
        "plan": {"settle_s": 10.0},
    }
    out = list(lines(record))
    texts = [t for _, t in out]
    assert sum("dirty sync" in t for t in texts) == 2  # one line per new sync, not per sample
    assert any("dirty sync 2" in t and "remaining 4.0 MB" in t for t in texts)
    assert [t for t in texts if "vCPU" in t] == ["host src vCPU waited 200 ms in 0.50 s"]
    assert not any("LAB-VMSTAT" in t for t in texts)
    assert any("LAB-VMSTAT" in t for _, t in lines(record, vmstat=True))
