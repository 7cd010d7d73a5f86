"""Commands take their directories from the injected Environment, never from the process
environment behind its back: the cache dir (country raster, fitted model) and the config dirs.

Each test points ``$GEOPROBE_*_DIR`` somewhere else than the Environment, so a command that read
the process environment would be seen using the wrong directory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.geo import countries
from tests.attest.chainkit import issue, make_kit


def env_in(tmp: Path) -> Environment:
    return Environment(
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        state_dir=tmp / "state",
        cache_dir=tmp / "cache",
        runtime_dir=tmp / "run",
        config_dirs=[tmp / "config"],
    )


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process environment's dirs, which no command given an Environment may use."""
    other = tmp_path / "process-env"
    for name in ("STATE", "CACHE", "RUNTIME", "CONFIG"):
        monkeypatch.setenv(f"GEOPROBE_{name}_DIR", str(other / name.lower()))
    return other


def test_attest_verify_builds_the_country_index_in_the_environments_cache(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_kit()
    issue(kit, tmp_path / "chain", 2)
    asked: list[Any] = []
    real = countries.default_index

    def spy(cache_dir: Path | None = None) -> countries.CountryIndex:
        asked.append(cache_dir)
        return real(cache_dir)

    monkeypatch.setattr(countries, "default_index", spy)
    env = env_in(tmp_path)
    argv = ["attest", "verify", str(tmp_path / "chain"), "--vm-key"]
    argv += [str(kit.pub_file(tmp_path / "vm.pub")), "--landmarks"]
    argv += [str(kit.write_catalogue(tmp_path / "cat.json"))]
    assert main(argv, env=env) == 0, env.stdout.getvalue()  # type: ignore[attr-defined]
    assert asked == [env.cache_dir]


def test_unlock_reads_its_config_from_the_environments_config_dirs(
    tmp_path: Path, elsewhere: Path
) -> None:
    env = env_in(tmp_path)
    mine = tmp_path / "config" / "unlock.toml"
    mine.parent.mkdir()
    mine.write_text("this is not TOML [\n")
    theirs = elsewhere / "config" / "unlock.toml"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("neither is this [\n")
    assert main(["unlock", "disk"], env=env) == 3
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert str(mine) in err and str(theirs) not in err, err
