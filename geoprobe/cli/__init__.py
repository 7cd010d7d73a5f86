"""The ``geoprobe`` command: a thin click layer over the library.

Each subcommand lives in its own module and exposes ``register(group)``. Commands parse
arguments, call the core, and render; errors from the core (``GeoprobeError``) become one
line on stderr and exit 3; anything unexpected becomes one ``internal error`` line and exit 3
(``GEOPROBE UNKNOWN`` on stdout for ``check``), never a traceback unless ``GEOPROBE_DEBUG`` is
set; Ctrl-C exits 130. Every exit code is an ``ExitStatus`` (geoprobe.status).
"""

from __future__ import annotations

import importlib
import os
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
    "attest": "attest",  # attest key|run|verify
    "check": "check",  # Nagios/Icinga plugin
    "delay": "delay",
    "demo": "testbed",
    "evaluate": "evaluate",
    "keyserver": "keyserver",  # keyserver serve|check|keygen|split
    "landmark": "landmark",  # landmark serve|keygen
    "landmarks": "sync",  # landmarks sync
    "locate": "locate",
    "policy": "policy",
    "testbed": "testbed",  # testbed run|move|status
    "unlock": "unlock",
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
            _say(ctx, f"geoprobe: error: {one_line(exc)}")
            ctx.exit(int(ExitStatus.ERROR))
        except KeyboardInterrupt:
            _say(ctx, "geoprobe: interrupted")
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a crash must still be one line and a defined exit
            if os.environ.get(DEBUG_VAR):
                raise
            line = f"internal error: {type(exc).__name__}: {one_line(exc)}"
            if ctx.invoked_subcommand == "check":
                # Nagios reads stdout: anything unexpected is UNKNOWN, never WARNING.
                _say(ctx, f"GEOPROBE UNKNOWN - {line}", out=True)
            _say(ctx, f"geoprobe: {line} (set {DEBUG_VAR}=1 for a traceback)")
            ctx.exit(int(ExitStatus.UNKNOWN))


DEBUG_VAR = "GEOPROBE_DEBUG"
_MAX_LINE = 500


def one_line(exc: BaseException) -> str:
    """An exception's message flattened and bounded: a hostile file cannot flood the terminal."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001  (a str() that itself fails: huge int, broken __str__)
        text = ""
    if len(text) > _MAX_LINE:
        text = text[: _MAX_LINE - 3] + "..."
    return text or type(exc).__name__


def _say(ctx: click.Context, line: str, *, out: bool = False) -> None:
    env = ctx.obj if isinstance(ctx.obj, Environment) else None
    stream = (env.stdout if out else env.stderr) if env is not None else None
    try:
        click.echo(line, err=not out and stream is None, file=stream)
    except OSError:  # stderr itself gone (closed pipe, full disk): the exit code still says it
        pass


@click.group(cls=GeoprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoprobe-vm")
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
        if isinstance(exc.code, str):  # sys.exit("message"): Python prints it and exits 1
            return int(ExitStatus.ERROR)
        return int(exc.code or ExitStatus.OK)
    except KeyboardInterrupt:
        return int(ExitStatus.INTERRUPTED)
    except Exception as exc:  # raised outside a command (while loading or parsing)
        if os.environ.get(DEBUG_VAR):
            raise
        stderr = env.stderr if env is not None else sys.stderr
        try:
            stderr.write(f"geoprobe: internal error: {type(exc).__name__}: {one_line(exc)}\n")
        except OSError:
            pass
        return int(ExitStatus.UNKNOWN)
    return int(ExitStatus.OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
