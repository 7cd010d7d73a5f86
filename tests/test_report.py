"""Rendering a Fix and its measurements as a table and as a JSON record."""

from __future__ import annotations

import io
import json

from rich.console import Console

from geoprobe import report
from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.measurement import Measurement


def _fix(certified: str | None = None) -> Fix:
    return Fix(
        lat=48.2,
        lon=16.37,
        error_radius_km=85.0,
        bound="calibrated",
        countries=[
            CountryShare("SK", 0.05, 0.1),
            CountryShare("AT", 0.9, 0.8),
            CountryShare("HU", 0.05, 0.1),
        ],
        certified=certified,
        region=None,
        sound_region=None,
        landmarks_used=["vie", "bts"],
        excluded={"liar": "faster than light to vie"},
        notes=["a note"],
    )


def _measurements() -> list[Measurement]:
    return [
        Measurement(
            landmark_id="vie",
            method="udp",
            rtts_ms=[1.5, 1.2],
            sent=2,
            evidence=[{"v": 1, "nonce": "AA=="}],
            clock_offsets_ms=[0.1, 0.2],
        ),
        Measurement(landmark_id="bts", method="udp", rtts_ms=[2.5], sent=2),
        Measurement(
            landmark_id="dead",
            method="udp",
            sent=2,
            failure="timeout (rejected replies: bad signature: 2)",
            rejected={"bad signature": 2},
        ),
        Measurement(landmark_id="closed", method="udp", sent=2, failure="refused"),
    ]


def test_json_record_has_the_documented_fields() -> None:
    rec = json.loads(report.render_json(_fix(), _measurements(), probe_method="udp"))
    assert rec["position"] == {"lat": 48.2, "lon": 16.37}
    assert (
        rec["error_radius_km"] == 85.0 and rec["bound"] == "calibrated" and rec["certified"] is None
    )
    assert [c["code"] for c in rec["countries"]] == [
        "AT",
        "HU",
        "SK",
    ]  # by probability, ties by code
    assert rec["rtts_ms"] == {"bts": 2.5, "vie": 1.2}
    assert rec["failures"] == {
        "closed": "refused",
        "dead": "timeout (rejected replies: bad signature: 2)",
    }
    assert rec["rejected"] == {"dead": {"bad signature": 2}}
    assert rec["probe_method"] == "udp"
    vie = next(m for m in rec["measurements"] if m["landmark_id"] == "vie")
    assert vie["min"] == 1.2 and vie["evidence"] == [{"v": 1, "nonce": "AA=="}]
    assert Measurement.from_json(vie).rtts_ms == [1.5, 1.2]  # the RIPE shape reads back


def test_table_shows_verdict_and_failures() -> None:
    buf = io.StringIO()
    report.render_table(_fix(certified="AT"), _measurements(), Console(file=buf, width=120))
    out = buf.getvalue()
    assert "48.2000°N 16.3700°E" in out and "±85 km" in out
    assert "AT (certified)" in out and "90.0%" in out
    assert out.index("AT (certified)") < out.index("SK")
    assert "2 of 4 answered" in out and "rejected replies" in out
    assert "dead" in out and "bad signature" in out and "closed" in out and "refused" in out
    assert "liar" in out and "faster than light" in out
    assert "a note" in out


def test_table_without_certification_says_so() -> None:
    buf = io.StringIO()
    report.render_table(_fix(), _measurements()[:2], Console(file=buf, width=120))
    out = buf.getvalue()
    assert "certified  no" in out and "(certified)" not in out and "2 of 2 answered" in out
