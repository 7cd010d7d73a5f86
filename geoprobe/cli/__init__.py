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

# One module per subcommand family (ripe-atlas-tools style).
COMMAND_MODULES = (
    "evaluate",  # geoprobe evaluate
    "locate",  # geoprobe locate, geoprobe verify
    "landmark",  # geoprobe landmark serve|keygen, geoprobe landmarks sync
    "testbed",  # geoprobe testbed run|move, geoprobe demo
    "check",  # geoprobe check (Nagios plugin)
    "watch",  # geoprobe watch
    "policy",  # geoprobe policy check
    "delay",  # geoprobe delay
)


class GeoprobeGroup(click.Group):
    """Turns GeoprobeError into a one-line message and exit 3 for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GeoprobeError as exc:
            click.echo(f"geoprobe: error: {exc}", err=True)
            ctx.exit(int(ExitStatus.ERROR))


@click.group(cls=GeoprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoprobe")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Locate this VM by RTTs to landmarks, watch for live migration across borders, and defend."""
    if ctx.obj is None:
        ctx.obj = Environment.from_process()


for _name in COMMAND_MODULES:
    importlib.import_module(f"geoprobe.cli.{_name}").register(cli)


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Entry point; tests pass ``env`` to inject streams and directories."""
    try:
        cli.main(args=argv, obj=env, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
