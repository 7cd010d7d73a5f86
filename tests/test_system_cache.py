"""One cache dir for root and for system services, and the systemd units that use it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geoprobe import paths

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "contrib" / "systemd"


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No override: what a command sees outside the tests."""
    monkeypatch.delenv("GEOPROBE_CACHE_DIR", raising=False)
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.mark.usefixtures("bare")
def test_root_and_users_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(paths, "_is_root", lambda: True)
    assert paths.cache_dir() == Path("/var/cache/geoprobe")
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    assert paths.cache_dir() == tmp_path / "xdg" / "geoprobe"


@pytest.mark.usefixtures("bare")
def test_a_units_cache_directory_comes_first_then_the_explicit_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(paths, "_is_root", lambda: False)  # a DynamicUser service
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/geoprobe:/var/cache/other")
    assert paths.cache_dir() == Path("/var/cache/geoprobe")
    monkeypatch.setenv("GEOPROBE_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"


def test_every_system_unit_has_the_system_cache_dir() -> None:
    for unit in ("geoprobe-watch.service", "geoprobe-check.service"):
        text = (UNITS / unit).read_text()
        assert "\nCacheDirectory=geoprobe\n" in text, unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify on the units as installed, the report-only drop-in applied to the
    watch (ExecStart pointed at this environment's geoprobe, which verify requires to exist)."""
    exe = Path(sys.executable).parent / "geoprobe"
    assert exe.exists()

    def installed(text: str) -> str:
        return text.replace("/usr/local/bin/geoprobe", str(exe))

    for unit in ("geoprobe-watch.service", "geoprobe-check.service", "geoprobe-check.timer"):
        (tmp_path / unit).write_text(installed((UNITS / unit).read_text()))
    (tmp_path / "geoprobe-report-only.service").write_text(
        installed(
            (UNITS / "geoprobe-watch.service").read_text()
            + (UNITS / "geoprobe-watch-report-only.conf").read_text()
        )
    )
    units = sorted(str(p) for p in tmp_path.iterdir())
    res = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "geoprobe" not in res.stderr, res.stderr  # no warning about any of our units


def _directives(text: str, key: str) -> list[str]:
    """Values of ``key=`` lines in a unit (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    return [line.split("=", 1)[1] for line in joined.splitlines() if line.startswith(f"{key}=")]


def test_the_watch_does_not_restart_into_a_usage_error_or_bad_input() -> None:
    """Click's usage error (an unreadable --policy, a bad option) exits 2 in the watch; the unit
    restarted into it every 5 s until both were listed (seen in the lab's systemd guest)."""
    from geoprobe.status import ExitStatus

    text = (UNITS / "geoprobe-watch.service").read_text()
    (prevent,) = _directives(text, "RestartPreventExitStatus")
    assert {int(ExitStatus.USAGE), int(ExitStatus.ERROR)} <= {int(x) for x in prevent.split()}


def test_the_report_only_dynamic_user_gets_the_policy_and_serves_its_metrics() -> None:
    """A DynamicUser cannot read root's 0600 policy nor write root's textfile directory: the drop-in
    hands the policy over as a credential and serves the metrics instead (the lab's systemd guest
    showed both)."""
    text = (UNITS / "geoprobe-watch-report-only.conf").read_text()
    assert _directives(text, "DynamicUser") == ["yes"]
    assert _directives(text, "LoadCredential") == ["policy.toml:/etc/geoprobe/policy.toml"]
    start = _directives(text, "ExecStart")[-1].split()
    assert start[start.index("--policy") + 1] == "%d/policy.toml"
    assert "--metrics" not in start and "--metrics-listen" in start
    assert not _directives(text, "ReadWritePaths")
