"""A small generic dataset (landmarks.csv + rtts.csv) on disk, with RTTs far apart enough to
tell."""

from __future__ import annotations

from pathlib import Path

import pytest
from testbed_world_data import RTTS, SERVERS


@pytest.fixture()
def small_dataset_dir(tmp_path: Path) -> Path:
    d = tmp_path / "world"
    d.mkdir()
    (d / "landmarks.csv").write_text(
        "id,lat,lon,country\n" + "".join(f"{n},{lat},{lon},{c}\n" for n, lat, lon, c in SERVERS)
    )
    (d / "rtts.csv").write_text(
        "src,dst,rtt_ms\n" + "".join(f"{a},{b},{r}\n" for (a, b), r in RTTS.items())
    )
    return d
