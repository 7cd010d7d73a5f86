"""CLI: placeholder until its issue lands; registers no command yet."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    return None
