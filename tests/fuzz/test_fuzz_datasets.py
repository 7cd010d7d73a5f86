"""The dataset loaders on hostile CSV: a Dataset or one InputError line, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzz.hostile import FUZZ, raw_text
from fuzz.samples import LANDMARKS_CSV, PINGS_CSV, RTTS_CSV, SERVERS_CSV
from geoprobe.datasets import MAX_SERVERS, Dataset, load_dataset
from geoprobe.errors import InputError

_CELLS = st.sampled_from(
    ["", "nan", "inf", "-inf", "1e999", "-1", "9" * 400, "\x00", '"', '"a""b"', "x" * 200_000]
)


def _rows(header: str) -> st.SearchStrategy[bytes]:
    """CSV with the right header and hostile cells."""
    width = len(header.split(","))
    row = st.lists(_CELLS | st.text(max_size=6), min_size=0, max_size=width + 2).map(",".join)
    return st.lists(row, max_size=6).map(lambda rows: (header + "\n" + "\n".join(rows)).encode())


def _load(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, data in files.items():
            (d / name).write_bytes(data)
        try:
            ds = load_dataset(d)
        except InputError as exc:
            text = str(exc)
            assert text.startswith(tmp) and "\n" not in text and len(text) < 600
            return
        assert isinstance(ds, Dataset) and ds.rtt_min.shape == (len(ds), len(ds))
        ds.to_catalogue()


@FUZZ
@given(
    raw_text(LANDMARKS_CSV) | _rows("id,lat,lon,country"),
    raw_text(RTTS_CSV) | _rows("src,dst,rtt_ms"),
)
def test_generic_pair(landmarks: bytes, rtts: bytes) -> None:
    _load({"landmarks.csv": landmarks, "rtts.csv": rtts})


@FUZZ
@given(
    raw_text(SERVERS_CSV) | _rows("id,name,country,latitude,longitude"),
    raw_text(PINGS_CSV) | _rows("source,destination,min,avg,mdev"),
)
def test_wonderproxy_pair(servers: bytes, pings: bytes) -> None:
    _load({"servers-2020-07-19.csv": servers, "pings-2020-07-19.csv": pings})


def test_a_small_file_cannot_ask_for_a_huge_matrix(tmp_path: Path) -> None:
    """Each server costs n^2 matrix cells: the count is capped before anything is allocated."""
    rows = "".join(f"s{i},{i % 90},{i % 180}\n" for i in range(MAX_SERVERS + 1))
    (tmp_path / "landmarks.csv").write_text("id,lat,lon\n" + rows)
    (tmp_path / "rtts.csv").write_text("src,dst,rtt_ms\ns0,s1,5\n")
    try:
        load_dataset(tmp_path)
    except InputError as exc:
        assert "landmarks.csv" in str(exc) and str(MAX_SERVERS) in str(exc)
    else:
        raise AssertionError("accepted")
