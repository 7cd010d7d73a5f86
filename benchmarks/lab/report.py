"""Turn run records into the lab's findings: per-run figures, per-kind summaries, JSON and Markdown.

Times on both sides are host wall-clock seconds: QMP events carry QEMU's own timestamp, console
lines the time the host read them (polled every 20-50 ms, so guest-side times are late by at most
that). The guest's own clock is never used for the figures (it starts from the RTC's whole second
and steps by the pause at each migration); it only checks the console: host read time minus the
guest's event time must be a constant per run, and its spread (``console_clock_spread_ms``) bounds
how late the console delivered.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .console import ConsoleLine
from .scenarios import CONFIRMED, SUSPECTED, RunRecord
from .workloads import parse_vmstat


def _first(events: Sequence[dict[str, Any]], name: str, **match: Any) -> float | None:
    for e in events:
        if e["event"] == name and all(e["data"].get(k) == v for k, v in match.items()):
            return float(e["qemu_time"])
    return None


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 1)


# Kernel messages that mean the guest's memory or a device's state did not survive the migration.
GUEST_FAULTS = ("BUG:", "Oops", "Kernel panic", "is not a head", "general protection", "LAB-PANIC")


def guest_events(rec: RunRecord) -> list[tuple[float, dict[str, Any]]]:
    return [(t, ev) for t, text in rec.console if (ev := ConsoleLine(t, text).event()) is not None]


def _guest_time(ev: dict[str, Any]) -> float | None:
    t = ev.get("time")
    if not isinstance(t, str):
        return None
    try:
        return dt.datetime.fromisoformat(t).timestamp()  # 3.11 reads the trailing Z
    except ValueError:
        return None


def console_spread_ms(
    evs: Sequence[tuple[float, dict[str, Any]]], until: float | None
) -> float | None:
    """Spread of (host read time - guest event time) over the events before `until` (the
    switchover).

    The guest clock is off the host's by a constant (its RTC's whole second), so a spread of a few
    tens of milliseconds says the console delivered every event that promptly.
    """
    lags = [
        t - g for t, e in evs if (g := _guest_time(e)) is not None and (until is None or t < until)
    ]
    return round((max(lags) - min(lags)) * 1000.0, 1) if len(lags) >= 2 else None


def vcpu_wait_ms_per_s(
    schedstat: Sequence[dict[str, Any]], vm: str, t0: float, t1: float
) -> float | None:
    """Run delay of `vm`'s vCPU threads over [t0, t1], in ms per second: the time the host kept a
    runnable vCPU off every CPU (TCG gives the guest no steal time, so only the host sees it)."""
    per_tid: dict[int, list[dict[str, Any]]] = {}
    for x in schedstat:
        if x["vm"] == vm and t0 - 0.3 <= x["t"] <= t1 + 0.01:
            per_tid.setdefault(int(x["tid"]), []).append(x)
    rates = []
    for xs in per_tid.values():
        xs.sort(key=lambda x: float(x["t"]))
        if len(xs) >= 2 and xs[-1]["t"] > xs[0]["t"]:
            rate = (xs[-1]["wait_ns"] - xs[0]["wait_ns"]) / 1e6 / (xs[-1]["t"] - xs[0]["t"])
            rates.append(min(rate, 1000.0))
    return round(max(rates), 1) if rates else None


# schedstat adds a wait when the thread next runs, so a long preemption lands whole in the window
# where it ended: windows of at least a second, capped at the window's length.
WAIT_WINDOW_S = 1.0


def _wait_profile(schedstat: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Median and maximum vCPU run delay (ms/s) over windows of >= 1 s of each thread."""
    start: dict[tuple[str, int], dict[str, Any]] = {}
    rates = []
    for x in sorted(schedstat, key=lambda x: float(x["t"])):
        key = (str(x["vm"]), int(x["tid"]))
        prev = start.get(key)
        if prev is None:
            start[key] = x
        elif x["t"] - prev["t"] >= WAIT_WINDOW_S:
            rate = (x["wait_ns"] - prev["wait_ns"]) / 1e6 / (x["t"] - prev["t"])
            rates.append(min(rate, 1000.0))
            start[key] = x
    if not rates:
        return None
    return {"median": round(statistics.median(rates), 1), "max": round(max(rates), 1)}


def _vmstat_delta(console: Sequence[tuple[float, str]], t: float) -> dict[str, int | float] | None:
    """Change of the guest's /proc/vmstat over the last logged second before host time `t`."""
    logged = [(tt, v) for tt, text in console if tt <= t + 0.05 and (v := parse_vmstat(text))]
    if len(logged) < 2:
        return None
    (_, a), (_, b) = logged[-2], logged[-1]
    out: dict[str, int | float] = {
        k: b[k] - a[k] for k in b if k in a and k not in ("uptime_cs", "nr_free_pages")
    }
    out["over_s"] = round((b["uptime_cs"] - a["uptime_cs"]) / 100.0, 2)
    return out


def _migration_at(samples: Sequence[dict[str, Any]], t: float) -> dict[str, Any] | None:
    """QMP's query-migrate sample last taken before host time `t`."""
    before = [x for x in samples if x.get("t", 0.0) <= t]
    if not before:
        return None
    x = before[-1]
    ram = x.get("ram", {})
    return {
        "status": x.get("status"),
        "dirty_sync_count": ram.get("dirty-sync-count"),
        "dirty_rate_mb_s": round(
            ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096) / 1e6, 1
        ),
        "remaining_mb": round(ram.get("remaining", 0) / 1e6, 1),
    }


def suspicions(rec: RunRecord, t_start: float | None, t_stop: float | None) -> list[dict[str, Any]]:
    """The host's side of each `suspected`: what QEMU and the scheduler were doing just before."""
    sched = rec.host.get("schedstat", []) if rec.host else []
    out = []
    for t, ev in [(t, e) for t, e in guest_events(rec) if e.get("type") == SUSPECTED][:10]:
        vm = "dst" if t_stop is not None and t > t_stop else "src"
        out.append(
            {
                "t_from_migration_start_s": None if t_start is None else round(t - t_start, 2),
                "before_switchover": None
                if t_start is None
                else (t >= t_start and (t_stop is None or t < t_stop)),
                "signals": (ev.get("data") or {}).get("signals"),
                "vcpu_wait_ms_per_s_last_1s": vcpu_wait_ms_per_s(sched, vm, t - 1.0, t),
                "migration": _migration_at(rec.samples, t),
                "vmstat_delta": _vmstat_delta(rec.console, t),
            }
        )
    return out


def analyse(rec: RunRecord) -> dict[str, Any]:
    """The figures of one run; every time is relative to the run's start unless it says
    otherwise."""
    p = rec.plan
    src, dst = rec.src_events, rec.dst_events
    t_setup = _first(src, "MIGRATION", status="setup")
    t_active = _first(src, "MIGRATION", status="active")
    t_stop = _first(src, "STOP")  # the switchover: the source pauses for the last copy
    t_resume = _first(dst, "RESUME")  # the guest runs again, now at site B
    t_done = _first(src, "MIGRATION", status="completed")
    # the migration starts when QEMU enters setup (the migrate command, if QMP said nothing)
    t_start = t_setup if t_setup is not None else rec.migrate_cmd
    evs = guest_events(rec)
    suspected = [(t, e) for t, e in evs if e.get("type") == SUSPECTED]
    confirmed = [(t, e) for t, e in evs if e.get("type") == CONFIRMED]
    clock_b = [
        t
        for t, e in evs
        if e.get("lab") == "clock" and e.get("event") == "site" and e.get("site") == "B"
    ]
    if rec.program == "clock" and not confirmed:
        # The development probe cannot judge borders: "confirmed" means site B answered it.
        confirmed = [
            (t, {"type": CONFIRMED, "data": {"crossing": None, "signals": ["site"]}})
            for t in clock_b[:1]
        ]
    steps = [e.get("step_ms") for _, e in evs if e.get("event") == "offset_step"]
    hooks = [(t, text) for t, text in rec.console if text.startswith("LAB-HOOK")]
    delay_start = next((t for t, x in rec.console if x.startswith("LAB-DELAY-START")), None)
    delay_end = next((t for t, x in rec.console if x.startswith("LAB-DELAY-END")), None)
    precopy_end = t_stop if t_stop is not None else (rec.ended if t_active else None)
    flagged_precopy = [
        {"type": e.get("type"), "t_after_start_ms": _ms(t_active, t)}
        for t, e in suspected + confirmed
        if t_active is not None and precopy_end is not None and t_active <= t <= precopy_end
    ]
    first_confirmed = confirmed[0] if confirmed else None
    crossing = None
    if first_confirmed is not None:
        data = first_confirmed[1].get("data", {})
        crossing = {
            "crossing": data.get("crossing"),
            "from": data.get("from"),
            "to": data.get("to"),
            "distance_km": data.get("distance_km"),
            "signals": data.get("signals"),
        }
    host = rec.host or {}
    rates = [float(x["mb_s"]) for x in host.get("dirty_rates", []) if x.get("mb_s") is not None]
    early = [
        t
        for t, _ in suspected
        if t_start is not None and t >= t_start and (t_stop is None or t < t_stop)
    ]
    observed_until = rec.ended if t_stop is None else t_stop
    samples = rec.samples
    ram = [s.get("ram", {}) for s in samples]
    dirty_rates = [r.get("dirty-pages-rate", 0) * r.get("page-size", 4096) for r in ram]
    mbps = [r.get("mbps", 0.0) for r in ram if r.get("mbps")]
    final = rec.final
    out: dict[str, Any] = {
        "kind": p.kind,
        "program": rec.program,
        "error": rec.error,
        "a": f"{p.a.server} ({p.a.country})",
        "b": f"{p.b.server} ({p.b.country})",
        "b_country": p.b.country,
        "migrated": p.migrate,
        "auto_converge": p.auto_converge,
        "parameters": p.parameters,
        "boot_to_ready_s": None
        if rec.guest_ready is None
        else round(rec.guest_ready - rec.started, 1),
        "migration": None,
        "suspected": len(suspected),
        "confirmed": len(confirmed),
        "first_suspected_vs_switchover_ms": _ms(t_stop, suspected[0][0]) if suspected else None,
        "workload": p.workload,
        "capabilities": p.capabilities,
        # seconds the watch was running without a migration (the controls' denominator)
        "observed_s": None
        if rec.guest_ready is None
        else round(max(0.0, observed_until - rec.guest_ready), 1),
        "suspected_before_switchover": None if t_start is None else bool(early),
        "migration_start_to_suspected_s": (
            round(early[0] - t_start, 2) if early and t_start is not None else None
        ),
        "suspicions": suspicions(rec, t_start, t_stop),
        "vcpu_wait_ms_per_s": _wait_profile(host.get("schedstat", [])),
        # calc-dirty-rate while nothing migrates: the guest's own dirtying (idle: geoprobe's)
        "guest_dirty_rate_mb_s": None
        if not rates
        else {
            "median": statistics.median(rates),
            "max": max(rates),
            "samples": len(rates),
        },
        "switchover_to_suspected_s": (
            None if not suspected or t_stop is None else round(suspected[0][0] - t_stop, 2)
        ),
        # geoprobe's own account: moved measurements it used, and seconds from the suspecting round
        "confirm_rounds": (
            first_confirmed[1].get("data", {}).get("rounds")
            if first_confirmed is not None
            else None
        ),
        "confirm_seconds_in_guest": (
            first_confirmed[1].get("data", {}).get("seconds")
            if first_confirmed is not None
            else None
        ),
        "console_clock_spread_ms": console_spread_ms(evs, t_stop),
        "flagged_during_precopy": flagged_precopy,
        "confirmation": crossing,
        "switchover_to_confirmed_s": (
            None
            if first_confirmed is None or t_stop is None
            else round(first_confirmed[0] - t_stop, 2)
        ),
        "switchover_to_site_b_s": (
            None if not clock_b or t_stop is None else round(clock_b[0] - t_stop, 2)
        ),
        "guest_offset_steps_ms": steps,
        "hooks": [
            {
                "t_after_switchover_s": None if t_stop is None else round(t - t_stop, 2),
                "line": text[:300],
            }
            for t, text in hooks
        ],
        "webhooks": [
            {
                "site": w["site"],
                "t_after_switchover_s": None
                if t_stop is None
                else round(w["received"] - t_stop, 2),
            }
            for w in rec.webhooks
        ],
        "delay": None
        if delay_start is None
        else {
            "started_s": round(delay_start - rec.started, 1),
            "ended_s": None if delay_end is None else round(delay_end - rec.started, 1),
        },
        "guest_faults": [
            text[:200] for _, text in rec.console if any(f in text for f in GUEST_FAULTS)
        ],
        "run_seconds": round(rec.ended - rec.started, 1),
    }
    if p.migrate:
        converged_during_delay = None
        if delay_start is not None and t_done is not None:
            converged_during_delay = delay_end is None or t_done < delay_end
        out["migration"] = {
            "status": final.get("status"),
            "total_time_ms": final.get("total-time"),
            "qemu_downtime_ms": final.get("downtime"),
            "setup_time_ms": final.get("setup-time"),
            "guest_pause_ms": _ms(t_stop, t_resume),  # STOP at source to RESUME at destination
            "dirty_sync_count": final.get("ram", {}).get(
                "dirty-sync-count", (ram[-1] if ram else {}).get("dirty-sync-count")
            ),
            "transferred_mb": round(final.get("ram", {}).get("transferred", 0) / 1e6, 1),
            "max_dirty_rate_mb_s": round(max(dirty_rates, default=0) / 1e6, 1),
            "median_bandwidth_mb_s": round(statistics.median(mbps) / 8, 1) if mbps else None,
            "max_cpu_throttle_pct": max(
                (s.get("cpu-throttle-percentage", 0) for s in samples), default=0
            ),
            "timeline_s": {
                "migrate_cmd": _rel(rec.migrate_cmd, rec.started),
                "setup": _rel(t_setup, rec.started),
                "active": _rel(t_active, rec.started),
                "switchover": _rel(t_stop, rec.started),
                "resume": _rel(t_resume, rec.started),
                "completed": _rel(t_done, rec.started),
            },
            "converged_while_delay_ran": converged_during_delay,
            # with -device vmgenid: did the destination give the guest a new generation ID?
            "vmgenid_changed": None
            if not (g := host.get("vmgenid"))
            else g.get("src") != g.get("dst"),
            # a failover pair (--preset failover): QEMU waits for the guest to release the primary
            "wait_unplug_s": None
            if (t_wu := _first(src, "MIGRATION", status="wait-unplug")) is None or t_active is None
            else round(t_active - t_wu, 2),
            "wait_unplug": _first(src, "MIGRATION", status="wait-unplug") is not None,
            "unplug_primary_s": None
            if t_start is None or (t_up := _first(src, "UNPLUG_PRIMARY")) is None
            else round(t_up - t_start, 3),
        }
    return out


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _verdict(r: dict[str, Any]) -> str:
    c = r["confirmation"]
    if not c:
        return "suspected" if r["suspected"] else "none"
    if (
        r["program"] == "clock"
    ):  # the lab's clock probe judges no border: it says where it is answered
        return "site B answered (clock probe)"
    to = c.get("to") or "straddling"  # no single country: the region still covers a border
    return f"crossing={c.get('crossing')} {c.get('from')}→{to}"


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of run, the figures the lab's targets are about."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    out: dict[str, Any] = {}
    for kind, rs in by_kind.items():
        conf = [
            r["switchover_to_confirmed_s"] for r in rs if r["switchover_to_confirmed_s"] is not None
        ]
        migs = [r["migration"] for r in rs if r["migration"]]
        s: dict[str, Any] = {
            "runs": len(rs),
            "errors": sum(1 for r in rs if r["error"]),
            "with_suspected": sum(1 for r in rs if r["suspected"]),
            "with_confirmed": sum(1 for r in rs if r["confirmed"]),
            "confirmed_crossing": sum(1 for r in rs if (r["confirmation"] or {}).get("crossing")),
            # a crossing can be proven while the region still sits between A and B (a round cut by
            # the switchover): the verdict is right, the place is not B's country
            "confirmed_in_b_country": sum(
                1
                for r in rs
                if (r["confirmation"] or {}).get("to")
                and r["confirmation"]["to"] == r.get("b_country")
            ),
            "flagged_during_precopy": sum(1 for r in rs if r["flagged_during_precopy"]),
            "countermeasures_fired": sum(1 for r in rs if r["hooks"] or r["webhooks"]),
            "guest_faults": sum(1 for r in rs if r["guest_faults"]),
            "median_switchover_to_confirmed_s": statistics.median(conf) if conf else None,
            "median_switchover_to_suspected_s": _median(
                [r.get("switchover_to_suspected_s") for r in rs]
            ),
            "max_switchover_to_confirmed_s": max(conf) if conf else None,
            "suspected_before_switchover": sum(
                1 for r in rs if r.get("suspected_before_switchover")
            ),
            "median_migration_start_to_suspected_s": _median(
                [r.get("migration_start_to_suspected_s") for r in rs]
            ),
            "suspected_events": sum(r["suspected"] for r in rs),
            "observed_hours": round(sum(r.get("observed_s") or 0.0 for r in rs) / 3600.0, 3),
            "max_run_median_dirty_rate_mb_s": max(
                (
                    r["guest_dirty_rate_mb_s"]["median"]
                    for r in rs
                    if r.get("guest_dirty_rate_mb_s")
                ),
                default=None,
            ),
            "min_run_median_dirty_rate_mb_s": min(
                (
                    r["guest_dirty_rate_mb_s"]["median"]
                    for r in rs
                    if r.get("guest_dirty_rate_mb_s")
                ),
                default=None,
            ),
            "max_dirty_rate_sample_mb_s": max(
                (r["guest_dirty_rate_mb_s"]["max"] for r in rs if r.get("guest_dirty_rate_mb_s")),
                default=None,
            ),
            "max_vcpu_wait_ms_per_s": max(
                (r["vcpu_wait_ms_per_s"]["max"] for r in rs if r.get("vcpu_wait_ms_per_s")),
                default=None,
            ),
        }
        if migs:

            def med(key: str, migs: list[dict[str, Any]] = migs) -> float | None:
                vals = [m[key] for m in migs if m.get(key) is not None]
                return statistics.median(vals) if vals else None

            s.update(
                {
                    "migrations_completed": sum(1 for m in migs if m["status"] == "completed"),
                    "median_total_time_ms": med("total_time_ms"),
                    "median_qemu_downtime_ms": med("qemu_downtime_ms"),
                    "median_guest_pause_ms": med("guest_pause_ms"),
                    "median_dirty_syncs": med("dirty_sync_count"),
                    "max_dirty_rate_mb_s": max(
                        (m["max_dirty_rate_mb_s"] for m in migs), default=None
                    ),
                    "median_bandwidth_mb_s": med("median_bandwidth_mb_s"),
                    "max_cpu_throttle_pct": max(
                        (m["max_cpu_throttle_pct"] for m in migs), default=None
                    ),
                    "converged_while_delay_ran": [
                        m["converged_while_delay_ran"]
                        for m in migs
                        if m["converged_while_delay_ran"] is not None
                    ],
                }
            )
        out[kind] = s
    return out


def markdown(summary: dict[str, Any], rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# geoprobe live-migration lab ({meta.get('mode')}, {meta.get('program')})",
        "",
        (
            f"Host: QEMU {meta.get('qemu')}, accel {meta.get('accel')}, guest {meta.get('memory_mb')} MiB; "
            f"started {meta.get('started_utc')}, took {meta.get('seconds')} s."
        ),
        "",
        (
            f"Guest command: `{meta.get('guest_command')}`, {meta.get('guest_landmarks')} landmarks; "
            f"geoprobe snapshot {meta.get('geoprobe_snapshot')}."
        ),
        "",
        (
            "| kind | runs | errors | guest faults | migrations completed | suspected | confirmed | crossing | "
            "flagged in pre-copy | counter-measures | median (max) switchover→confirmed (s) | "
            "median total (ms) | median QEMU downtime (ms) | median guest pause (ms) | "
            "dirty syncs | max dirty rate (MB/s) | bandwidth (MB/s) | max throttle % |"
        ),
        "|" + "---|" * 18,
    ]
    for kind, s in summary.items():
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in (
                    kind,
                    s["runs"],
                    s["errors"],
                    s["guest_faults"],
                    s.get("migrations_completed", "-"),
                    s["with_suspected"],
                    s["with_confirmed"],
                    _crossing(s),
                    s["flagged_during_precopy"],
                    s["countermeasures_fired"],
                    _fmt_max(
                        s["median_switchover_to_confirmed_s"], s["max_switchover_to_confirmed_s"]
                    ),
                    _fmt(s.get("median_total_time_ms")),
                    _fmt(s.get("median_qemu_downtime_ms")),
                    _fmt(s.get("median_guest_pause_ms")),
                    _fmt(s.get("median_dirty_syncs")),
                    _fmt(s.get("max_dirty_rate_mb_s")),
                    _fmt(s.get("median_bandwidth_mb_s")),
                    _fmt(s.get("max_cpu_throttle_pct")),
                )
            )
            + " |"
        )
    if meta.get("runs_not_started"):
        lines += [
            "",
            (
                f"Budget spent: {meta['runs_not_started']} of {meta.get('runs_planned')} planned runs "
                "were not started."
            ),
        ]
    load = meta.get("load_average_1min")
    if load:
        lines += [
            "",
            (
                f"Host load (1-min average at each run's end, {meta.get('cpus')} CPUs): "
                f"min {load['min']}, median {load['median']}, max {load['max']}."
            ),
        ]
    lines += [
        "",
        "## Pre-copy detection, controls and the host",
        "",
        (
            "| kind | runs | suspected before switchover | median migration start→suspected (s) | "
            "suspected events | hours observed | guest dirty rate, run median max (sample max) "
            "MB/s | max vCPU run delay (ms/s) |"
        ),
        "|" + "---|" * 8,
    ]
    for kind, s in summary.items():
        migrates = s.get("migrations_completed") is not None
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in (
                    kind,
                    s["runs"],
                    f"{s['suspected_before_switchover']}/{s['runs']}" if migrates else "-",
                    _fmt(s.get("median_migration_start_to_suspected_s")),
                    s.get("suspected_events", 0),
                    _fmt(s.get("observed_hours")),
                    "-"
                    if s.get("max_run_median_dirty_rate_mb_s") is None
                    else f"{_fmt(s['max_run_median_dirty_rate_mb_s'])} "
                    f"({_fmt(s['max_dirty_rate_sample_mb_s'])})",
                    _fmt(s.get("max_vcpu_wait_ms_per_s")),
                )
            )
            + " |"
        )
    sus = [(i, r, x) for i, r in enumerate(rows, 1) for x in r.get("suspicions", [])]
    if sus:
        lines += [
            "",
            (
                "Every `suspected`, with the host's side (QMP's last query-migrate before it, the "
                "vCPU thread's run delay over the second before, the guest's /proc/vmstat over its "
                "last logged second):"
            ),
            "",
            (
                "| run | kind | since migration start (s) | before switchover | signals | "
                "vCPU run delay (ms/s) | QMP status, dirty syncs, dirty rate MB/s | vmstat delta |"
            ),
            "|" + "---|" * 8,
        ]
        for i, r, x in sus:
            m = x.get("migration") or {}
            vm = x.get("vmstat_delta") or {}
            lines.append(
                "| "
                + " | ".join(
                    str(v)
                    for v in (
                        i,
                        r["kind"],
                        _fmt(x.get("t_from_migration_start_s")),
                        _fmt(x.get("before_switchover")),
                        ",".join(x.get("signals") or []),
                        _fmt(x.get("vcpu_wait_ms_per_s_last_1s")),
                        "-"
                        if not m
                        else f"{m.get('status')}, {m.get('dirty_sync_count')}, "
                        f"{m.get('dirty_rate_mb_s')}",
                        " ".join(f"{k}={v}" for k, v in vm.items() if v) or "-",
                    )
                )
                + " |"
            )
    if any(r["program"] == "clock" for r in rows):
        lines += [
            "",
            (
                "Runs with program `clock` (the delay runs) measure QEMU's convergence, not detection: "
                "the guest runs the lab's clock probe, which judges no border, so their "
                '"confirmed" is the first answer from site B and their crossing is empty.'
            ),
        ]
    lines += [
        "",
        "## Runs",
        "",
        (
            "| # | kind | A → B | status | total ms | downtime ms | pause ms | syncs | "
            "switchover→suspected s | switchover→confirmed s | rounds | verdict | hooks/webhooks | "
            "error |"
        ),
        "|" + "---|" * 14,
    ]
    for i, r in enumerate(rows, 1):
        m = r["migration"] or {}
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in (
                    i,
                    r["kind"],
                    f"{r['a']} → {r['b']}" if r["migrated"] else r["a"],
                    m.get("status", "-"),
                    _fmt(m.get("total_time_ms")),
                    _fmt(m.get("qemu_downtime_ms")),
                    _fmt(m.get("guest_pause_ms")),
                    _fmt(m.get("dirty_sync_count")),
                    _fmt(r.get("switchover_to_suspected_s")),
                    _fmt(r["switchover_to_confirmed_s"]),
                    _fmt(r.get("confirm_rounds")),
                    _verdict(r),
                    f"{len(r['hooks'])}/{len(r['webhooks'])}",
                    (r["error"] or "")[:80].replace("|", "/"),
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _crossing(s: dict[str, Any]) -> str:
    n = s["confirmed_crossing"]
    return f"{n} ({s.get('confirmed_in_b_country', 0)} placed in B's country)" if n else str(n)


def _fmt_max(med: float | None, top: float | None) -> str:
    return "-" if med is None else f"{_fmt(med)} ({_fmt(top)})"


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.2f}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def write(out: Path, records: Sequence[RunRecord], meta: dict[str, Any]) -> tuple[Path, Path]:
    rows = [analyse(r) for r in records]
    summary = summarise(rows)
    out.mkdir(parents=True, exist_ok=True)
    j = out / "lab-report.json"
    j.write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    md = out / "lab-report.md"
    md.write_text(markdown(summary, rows, meta))
    return j, md
