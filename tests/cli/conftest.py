"""Fixtures shared by the command tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class HookPolicy:
    """A policy whose confirmed crossing runs one hook that appends its stdin to ``got``."""

    policy: Path
    got: Path

    def events(self) -> list[str]:
        return (
            [x for x in self.got.read_text().splitlines() if x.strip()] if self.got.exists() else []
        )


@pytest.fixture()
def hook_policy(tmp_path: Path) -> HookPolicy:
    got = tmp_path / "hook-got.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {got}\necho >> {got}\n")
    hook.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[jurisdiction]\nallow = ["DE"]\n\n[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["{hook}"]\n'
    )
    return HookPolicy(policy, got)
