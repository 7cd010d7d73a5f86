"""The evaluate command end to end on a generated dataset written as the generic CSV pair."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from engine_world import countries, make_world, write_generic

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.datasets import load_dataset
from geoprobe.evaluate import evaluate, expected_calibration_error

JSONL_FIELDS = {
    "target",
    "method",
    "true_lat",
    "true_lon",
    "est_lat",
    "est_lon",
    "error_km",
    "region_km2",
    "truth_in_region",
    "country",
    "probability",
    "certified",
    "solve_ms",
}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_generic(make_world(n=24, seed=9).dataset, tmp_path_factory.mktemp("world") / "ds")


def _run(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdout=out, stderr=err, state_dir=tmp_path, cache_dir=tmp_path, runtime_dir=tmp_path
    )
    code = main(args, env=env)
    return code, out.getvalue(), err.getvalue()


def test_jsonl_records(dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("geoprobe.evaluate._countries", countries)
    code, out, err = _run(
        ["evaluate", str(dataset_dir), "--targets", "4", "--seed", "3", "--format", "jsonl"],
        tmp_path,
    )
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 12  # 4 targets x 3 methods
    assert {x["method"] for x in lines} == {"geoprobe", "cbg", "shortest-ping"}
    for rec in lines:
        assert set(rec) == JSONL_FIELDS
        assert isinstance(rec["certified"], bool)
    geo = [x for x in lines if x["method"] == "geoprobe"]
    assert all(x["truth_in_region"] for x in geo)  # honest RTTs: the sound region holds the truth
    assert "evaluate: 4/" in err or "evaluate:" in err  # progress on stderr


def test_json_summary_and_table(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("geoprobe.evaluate._countries", countries)
    code, out, err = _run(
        [
            "evaluate",
            str(dataset_dir),
            "-n",
            "3",
            "-k",
            "10",
            "--methods",
            "geoprobe,cbg",
            "--format",
            "json",
        ],
        tmp_path,
    )
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["methods"]) == {"geoprobe", "cbg"} and doc["landmarks_per_target"] == 10
    for key in (
        "median_km",
        "p80_km",
        "p90_km",
        "within_100km",
        "country_accuracy",
        "truth_in_region",
        "certified_correct",
        "certified_wrong",
        "mean_solve_ms",
    ):
        assert key in doc["methods"]["geoprobe"]
    code, out, _ = _run(
        ["evaluate", str(dataset_dir), "-n", "2", "--methods", "shortest-ping"], tmp_path
    )
    assert code == 0 and "median error (km)" in out and "shortest-ping" in out


def test_bad_input_is_one_line_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["evaluate", str(tmp_path / "nope")], tmp_path)
    err += capsys.readouterr().err  # click usage errors go to the process stderr
    assert code == 3 and err.count("\n") == 1 and "no such file" in err and "Traceback" not in err
    code, _, err = _run(["evaluate", str(tmp_path), "--methods", "magic"], tmp_path)
    err += capsys.readouterr().err
    assert code == 3 and "unknown method 'magic'" in err


def test_calibration_uses_no_target_truth(dataset_dir: Path) -> None:
    """Moving a target's claimed position must not change any other method input: same estimate."""
    ds = load_dataset(dataset_dir)
    a = evaluate(ds, methods=["geoprobe", "cbg"], targets=2, seed=1, countries=countries())
    t = ds.index[a.records[0].target]
    moved = ds.servers[t]
    ds.servers[t] = type(moved)(
        moved.id, moved.name, moved.lat + 1.0, moved.lon - 1.0, moved.country
    )
    b = evaluate(ds, methods=["geoprobe", "cbg"], targets=2, seed=1, countries=countries())
    for ra, rb in zip(a.records, b.records):
        if ra.target == moved.id:
            assert (ra.est_lat, ra.est_lon) == pytest.approx((rb.est_lat, rb.est_lon))


def test_adversarial_delay_never_causes_wrong_certification(dataset_dir: Path) -> None:
    ds = load_dataset(dataset_dir)
    rng = np.random.default_rng(0)
    ev = evaluate(
        ds,
        methods=["geoprobe"],
        targets=8,
        seed=2,
        countries=countries(),
        extra_delay=lambda r: r + rng.exponential(5.0, size=r.shape),
    )
    assert all(r.certified_as in (None, r.true_country) for r in ev.records)


def test_ece() -> None:
    p = np.array([0.95, 0.95, 0.55, 0.55])
    assert expected_calibration_error(p, np.array([1.0, 1.0, 1.0, 0.0])) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.05
    )


def test_servers_without_rtts_are_no_targets(dataset_dir: Path) -> None:
    """A server nothing was measured to is named, not counted as an infinite error."""
    ds = load_dataset(dataset_dir)
    lonely = ds.ids[3]
    ds.rtt_min[3, :] = np.nan
    ds.rtt_min[:, 3] = np.nan
    ev = evaluate(ds, methods=["cbg"], countries=countries())
    assert ev.unmeasured == [lonely]
    assert lonely not in {r.target for r in ev.records}
    assert all(r.error_km is not None for r in ev.records)
    assert ev.to_json()["unmeasured_servers"] == [lonely]


def test_calibration_on_consistent_targets_leaves_out_contradicted_labels() -> None:
    """A confident miss on a target whose label its RTTs contradict counts in the overall
    figure, not in the consistent one."""
    from geoprobe.evaluate import Record, summarise

    def rec(target: str, country: str, p: float, consistent: bool) -> Record:
        return Record(
            target,
            "geoprobe",
            0.0,
            0.0,
            0.0,
            0.0,
            10.0,
            None,
            None,
            country,
            p,
            False,
            1.0,
            true_country="AT",
            consistent=consistent,
        )

    records = [rec(f"ok{i}", "AT", 0.95, True) for i in range(9)]
    records += [rec("liar", "SK", 0.97, False), rec("far", "DE", 0.3, True)]
    s = summarise(records)
    assert s["accuracy_at_p90"] == pytest.approx(0.9)
    assert s["accuracy_at_p90_consistent"] == pytest.approx(1.0)
    assert s["share_p90_consistent"] == pytest.approx(0.9)
    expected = expected_calibration_error(np.array([0.95] * 9 + [0.3]), np.array([1.0] * 9 + [0.0]))
    assert s["ece_consistent"] == pytest.approx(expected)


def test_calibration_noise_shrinks_with_more_targets() -> None:
    """A perfect predictor's chance ECE is large on few targets and small on many."""
    from geoprobe.evaluate import calibration_noise

    few = calibration_noise(np.linspace(0.1, 0.95, 20))
    many = calibration_noise(np.tile(np.linspace(0.1, 0.95, 20), 50))
    assert few[0] > 2 * many[0]
    assert many[0] < 0.05
    assert few[1] is not None and many[1] is not None and few[1] < many[1] <= 0.95
    assert calibration_noise(np.array([0.5, 0.6]))[1] is None
    assert calibration_noise(np.linspace(0.1, 0.95, 20)) == few  # deterministic
