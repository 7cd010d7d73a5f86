"""CLI: ``geoprobe check``, a Nagios/Icinga plugin (stateless, or cron mode with ``--state``).

Options and the status line only; what the check does is ``geoprobe.check.run_check``. Usage errors
are UNKNOWN too: click's own exit 2 would read as CRITICAL to a monitoring system. One status line
on stdout, perfdata after ``|``; the policy's action notes and errors go to stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from geoprobe.check import CheckResult, plugin_text, run_check
from geoprobe.cli.env import Environment
from geoprobe.cli.options import allow_option, landmarks_option, method_option
from geoprobe.errors import GeoprobeError
from geoprobe.settings import resolve_settings
from geoprobe.status import ExitStatus
from geoprobe.watch.jurisdiction import Basis


class NagiosCommand(click.Command):
    """A usage error is UNKNOWN (3) with a Nagios status line, not click's exit 2 (CRITICAL)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            env = parent.find_object(Environment) if parent is not None else None
            line = f"GEOPROBE UNKNOWN - usage: {plugin_text(exc.format_message())}"
            if env is not None:
                env.stdout.write(line + "\n")
            else:
                click.echo(line)
            raise click.exceptions.Exit(int(ExitStatus.UNKNOWN)) from None


@click.command("check", cls=NagiosCommand)
@landmarks_option()
@allow_option()
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy TOML: allowed set and confidence thresholds (--allow overrides its set).",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cron mode: compare with the last fix stored here, report a migration, record this fix.",
)
@click.option(
    "--replay",
    "replay_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use saved measurements instead of probing.",
)
@method_option()
@click.option("--samples", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option(
    "--min-probability", type=click.FloatRange(0.5, 1.0), help="Override the policy's confidence."
)
@click.option(
    "--min-landmarks", type=click.IntRange(1), help="Override the policy's minimum landmarks."
)
@click.option(
    "--basis",
    type=click.Choice(["sound", "calibrated"]),
    default="sound",
    show_default=True,
    help="What an 'outside' verdict may rest on: sound (proof) or also calibrated probability.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --policy: print the actions a migration calls for, run none.",
)
@click.pass_obj
def check_cmd(
    env: Environment,
    landmarks_path: Path | None,
    allow: str | None,
    policy_path: Path | None,
    state_dir: Path | None,
    replay_path: Path | None,
    method: str | None,
    samples: int,
    timeout: float,
    min_probability: float | None,
    min_landmarks: int | None,
    basis: Basis,
    dry_run: bool,
) -> None:
    """Nagios/Icinga plugin: is this machine inside the allowed jurisdictions?

    In cron mode (--state) a migration since the last run is reported, and with --policy the
    policy's response to it runs (each action once per event, audited in the state store).
    """
    try:
        from geoprobe.landmarks import catalogue_or_default, preferred_method

        settings = resolve_settings(allow, policy_path, basis, min_probability, min_landmarks)
        cat = catalogue_or_default(landmarks_path, env.cache_dir)
        result = run_check(
            cat,
            settings,
            method=method or (preferred_method(cat) if replay_path is None else "replay"),
            state=state_dir,
            replay=replay_path,
            samples=samples,
            timeout=timeout,
            dry_run=dry_run,
            cache_dir=env.cache_dir,
        )
    except GeoprobeError as exc:
        # Nagios reads the status line on stdout; people and cron mail read stderr.
        env.stderr.write(f"geoprobe check: {exc}\n")
        result = CheckResult(ExitStatus.UNKNOWN, str(exc))
    for note in result.notes:
        env.stderr.write(f"geoprobe check: {note}\n")
    env.stdout.write(result.line() + "\n")
    env.stdout.flush()
    raise click.exceptions.Exit(int(result.status))


def register(group: click.Group) -> None:
    group.add_command(check_cmd)


__all__: Sequence[str] = ("check_cmd", "register")
