"""How the package is layered: the library knows nothing of click, and commands do not import one
another (what two commands share lives in the library, or in cli/env.py and cli/options.py)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "geoprobe"
CLI_SHARED = {"geoprobe.cli", "geoprobe.cli.env", "geoprobe.cli.options"}


def _package_of(path: Path) -> list[str]:
    """The dotted package ``path`` belongs to (a relative import starts from it)."""
    return list(path.relative_to(REPO).with_suffix("").parts)[:-1]


def imports(path: Path, source: str | None = None) -> Iterator[str]:
    """Every module ``path`` (or ``source`` as if it lived there) imports, at any depth (lazy
    imports inside functions too), relative imports (``from . import check``) resolved."""
    text = source if source is not None else path.read_text(encoding="utf-8")
    package = _package_of(path)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_relative_imports_are_resolved() -> None:
    source = "from . import check\nfrom .env import Environment\nfrom .. import paths\n"
    names = set(imports(PACKAGE / "cli" / "watch.py", source))
    assert {"geoprobe.cli.check", "geoprobe.cli.env.Environment", "geoprobe.paths"} <= names


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


@pytest.mark.parametrize(
    "path", sorted((REPO / "benchmarks").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_benchmarks_use_the_library_not_the_cli(path: Path) -> None:
    """A benchmark that wants a command runs it as a process (``python -m geoprobe ...``)."""
    assert [m for m in imports(path) if m.startswith("geoprobe.cli")] == []


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


def _exits_with_a_number(node: ast.AST) -> bool:
    """An exit call (``sys.exit``, ``ctx.exit``, ``os._exit``, ``Exit``, ``SystemExit``) whose code
    is written as a number or a name other than ExitStatus's."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if name not in {"exit", "_exit", "Exit", "SystemExit"} or not node.args:
        return False
    arg = node.args[0]
    while isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "int":
        arg = arg.args[0] if arg.args else arg  # int(x): look at x
        if not isinstance(arg, ast.Call):
            break
    # A literal number, or a name standing for one (FAILED = 1): not an ExitStatus member. A call
    # (sys.exit(main())) or an attribute (ExitStatus.OK, result.status) passes.
    return isinstance(arg, ast.Name) or (
        isinstance(arg, ast.Constant) and isinstance(arg.value, int)
    )


def _main_returns_a_number(node: ast.AST) -> bool:
    """``return 0`` (or any number) in a function named like an entry point."""
    if not isinstance(node, ast.FunctionDef) or not node.name.endswith("main"):
        return False
    return any(
        isinstance(r, ast.Return)
        and isinstance(r.value, ast.Constant)
        and isinstance(r.value.value, int)
        for r in ast.walk(node)
    )


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_every_exit_goes_through_exit_status(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [
        f"{path.name}:{n.lineno}: {ast.unparse(n).splitlines()[0]}"
        for n in ast.walk(tree)
        if _exits_with_a_number(n) or _main_returns_a_number(n)
    ]
    assert bad == []


def _install_hints() -> Iterator[tuple[str, str]]:
    """(file, what follows ``pip install``) for every install hint a user can read."""
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "contrib").rglob("*")]
    files += sorted(PACKAGE.rglob("*.py"))
    for f in files:
        if f.is_file():
            text = f.read_text(encoding="utf-8", errors="replace")
            for m in re.finditer(r"pip install ([^\n`\"]*)", text):
                yield str(f.relative_to(REPO)), m.group(1)


def test_every_install_hint_names_this_distribution() -> None:
    """PyPI's ``geoprobe`` is an unrelated project: a hint installs ``geoprobe-vm`` or this
    checkout (``.``), never ``geoprobe``."""
    hints = list(_install_hints())
    assert len(hints) >= 4
    bad = []
    for where, args in hints:
        command = re.split(r"&&|;|#|\(", args)[0]  # the install itself, not what follows it
        specs = [a.strip("'\"") for a in command.split() if not a.startswith("-")]
        names = [re.split(r"[\[=<>~ ]", s)[0] for s in specs]
        if any(n == "geoprobe" for n in names):
            bad.append((where, args))
    assert bad == []
