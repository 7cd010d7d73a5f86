"""Dataset adapters: the generic CSV pair (with bad rows) and the real WonderProxy files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from fuzz.hostile import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from geoprobe.datasets import COUNTRY_CODES, load_dataset
from geoprobe.errors import InputError


def _write(d: Path, landmarks: str, rtts: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "landmarks.csv").write_text(landmarks)
    (d / "rtts.csv").write_text(rtts)
    return d


def test_generic_pair_min_of_repeats_symmetry_and_bad_rows(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "ds",
        "id,lat,lon,country\n"
        "a,48.85,2.35,FR\n"
        "b,52.52,13.40,DE\n"
        "c,51.50,-0.12,GB\n"
        "d,95.0,10.0,XX\n"  # impossible latitude
        "e,abc,1.0,FR\n"  # malformed
        "a,1.0,1.0,FR\n",  # duplicate id
        "src,dst,rtt_ms\n"
        "a,b,12.0\n"
        "a,b,10.5\n"  # repeat: the minimum counts
        "b,c,15.0\n"
        "c,b,14.0\n"  # both directions given: kept apart
        "a,c,-3\n"  # negative
        "a,c,nan\n"  # NaN
        "a,zz,5\n"  # unknown id
        "a,c,fast\n"  # malformed
        "a,a,0.1\n",
    )  # self pair
    ds = load_dataset(d)
    assert ds.ids == ["a", "b", "c"]
    i = ds.index
    assert ds.rtt_min[i["a"], i["b"]] == 10.5
    assert ds.rtt_min[i["b"], i["a"]] == 10.5  # symmetric: only one direction was given
    assert ds.rtt_min[i["b"], i["c"]] == 15.0 and ds.rtt_min[i["c"], i["b"]] == 14.0
    assert math.isnan(ds.rtt_min[i["a"], i["c"]])
    text = " ".join(ds.warnings)
    for why in (
        "impossible coordinates",
        "not numbers",
        "duplicate",
        "negative or non-finite RTT",
        "unknown or unlocated",
        "malformed rtt_ms",
        "self pair",
    ):
        assert why in text, why
    assert "skipped 2 RTT row(s): negative or non-finite RTT" in ds.warnings
    assert ds.find("b").country == "DE"
    with pytest.raises(InputError):
        ds.find("nope")


def test_missing_column_names_file_and_field(tmp_path: Path) -> None:
    d = _write(tmp_path / "ds", "id,latitude,lon\na,1,2\n", "src,dst,rtt_ms\n")
    with pytest.raises(InputError) as exc:
        load_dataset(d)
    assert "landmarks.csv" in str(exc.value) and "'lat'" in str(exc.value)


def test_no_usable_rows_is_an_error(tmp_path: Path) -> None:
    d = _write(tmp_path / "ds", "id,lat,lon\na,1,2\nb,3,4\n", "src,dst,rtt_ms\na,b,-1\n")
    with pytest.raises(InputError) as exc:
        load_dataset(d)
    assert "rtts.csv" in str(exc.value) and "rtt_ms" in str(exc.value)


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load_dataset(tmp_path)
    with pytest.raises(InputError):
        load_dataset(tmp_path / "missing")


def test_wonderproxy_real_data(wonderproxy_dir: Path) -> None:
    ds = load_dataset(wonderproxy_dir)
    assert len(ds) == 246
    assert "292" not in ds.index  # in the pings but without coordinates
    with (next(wonderproxy_dir.glob("servers*.csv"))).open() as fh:
        names = {row["country"] for row in csv.DictReader(fh)}
    assert len(names) == 89 and names <= set(COUNTRY_CODES)
    assert all(s.country is not None and len(s.country) == 2 for s in ds.servers)
    assert ds.find("LaCeiba").country == "HN"
    assert not any(np.isfinite(np.diag(ds.rtt_min)))
    assert any("self pair" in w for w in ds.warnings)
    # Both directions are kept where both were measured.
    i, j = ds.index["0"], ds.index["1"]
    assert ds.rtt_min[i, j] == pytest.approx(288.454)


def test_utf8_bom_header_is_read(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    (d / "landmarks.csv").write_bytes("\ufeffid,lat,lon\na,1,2\nb,3,4\n".encode())
    (d / "rtts.csv").write_bytes("\ufeffsrc,dst,rtt_ms\na,b,5\n".encode())
    ds = load_dataset(d)
    assert ds.ids == ["a", "b"] and ds.rtt_min[0, 1] == 5.0


def test_non_iso_country_drops_only_the_country(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "ds",
        "id,lat,lon,country\na,48.85,2.35,France\nb,52.52,13.40,DE\n",
        "src,dst,rtt_ms\na,b,10\n",
    )
    ds = load_dataset(d)
    assert ds.ids == ["a", "b"]
    assert ds.find("a").country is None and ds.find("b").country == "DE"
    assert ds.rtt_min[ds.index["a"], ds.index["b"]] == 10.0
    assert any("without country" in w and "'FRANCE'" in w for w in ds.warnings)


def test_servers_without_any_rtt_are_named_in_a_warning(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "ds",
        "id,lat,lon\na,48.85,2.35\nb,52.52,13.40\nlonely,40.0,-3.7\n",
        "src,dst,rtt_ms\na,b,10\n",
    )
    ds = load_dataset(d)
    assert any("no RTT at all" in w and "lonely" in w for w in ds.warnings)
    assert not any("no RTT at all" in w and " a" in w.split(":")[-1] for w in ds.warnings)


_CELL = st.one_of(
    st.sampled_from(
        ["", "a", "b", "1.5", "-3", "nan", "inf", "1e999", "95", "DE", "France", "\ufeff"]
    ),
    st.text(max_size=6),
)


@FUZZ
@given(
    lm_rows=st.lists(st.lists(_CELL, min_size=0, max_size=5), max_size=6),
    rtt_rows=st.lists(st.lists(_CELL, min_size=0, max_size=4), max_size=6),
    bom=st.booleans(),
    raw=st.binary(max_size=40),
)
def test_generic_loader_survives_hostile_files(
    tmp_path_factory: pytest.TempPathFactory,
    lm_rows: list[list[str]],
    rtt_rows: list[list[str]],
    bom: bool,
    raw: bytes,
) -> None:
    """Any content: a Dataset, or an InputError naming the file; never another exception."""
    d = tmp_path_factory.mktemp("fuzz")
    head = "\ufeff" if bom else ""
    lm = head + "id,lat,lon,country\n" + "\n".join(",".join(r) for r in lm_rows)
    rt = head + "src,dst,rtt_ms\n" + "\n".join(",".join(r) for r in rtt_rows)
    (d / "landmarks.csv").write_bytes(lm.encode("utf-8", "surrogatepass") + raw[:5])
    (d / "rtts.csv").write_bytes(rt.encode("utf-8", "surrogatepass") + raw[5:])
    try:
        ds = load_dataset(d)
    except InputError as exc:
        assert "landmarks.csv" in str(exc) or "rtts.csv" in str(exc)
    else:
        assert len(ds) >= 1 and ds.rtt_min.shape == (len(ds), len(ds))
