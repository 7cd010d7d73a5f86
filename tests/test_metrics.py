"""The watch's Prometheus metrics: exposition, naming, the textfile's replacement, the endpoint."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geoprobe.errors import InputError
from geoprobe.metrics import FixMetrics, RoundMetrics, WatchMetrics, parse_listen

STATES = ("normal", "suspect", "confirming", "confirmed", "settled")


def round_metrics(n: int = 3, **kw: object) -> RoundMetrics:
    values: dict[str, object] = {
        "timestamp_s": 1_700_000_000.5 + n,
        "duration_s": 0.25,
        "interval_s": 60.0,
        "landmarks_answered": 7,
        "state": "normal",
        "states": STATES,
        "changed_landmarks": 0,
        "fix": FixMetrics(50.1, 8.7, 180_000.0, 0.97, "DE"),
        "rounds": n,
        "failed_rounds": 1,
        "suspected": 0,
        "confirmed": {"true": 2, "false": 0, "unknown": 0},
        "events": 4,
        "hook_errors": 0,
        "rejected": {"bad signature": 3, "replayed": 1},
    }
    values.update(kw)
    return RoundMetrics(**values)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    """name{labels} -> value, through prometheus_client's own parser."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_every_family_has_help_type_base_units_and_counters_end_in_total(tmp_path: Path) -> None:
    m = WatchMetrics(textfile=tmp_path / "geoprobe.prom")
    m.observe(round_metrics())
    text = (tmp_path / "geoprobe.prom").read_text()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.MULTILINE))
    assert set(types) == helps and len(types) >= 15
    for name, kind in types.items():
        assert name.startswith("geoprobe_")
        assert not re.search(r"_(milli|micro|kilo)|_ms$|_km$|_percent$", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        assert kind in ("gauge", "counter")
    v = samples(text)
    assert v["geoprobe_up"] == 1
    assert v["geoprobe_last_round_timestamp_seconds"] == 1_700_000_003.5
    assert v["geoprobe_fix_error_radius_meters"] == 180_000.0
    assert v['geoprobe_fix_certified{country="DE"}'] == 1
    assert v['geoprobe_watch_state{state="normal"}'] == 1
    assert sum(v[f'geoprobe_watch_state{{state="{s}"}}'] for s in STATES) == 1
    assert v['geoprobe_migrations_confirmed_total{crossing="true"}'] == 2
    assert v['geoprobe_rejected_replies_total{reason="bad signature"}'] == 3
    assert not any(k.endswith("_created") for k in v)  # nothing that changes per process


def test_every_gauge_is_the_last_rounds_value(tmp_path: Path) -> None:
    """A round without a fix, after one with a fix, shows no fix: never an older round's."""
    out = tmp_path / "geoprobe.prom"
    m = WatchMetrics(textfile=out)
    m.observe(round_metrics(1))
    m.observe(
        round_metrics(2, fix=None, landmarks_answered=1, state="suspect", changed_landmarks=None)
    )
    v = samples(out.read_text())
    assert "geoprobe_fix_latitude_degrees" not in v
    assert "geoprobe_fingerprint_changed_landmarks" not in v
    assert v["geoprobe_landmarks_answered"] == 1
    assert v['geoprobe_watch_state{state="suspect"}'] == 1
    assert v['geoprobe_watch_state{state="normal"}'] == 0
    assert v["geoprobe_watch_rounds_total"] == 2


def test_up_is_cleared_when_the_watch_exits(tmp_path: Path) -> None:
    out = tmp_path / "geoprobe.prom"
    m = WatchMetrics(textfile=out)
    m.observe(round_metrics())
    assert samples(out.read_text())["geoprobe_up"] == 1
    m.close()
    v = samples(out.read_text())
    assert v["geoprobe_up"] == 0
    assert v["geoprobe_last_round_timestamp_seconds"] == 1_700_000_003.5  # liveness stays honest


def test_rejected_replies_accumulate_by_reason() -> None:
    m = WatchMetrics()
    assert m.count_rejected([{"bad signature": 2}, {}]) == {"bad signature": 2}
    got = m.count_rejected([{"bad signature": 1, "wrong key id": 4}])
    assert got == {"bad signature": 3, "wrong key id": 4}


def test_textfile_is_replaced_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "textfile" / "geoprobe.prom"
    m = WatchMetrics(textfile=out)
    m.observe(round_metrics(1))
    first = out.stat().st_ino
    m.observe(round_metrics(2))
    assert samples(out.read_text())["geoprobe_watch_rounds_total"] == 2
    assert out.stat().st_ino != first  # a new file renamed over the old one, never rewritten
    assert [p.name for p in out.parent.iterdir()] == ["geoprobe.prom"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_unwritable_textfile_leaves_nothing_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    m = WatchMetrics(textfile=blocker / "geoprobe.prom")
    with pytest.raises(OSError):
        m.observe(round_metrics())
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_scrape_endpoint_serves_the_same_text_and_stops(tmp_path: Path) -> None:
    m = WatchMetrics(listen=("127.0.0.1", 0))
    try:
        assert m.address is not None
        host, port = m.address
        assert port > 0
        m.observe(round_metrics(5))
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        v = samples(body)
        assert v["geoprobe_watch_rounds_total"] == 5 and v["geoprobe_up"] == 1
    finally:
        m.close()
    assert m.address is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_a_port_in_use_is_a_one_line_error() -> None:
    first = WatchMetrics(listen=("127.0.0.1", 0))
    try:
        assert first.address is not None
        with pytest.raises(InputError, match=r"--metrics-listen.*cannot listen on 127\.0\.0\.1"):
            WatchMetrics(listen=first.address)
    finally:
        first.close()


@pytest.mark.parametrize(
    "spec,want",
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_listen_address_parses(spec: str, want: tuple[str, int]) -> None:
    assert parse_listen(spec) == want


@pytest.mark.parametrize("spec", ["9464", "localhost:9464", "127.0.0.1:0", "1.2.3.4:70000", ":80"])
def test_bad_listen_address_names_the_option(spec: str) -> None:
    with pytest.raises(InputError, match="--metrics-listen"):
        parse_listen(spec)


def test_watch_with_a_bad_listen_address_is_one_line_exit_3(tmp_path: Path) -> None:
    import io

    from geoprobe.cli import main
    from geoprobe.cli.env import Environment

    catalogue = Path(__file__).resolve().parents[1] / "landmarks" / "example.json"
    err = io.StringIO()
    env = Environment(
        stdout=io.StringIO(), stderr=err, state_dir=tmp_path, cache_dir=tmp_path / "cache"
    )
    argv = ["watch", "--landmarks", str(catalogue), "--allow", "DE", "--metrics-listen", "9464"]
    assert main(argv, env=env) == 3
    assert err.getvalue().splitlines() == [
        (
            "geoprobe: error: field '--metrics-listen': '9464' is not ADDR:PORT "
            "(e.g. 127.0.0.1:9464 or [::1]:9464)"
        )
    ]
