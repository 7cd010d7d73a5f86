"""How the package is layered: the library knows nothing of click, and commands do not import one
another (what two commands share lives in the library, or in cli/env.py and cli/options.py)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoprobe"
CLI_SHARED = {"geoprobe.cli", "geoprobe.cli.env", "geoprobe.cli.options"}


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


#: The library: everything but the CLI and ``python -m geoprobe``, which runs it.
LIBRARY = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"
)
COMMANDS = sorted(p for p in (PACKAGE / "cli").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_never_imports_click_or_the_cli(path: Path) -> None:
    bad = [m for m in imports(path) if m.split(".")[0] == "click" or m.startswith("geoprobe.cli")]
    assert bad == []


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.name)
def test_commands_do_not_import_other_commands(path: Path) -> None:
    own = f"geoprobe.cli.{path.stem}"
    bad = [
        m
        for m in imports(path)
        if m.startswith("geoprobe.cli")
        and m not in CLI_SHARED
        and not m.startswith(("geoprobe.cli.env.", "geoprobe.cli.options."))
        and not m.startswith(own)
    ]
    assert bad == []
