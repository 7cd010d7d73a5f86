"""Exit codes: every one an ExitStatus, each documented, and the process-level paths to them."""

from __future__ import annotations

import io
import re
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from geoprobe.cli import cli, main
from geoprobe.cli.env import Environment
from geoprobe.status import ExitStatus

REPO = Path(__file__).resolve().parents[2]


def test_every_exit_status_is_documented_with_its_code() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([A-Z_]+)` \| (\d+) \|", text, re.MULTILINE))
    assert table == {name: str(int(s)) for name, s in ExitStatus.__members__.items()}


def test_no_command_exits_with_a_bare_number() -> None:
    """Every exit in the CLI names its ExitStatus."""
    for path in (REPO / "geoprobe" / "cli").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(Exit|ctx\.exit|sys\.exit)\(\s*\d", text), path.name
        assert not re.search(r"^\s*return \d+\s*$", text, re.MULTILINE), path.name


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    """The distribution is geoprobe-vm (PyPI's geoprobe is another project); the command is
    geoprobe."""
    assert main(["--version"], env=Environment(stdout=io.StringIO(), stderr=io.StringIO())) == 0
    assert capsys.readouterr().out.endswith(f", version {version('geoprobe-vm')}\n")


def test_ctrl_c_in_a_command_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("interrupted")
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.commands, "interrupted", interrupted)
    err = io.StringIO()
    code = main(["interrupted"], env=Environment(stdout=io.StringIO(), stderr=err))
    assert code == ExitStatus.INTERRUPTED == 130
    assert err.getvalue() == "geoprobe: interrupted\n"


def test_usage_error_is_2() -> None:
    err = io.StringIO()
    code = main(["locate", "--no-such-option"], env=Environment(stdout=io.StringIO(), stderr=err))
    assert code == ExitStatus.USAGE
