"""Shared fixtures. Real third-party data is read in place from ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the processes they start) never touch the real state, cache or runtime dirs,
    which for root are /var/lib/geoprobe, /var/cache/geoprobe and /run/geoprobe.

    Commands take every directory from the Environment they are given (tests/cli/test_env_dirs.py
    points these variables elsewhere to prove it). What this covers is the rest: an Environment()
    built with its defaults, library calls left to their default dirs, and child processes, which
    read their Environment from these variables as a real command does."""
    base = tmp_path_factory.mktemp("geoprobe-dirs")
    names = ("STATE", "CACHE", "RUNTIME", "CONFIG")
    saved = {n: os.environ.get(f"GEOPROBE_{n}_DIR") for n in names}
    for n in names:
        os.environ[f"GEOPROBE_{n}_DIR"] = str(base / n.lower())
    yield
    for n, old in saved.items():
        if old is None:
            os.environ.pop(f"GEOPROBE_{n}_DIR", None)
        else:
            os.environ[f"GEOPROBE_{n}_DIR"] = old


TIME_SCALE_VAR = "GEOPROBE_TEST_TIME_SCALE"


@pytest.fixture(scope="session")
def time_scale() -> float:
    """How many times longer than on an idle machine an end-to-end deadline must allow.

    ``$GEOPROBE_TEST_TIME_SCALE`` when set (CI sets it for its runners); otherwise measured: the
    one-minute load average per core, at least 1. The figures the targets name are printed by the
    benchmarks, on an idle machine; a test proves the behaviour, so under load it waits longer.
    """
    raw = os.environ.get(TIME_SCALE_VAR)
    if raw:
        try:
            scale = float(raw)
        except ValueError:
            pytest.fail(f"{TIME_SCALE_VAR}={raw!r} is not a number")
        if not scale >= 1.0:
            pytest.fail(f"{TIME_SCALE_VAR}={raw!r} must be at least 1")
        return scale
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is needed for this test")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def wonderproxy_dir() -> Path:
    return _need(SHARED_DATA / "wonderproxy-pings-2020-07")


@pytest.fixture(scope="session")
def natural_earth_50m() -> Path:
    return _need(SHARED_DATA / "natural-earth-admin0" / "ne_50m_admin_0_countries.geojson")


@pytest.fixture(scope="session")
def ripe_anchors_csv() -> Path:
    return _need(SHARED_DATA / "ripe-atlas-anchors-2023" / "anchors.csv")
