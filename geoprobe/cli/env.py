"""The injected environment (httpie-style): streams, terminal facts and directories.

Commands read everything process-wide from here, so tests can run them in-process with
their own streams and state dirs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from geoprobe import paths


@dataclass
class Environment:
    stdin: IO[str] = field(default_factory=lambda: sys.stdin)
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    stdout_isatty: bool = False
    stderr_isatty: bool = False
    state_dir: Path = field(default_factory=paths.state_dir)
    cache_dir: Path = field(default_factory=paths.cache_dir)
    runtime_dir: Path = field(default_factory=paths.runtime_dir)
    config_dirs: list[Path] = field(default_factory=paths.config_dirs)  # most specific first
    is_root: bool = False

    @classmethod
    def from_process(cls) -> Environment:
        return cls(
            stdout_isatty=sys.stdout.isatty(),
            stderr_isatty=sys.stderr.isatty(),
            is_root=hasattr(os, "geteuid") and os.geteuid() == 0,
        )
