"""The Prometheus textfile writer: exposition format, naming rules, atomic replacement."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from geoprobe.metrics import Metrics


def test_render_has_help_type_and_escaped_labels() -> None:
    m = Metrics()
    m.counter("geoprobe_migrations_confirmed_total", "Migrations confirmed.", 2, crossing="true")
    m.counter("geoprobe_migrations_confirmed_total", "Migrations confirmed.", 5, crossing="false")
    m.gauge("geoprobe_fix_error_radius_meters", "Error radius.", 180000.0)
    m.gauge("geoprobe_label_test", "Escapes.", 1, note='a "b"\\c\nd')
    m.gauge("geoprobe_nan_ratio", "Not a number.", math.nan)
    text = m.render()
    lines = text.splitlines()
    assert lines[0] == "# HELP geoprobe_fix_error_radius_meters Error radius."
    assert lines[1] == "# TYPE geoprobe_fix_error_radius_meters gauge"
    assert "geoprobe_fix_error_radius_meters 180000" in lines
    assert 'geoprobe_migrations_confirmed_total{crossing="true"} 2' in lines
    assert 'geoprobe_migrations_confirmed_total{crossing="false"} 5' in lines
    assert text.count("# TYPE geoprobe_migrations_confirmed_total counter") == 1
    assert 'geoprobe_label_test{note="a \\"b\\"\\\\c\\nd"} 1' in lines
    assert "geoprobe_nan_ratio NaN" in lines
    sample = re.compile(
        r'^geoprobe_[a-z0-9_]+(\{[a-z_]+="([^"\\]|\\.)*"(,[a-z_]+="([^"\\]|\\.)*")*\})? \S+$'
    )
    assert all(ln.startswith("# ") or sample.match(ln) for ln in lines)


def test_setting_a_sample_again_replaces_it() -> None:
    m = Metrics()
    m.gauge("geoprobe_up", "Up.", 0)
    m.gauge("geoprobe_up", "Up.", 1)
    assert m.render().splitlines()[2:] == ["geoprobe_up 1"]


@pytest.mark.parametrize(
    "name,kind",
    [
        ("up", "gauge"),  # not geoprobe_*
        ("geoprobe_rounds", "counter"),  # counters end in _total
        ("geoprobe_rounds_total", "gauge"),  # gauges do not
        ("geoprobe_Bad-Name", "gauge"),
    ],
)
def test_bad_names_are_refused(name: str, kind: str) -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        (m.counter if kind == "counter" else m.gauge)(name, "x", 1)


def test_negative_counter_and_type_clash_are_refused() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.counter("geoprobe_x_total", "x", -1)
    m.gauge("geoprobe_y", "y", 1)
    with pytest.raises(ValueError):
        m.counter("geoprobe_y", "y", 1)


def test_write_replaces_the_file_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "textfile" / "geoprobe.prom"
    m = Metrics()
    m.gauge("geoprobe_up", "Up.", 1)
    m.write(out)
    first = out.stat().st_ino
    m.gauge("geoprobe_up", "Up.", 0)
    m.write(out)
    assert out.read_text().endswith("geoprobe_up 0\n")
    assert (
        out.stat().st_ino != first
    )  # a new file renamed over the old one, never rewritten in place
    assert [p.name for p in out.parent.iterdir()] == ["geoprobe.prom"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"
