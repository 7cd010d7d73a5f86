"""The lab's analysis: QMP's timeline against the guest's events, on a hand-made run record."""

from __future__ import annotations

import datetime as dt
import json

from benchmarks.lab.__main__ import targets
from benchmarks.lab.report import analyse, markdown, summarise
from benchmarks.lab.scenarios import CONFIRMED, SUSPECTED, RunPlan, RunRecord, guest_catalogue
from benchmarks.lab.sites import Place

A = Place("Frankfurt", "DE", 50.1167, 8.6833)
B = Place("Madrid", "ES", 40.4, -3.6833)


def _ev(name: str, t: float, **data: object) -> dict[str, object]:
    return {"event": name, "data": data, "qemu_time": t, "received": t}


def _cloud(type_: str, **data: object) -> str:
    return json.dumps({"specversion": "1.0", "type": type_, "data": data})


def record(confirm_at: float | None, suspect_at: float | None = None) -> RunRecord:
    rec = RunRecord(
        plan=RunPlan("cross", A, B),
        program="geoprobe",
        started=1000.0,
        guest_ready=1060.0,
        migrate_cmd=1075.0,
        ended=1130.0,
    )
    rec.src_events = [
        _ev("MIGRATION", 1075.0, status="setup"),
        _ev("MIGRATION", 1075.01, status="active"),
        _ev("STOP", 1077.0),
        _ev("MIGRATION", 1077.05, status="completed"),
    ]
    rec.dst_events = [_ev("RESUME", 1077.08), _ev("MIGRATION", 1077.08, status="completed")]
    rec.samples = [
        {
            "t": 1076.0,
            "status": "active",
            "ram": {
                "dirty-pages-rate": 2560,
                "page-size": 4096,
                "mbps": 1080.0,
                "dirty-sync-count": 2,
            },
        },
        {
            "t": 1077.1,
            "status": "completed",
            "cpu-throttle-percentage": 20,
            "ram": {"dirty-sync-count": 3},
        },
    ]
    rec.final = {
        "status": "completed",
        "total-time": 2050,
        "downtime": 48,
        "setup-time": 4,
        "ram": {"dirty-sync-count": 3, "transferred": 120_000_000},
    }
    rec.console = [(1010.0, "LAB-READY uptime=4.2"), (1060.0, _cloud("io.geoprobe.location.fix"))]
    if suspect_at is not None:
        rec.console.append((suspect_at, _cloud(SUSPECTED)))
    if confirm_at is not None:
        rec.console += [
            (confirm_at, _cloud(CONFIRMED, crossing=True, to="ES", distance_km=1300.0)),
            (confirm_at + 0.5, "LAB-HOOK 90.1 {}"),
        ]
        rec.webhooks = [
            {"site": "B", "received": confirm_at + 0.8, "path": "/geoprobe", "body": "{}"}
        ]
    return rec


def test_times_are_measured_from_the_source_stop_and_precopy_flags_are_found() -> None:
    row = analyse(record(confirm_at=1081.0, suspect_at=1076.5))
    m = row["migration"]
    assert m["guest_pause_ms"] == 80.0  # STOP at the source to RESUME at the destination
    assert (
        m["qemu_downtime_ms"] == 48
        and m["dirty_sync_count"] == 3
        and m["max_cpu_throttle_pct"] == 20
    )
    assert m["max_dirty_rate_mb_s"] == round(2560 * 4096 / 1e6, 1)
    assert m["median_bandwidth_mb_s"] == 135.0
    assert row["switchover_to_confirmed_s"] == 4.0
    assert [f["type"] for f in row["flagged_during_precopy"]] == [
        SUSPECTED
    ]  # 1076.5 is before STOP
    assert row["confirmation"]["crossing"] is True and row["confirmation"]["to"] == "ES"
    assert [w["site"] for w in row["webhooks"]] == ["B"] and len(row["hooks"]) == 1
    assert row["boot_to_ready_s"] == 60.0


def test_targets_report_what_was_missed() -> None:
    good, slow, silent = (analyse(record(t, suspect_at=1076.5)) for t in (1080.0, 1090.0, None))
    assert targets(summarise([good, good])) == []
    missed = targets(summarise([good, slow, slow]))
    assert len(missed) == 1 and "median switchover->confirmed 13.0 s" in missed[0]
    assert targets(summarise([good, slow, slow]), timing=False) == []
    missed = targets(summarise([good, silent]), timing=False)
    assert any("1/2 crossings confirmed" in m for m in missed) and any(
        "counter-measures" in m for m in missed
    )
    no_crossing = record(1080.0, suspect_at=1076.5)
    no_crossing.console[-2] = (1080.0, _cloud(CONFIRMED, crossing=False, to="DE"))
    missed = targets(summarise([good, analyse(no_crossing)]), timing=False)
    assert any("1/2 crossings confirmed in the guest (2 migrations confirmed)" in m for m in missed)
    text = markdown(summarise([good, silent]), [good, silent], {"mode": "smoke"})
    assert "| cross | 2 | 0 | 0 | 2 |" in text and "crossing=True None→ES" in text
    assert "| 1 (1 placed in B's country) |" in text  # the confirmation said ES, B is Madrid (ES)


def test_guest_catalogue_keeps_landmarks_both_sites_serve_nearest_first() -> None:
    def lm(id_: str, lat: float, lon: float) -> dict[str, object]:
        return {"id": id_, "lat": lat, "lon": lon}

    cat_a = {
        "landmarks": [
            lm("Madrid", 40.4, -3.7),
            lm("Paris", 48.9, 2.3),
            lm("Tokyo", 35.7, 139.7),
            lm("Vienna", 48.2, 16.4),
            lm("Lyon", 45.8, 4.8),
        ],
        "calibration": {"rtts": [["Paris", "Lyon", 6.0], ["Paris", "Vienna", 20.0]]},
    }
    cat_b = {
        "landmarks": [
            lm("Frankfurt", 50.1, 8.7),
            lm("Paris", 48.9, 2.3),
            lm("Tokyo", 35.7, 139.7),
            lm("Vienna", 48.2, 16.4),
            lm("Lyon", 45.8, 4.8),
        ]
    }
    out = guest_catalogue(cat_a, cat_b, 2, exclude={"Frankfurt", "Madrid"}, near=A)
    assert sorted(x["id"] for x in out["landmarks"]) == [
        "Lyon",
        "Paris",
    ]  # 560 and 480 km; Vienna 600
    assert out["calibration"]["rtts"] == [["Paris", "Lyon", 6.0]]
    every = guest_catalogue(cat_a, cat_b, 0, exclude={"Frankfurt", "Madrid"}, near=A)
    assert len(every["landmarks"]) == 4  # Madrid is not served at B


def _at(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def test_console_spread_and_geoprobes_own_account_of_the_confirmation() -> None:
    rec = record(confirm_at=1080.0, suspect_at=1078.5)
    # The guest clock runs 0.7 s behind the host; the console delivers within 30 ms.
    fixes = [
        (
            1040.0 + k,
            json.dumps(
                {
                    "specversion": "1.0",
                    "type": "io.geoprobe.location.fix",
                    "time": _at(1040.0 + k - 0.7 - 0.03 * (k % 2)),
                }
            ),
        )
        for k in range(4)
    ]
    rec.console = fixes + [
        (
            1080.0,
            json.dumps(
                {
                    "specversion": "1.0",
                    "type": CONFIRMED,
                    "data": {
                        "crossing": True,
                        "from": "DE",
                        "to": "ES",
                        "rounds": 2,
                        "seconds": 1.4,
                    },
                }
            ),
        )
    ]
    row = analyse(rec)
    assert row["console_clock_spread_ms"] == 30.0
    assert row["confirm_rounds"] == 2 and row["confirm_seconds_in_guest"] == 1.4
    assert row["switchover_to_confirmed_s"] == 3.0


def test_verdicts_name_a_straddling_region_and_the_clock_probe() -> None:
    rec = record(confirm_at=1080.0)
    rec.console[-2] = (1080.0, _cloud(CONFIRMED, crossing=False, to=None, **{"from": "DE"}))
    straddle = analyse(rec)
    clock = RunRecord(
        plan=RunPlan("delay-off", A, B), program="clock", started=1000.0, ended=1100.0
    )
    clock.src_events = [_ev("STOP", 1050.0)]
    clock.console = [(1050.4, json.dumps({"lab": "clock", "event": "site", "site": "B"}))]
    clock_row = analyse(clock)
    assert (
        clock_row["switchover_to_confirmed_s"] == 0.4
        and clock_row["confirmation"]["crossing"] is None
    )
    text = markdown(summarise([straddle, clock_row]), [straddle, clock_row], {"mode": "full"})
    assert "crossing=False DE→straddling" in text
    assert "site B answered (clock probe)" in text and "measure QEMU's convergence" in text


def _control(kind: str, suspect_at: float | None = None, dirty: float = 2.0) -> RunRecord:
    rec = RunRecord(
        plan=RunPlan(kind, A, B, migrate=False, workload=kind.partition("-")[2]),
        program="geoprobe",
        started=1000.0,
        guest_ready=1060.0,
        ended=1420.0,
    )
    rec.console = [(1060.0, _cloud("io.geoprobe.location.fix"))]
    if suspect_at is not None:
        rec.console.append((suspect_at, _cloud(SUSPECTED, signals=["first_write"])))
    rec.host = {
        "schedstat": [],
        "dirty_rates": [{"t": 1070.0 + i, "vm": "src", "mb_s": dirty} for i in range(3)],
    }
    return rec


def test_controls_count_hours_and_suspicions_per_kind_and_bound_the_probe_dirty_rate() -> None:
    rows = [analyse(_control("control")), analyse(_control("control-cpu", suspect_at=1200.0))]
    summary = summarise(rows)
    assert summary["control"]["observed_hours"] == 0.1  # 360 s from ready to the end
    assert summary["control"]["max_run_median_dirty_rate_mb_s"] == 2.0
    assert summary["control-cpu"]["suspected_events"] == 1
    missed = targets(summary)
    assert missed == ["control-cpu: 1 of 1 runs suspected, 0 confirmed"]
    assert rows[1]["suspicions"][0]["before_switchover"] is None  # nothing migrated
    noisy = [analyse(_control("control", dirty=12.0))]
    assert any("dirtied 12 MB/s" in m and "whole guest" in m for m in targets(summarise(noisy)))
    bare = _control("bare", dirty=4.0)
    missed = targets(summarise([*noisy, analyse(bare)]))
    assert missed == []  # 12 - 4: geoprobe's own 8 MB/s is within the bound
    missed = targets(summarise([*noisy, analyse(_control("bare", dirty=1.0))]))
    assert missed == [
        (
            "control: geoprobe dirtied 11 MB/s (QMP calc-dirty-rate, idle controls less the bare "
            "guest) > 10 MB/s"
        )
    ]


def test_precopy_target_counts_suspected_before_the_switchover_over_every_cross_kind() -> None:
    early = record(1080.0, suspect_at=1076.5)  # migration set up at 1075, STOP at 1077
    late = record(1080.0, suspect_at=1078.0)
    busy = record(1080.0, suspect_at=1076.0)
    busy.plan = RunPlan("cross-mem", A, B, workload="mem")
    rows = [analyse(r) for r in (early, late, busy)]
    assert (
        rows[0]["suspected_before_switchover"] and rows[0]["migration_start_to_suspected_s"] == 1.5
    )
    assert rows[1]["suspected_before_switchover"] is False
    missed = targets(summarise(rows))
    assert missed == ["cross: suspected before the switchover in 2/3 runs (< 90%)"]
    assert targets(summarise(rows), precopy=False) == []
    assert targets(summarise([rows[0], rows[2]])) == []


def test_every_suspicion_carries_the_host_side() -> None:
    rec = record(1080.0, suspect_at=1076.5)
    rec.host = {
        "schedstat": [
            {"t": 1075.5, "vm": "src", "tid": 7, "run_ns": 0, "wait_ns": 0},
            {"t": 1076.5, "vm": "src", "tid": 7, "run_ns": 0, "wait_ns": 300_000_000},
        ],
        "dirty_rates": [],
    }
    rec.console += [
        (1075.4, "LAB-VMSTAT 70.00 pgfault=100 nr_dirtied=10 nr_free_pages=5"),
        (1076.4, "LAB-VMSTAT 71.00 pgfault=180 nr_dirtied=10 nr_free_pages=3"),
    ]
    rec.console.sort(key=lambda x: x[0])
    row = analyse(rec)
    (s,) = row["suspicions"]
    assert s["before_switchover"] is True and s["t_from_migration_start_s"] == 1.5
    assert s["vcpu_wait_ms_per_s_last_1s"] == 300.0
    assert s["migration"]["dirty_sync_count"] == 2 and s["migration"]["status"] == "active"
    assert s["vmstat_delta"] == {"pgfault": 80, "nr_dirtied": 0, "over_s": 1.0}
    assert row["vcpu_wait_ms_per_s"] == {"median": 300.0, "max": 300.0}
    rec.host["schedstat"] += [  # a 1.5 s preemption is counted when the thread runs again
        {"t": 1077.0, "vm": "src", "tid": 7, "run_ns": 0, "wait_ns": 300_000_000},
        {"t": 1078.0, "vm": "src", "tid": 7, "run_ns": 0, "wait_ns": 1_800_000_000},
    ]
    assert analyse(rec)["vcpu_wait_ms_per_s"] == {"median": 650.0, "max": 1000.0}
    text = markdown(summarise([row]), [row], {"mode": "full"})
    assert "pgfault=80" in text and "| 1/1 |" in text


def test_hold_runs_miss_their_target_when_the_migration_converges_during_the_hold() -> None:
    rec = record(None)
    rec.plan = RunPlan("delay-xbzrle", A, B, capabilities={"xbzrle": True})
    rec.program = "clock"
    rec.console += [(1070.0, "LAB-DELAY-START"), (1130.0, "LAB-DELAY-END rc=0")]
    row = analyse(rec)
    assert row["migration"]["converged_while_delay_ran"] is True
    assert targets(summarise([row])) == [
        "delay-xbzrle: the migration converged while the delay ran"
    ]
