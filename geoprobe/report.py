"""Render a Fix and the measurements behind it: a rich table for people, a JSON record for machines.

The JSON record is the Fix's own record plus every measurement in the RIPE ping shape (evidence
included), so ``geoprobe verify`` can audit a saved ``locate --format json`` output directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from geoprobe.geo.fix import Fix
from geoprobe.measurement import Measurement, min_rtts


def failures(measurements: Sequence[Measurement]) -> dict[str, str]:
    return {m.landmark_id: m.failure or "no reply" for m in measurements if not m.ok}


def rejected(measurements: Sequence[Measurement]) -> dict[str, dict[str, int]]:
    return {m.landmark_id: dict(m.rejected) for m in measurements if m.rejected}


def record(fix: Fix, measurements: Sequence[Measurement], **meta: Any) -> dict[str, Any]:
    """The full locate record: position, error radius, countries sorted by probability, certified
    country, bound, and per-landmark RTTs, failures, rejected replies and evidence."""
    out = fix.to_json()
    out["countries"] = sorted(out["countries"], key=lambda c: (-c["probability"], c["code"]))
    out.update(meta)
    out["rtts_ms"] = {k: round(v, 4) for k, v in sorted(min_rtts(measurements).items())}
    out["failures"] = dict(sorted(failures(measurements).items()))
    out["rejected"] = rejected(measurements)
    out["measurements"] = [m.to_json() for m in measurements]
    return out


def render_json(fix: Fix, measurements: Sequence[Measurement], **meta: Any) -> str:
    return json.dumps(record(fix, measurements, **meta), indent=1)


def _latlon(lat: float, lon: float) -> str:
    return f"{abs(lat):.4f}°{'N' if lat >= 0 else 'S'} {abs(lon):.4f}°{'E' if lon >= 0 else 'W'}"


def render_table(
    fix: Fix, measurements: Sequence[Measurement], console: Console, *, top: int = 5
) -> None:
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("position", f"{_latlon(fix.lat, fix.lon)}  (±{fix.error_radius_km:.0f} km)")
    summary.add_row(
        "bound",
        fix.bound + ("" if fix.bound == "calibrated" else "  (speed of light in fibre only)"),
    )
    summary.add_row("certified", fix.certified or "no (the sound region is not inside one country)")
    answered = sum(1 for m in measurements if m.ok)
    summary.add_row(
        "landmarks", f"{answered} of {len(measurements)} answered, {len(fix.landmarks_used)} used"
    )
    total_rejected = sum(sum(m.rejected.values()) for m in measurements)
    if total_rejected:
        summary.add_row("rejected replies", str(total_rejected))
    for note in fix.notes:
        summary.add_row("note", note)
    console.print(summary)

    countries = Table(title="countries", title_justify="left")
    countries.add_column("country")
    countries.add_column("probability", justify="right")
    countries.add_column("share of region", justify="right")
    for c in sorted(fix.countries, key=lambda c: -c.probability)[:top]:
        mark = " (certified)" if c.code == fix.certified else ""
        countries.add_row(c.code + mark, f"{c.probability:.1%}", f"{c.share:.1%}")
    if len(fix.countries) > top:
        rest = sum(c.probability for c in fix.countries[top:])
        countries.add_row(f"{len(fix.countries) - top} more", f"{rest:.1%}", "")
    console.print(countries)

    failed = failures(measurements)
    if failed or fix.excluded:
        table = Table(title="landmarks not used", title_justify="left")
        table.add_column("landmark")
        table.add_column("why")
        for lid, why in sorted(failed.items()):
            detail = ", ".join(
                f"{k} {v}"
                for k, v in sorted(
                    next((m.rejected for m in measurements if m.landmark_id == lid), {}).items()
                )
            )
            table.add_row(
                lid, why + (f" [rejected: {detail}]" if detail and "rejected" not in why else "")
            )
        for lid, why in sorted(fix.excluded.items()):
            if lid not in failed:
                table.add_row(lid, f"excluded: {why}")
        console.print(table)
