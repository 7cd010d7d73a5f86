"""The ``geoprobe`` command: a thin click layer over the library.

Each subcommand lives in its own module and exposes ``register(group)``. Commands parse
arguments, call the core, and render; errors from the core (``GeoprobeError``) become one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from geoprobe.cli.env import Environment
from geoprobe.errors import GeoprobeError
from geoprobe.status import ExitStatus

# Command name -> the module that registers it (one module per subcommand family, ripe-atlas-tools
# style). Modules are imported only when their command runs, so `geoprobe delay` does not carry
# numpy, scipy and shapely in its resident set, and `geoprobe check` from cron starts quickly.
COMMANDS = {
    "check": "check",  # Nagios/Icinga plugin
    "delay": "delay",
    "demo": "testbed",
    "evaluate": "evaluate",
    "landmark": "landmark",  # landmark serve|keygen
    "landmarks": "landmark",  # landmarks sync
    "locate": "locate",
    "policy": "policy",
    "testbed": "testbed",  # testbed run|move|status
    "verify": "locate",
    "watch": "watch",
}
COMMAND_MODULES = tuple(sorted(set(COMMANDS.values())))


class GeoprobeGroup(click.Group):
    """Loads subcommands lazily, and turns GeoprobeError into one line on stderr and exit 3."""

    _loaded: set[str]

    def _load(self, module: str) -> None:
        loaded = self.__dict__.setdefault("_loaded", set())
        if module not in loaded:
            loaded.add(module)
            importlib.import_module(f"geoprobe.cli.{module}").register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GeoprobeError as exc:
            stderr = ctx.obj.stderr if isinstance(ctx.obj, Environment) else None
            click.echo(f"geoprobe: error: {exc}", err=stderr is None, file=stderr)
            ctx.exit(int(ExitStatus.ERROR))


@click.group(cls=GeoprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoprobe")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Locate this VM by RTTs to landmarks, watch for live migration across borders, and defend."""
    if ctx.obj is None:
        ctx.obj = Environment.from_process()


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Entry point; tests pass ``env`` to inject streams and directories."""
    try:
        cli.main(args=argv, obj=env, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
