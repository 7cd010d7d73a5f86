"""Where geoprobe keeps its runtime files, for users cron and su start without a session."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest

from geoprobe import paths


@pytest.fixture
def no_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A non-root user without XDG_RUNTIME_DIR, as cron and su start one."""
    for var in ("XDG_RUNTIME_DIR", "GEOPROBE_RUNTIME_DIR", "GEOPROBE_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    return tmp_path


def test_no_runtime_dir_warning_without_a_session(no_session: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # platformdirs' RuntimeDirWarning would raise here
        d = paths.runtime_dir()
    own = Path(f"/run/user/{os.getuid()}")
    assert (
        d == own / "geoprobe"
        if own.is_dir() and own.stat().st_uid == os.getuid()
        else (d == no_session / "cache" / "geoprobe" / "run")
    )


def test_no_command_warns_without_a_session(
    no_session: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoprobe.cli import main
    from geoprobe.cli.env import Environment

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = Environment(stdout=io.StringIO(), stderr=io.StringIO())
        code = main(
            ["check", "--allow", "DE", "--landmarks", str(no_session / "none.json")], env=env
        )
    assert code == 3
    assert "XDG_RUNTIME_DIR" not in env.stderr.getvalue() + capsys.readouterr().err  # type: ignore[attr-defined]


def test_xdg_runtime_dir_is_used_when_set(
    no_session: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(no_session / "xdg"))
    assert paths.runtime_dir() == no_session / "xdg" / "geoprobe"
