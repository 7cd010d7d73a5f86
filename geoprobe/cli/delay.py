"""CLI: ``geoprobe delay`` — dirty memory at a capped rate to hold a live migration in pre-copy."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from geoprobe.cli.env import Environment
from geoprobe.defend.delay import (
    CONTENTS,
    DEFAULT_CONTENT,
    DEFAULT_CPU,
    DEFAULT_DURATION,
    Dirtier,
    Progress,
    flag_stop,
)
from geoprobe.policy import parse_size


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def register(group: click.Group) -> None:
    @group.command("delay")
    @click.option(
        "--memory",
        default="256M",
        show_default=True,
        callback=_size,
        help="Cap on this process's peak RSS; the buffer is what fits under it.",
    )
    @click.option(
        "--cpu",
        type=click.FloatRange(0.01, 1.0),
        default=DEFAULT_CPU,
        show_default=True,
        help="Share of one CPU the writer may use.",
    )
    @click.option(
        "--duration",
        type=click.FloatRange(0.1, 86400),
        default=DEFAULT_DURATION,
        show_default=True,
        help="Seconds to run at most.",
    )
    @click.option(
        "--rate",
        type=click.FloatRange(1, None),
        default=None,
        help="Pages per second to dirty at most (default: as fast as --cpu allows).",
    )
    @click.option(
        "--content",
        type=click.Choice(CONTENTS),
        default=DEFAULT_CONTENT,
        show_default=True,
        help="random: fresh random bytes in every page at every write (defeats XBZRLE and "
        "multifd compression); byte: one byte per page over random pages (cheaper, defeats "
        "multifd compression only).",
    )
    @click.option(
        "--until-clear",
        type=click.Path(path_type=Path),
        default=None,
        help="Stop as soon as this file exists (the watch daemon creates it when the "
        "verdict clears).",
    )
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="JSON lines on stdout: progress each second, then the summary.",
    )
    @click.pass_obj
    def delay(
        env: Environment,
        memory: int,
        cpu: float,
        duration: float,
        rate: float | None,
        content: str,
        until_clear: Path | None,
        as_json: bool,
    ) -> None:
        """Dirty one byte per 4 KiB page, round after round, until DURATION, SIGTERM/SIGINT or
        the clear flag; report pages dirtied per second."""
        dirtier = Dirtier(memory, content=content)
        stop: list[str] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.append(signal.Signals(signum).name)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        flag = flag_stop(until_clear)
        if not as_json:
            env.stderr.write(
                f"geoprobe delay: buffer {dirtier.buffer_bytes >> 20} MiB under a "
                f"{memory >> 20} MiB RSS cap, {content} pages, cpu {cpu:g}, up to {duration:g} s\n"
            )

        def report(p: Progress) -> None:
            if as_json:
                env.stdout.write(json.dumps(p.to_json()) + "\n")
                env.stdout.flush()
            else:
                end = "\r" if env.stderr_isatty else "\n"
                env.stderr.write(
                    f"{p.elapsed_s:6.1f} s  {p.pages_per_s:12,.0f} pages/s  "
                    f"{p.dirty_mib_per_s:8.1f} MiB/s dirty  rss {p.rss_bytes >> 20} MiB{end}"
                )
                env.stderr.flush()

        try:
            summary = dirtier.run(
                cpu=cpu,
                rate=rate,
                duration=duration,
                progress=report,
                should_stop=lambda: f"signal {stop[0]}" if stop else flag(),
            )
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        out: dict[str, Any] = summary.to_json()
        if as_json:
            env.stdout.write(json.dumps({"summary": out}) + "\n")
        else:
            if env.stderr_isatty:
                env.stderr.write("\n")
            env.stdout.write(
                f"stopped ({summary.reason}) after {summary.elapsed_s:.1f} s: "
                f"{summary.pages:,} pages, {summary.pages_per_s:,.0f} pages/s "
                f"({summary.dirty_mib_per_s:.1f} MiB/s dirtied), peak RSS {summary.peak_rss_bytes >> 20} MiB "
                f"of {summary.memory_cap >> 20} MiB cap\n"
            )
