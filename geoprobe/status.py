"""Exit codes in one place (httpie-style): every command exits through this enum.

``check`` follows the Nagios plugin API (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN); the other
commands share the same numbers under names that say what they mean there. docs/architecture.md
lists each code and when it is used.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes; aliases name the same number as other commands use it."""

    OK = 0
    WARNING = 1  # check: straddles, too few landmarks, or moved within the allowed set
    CRITICAL = 2  # check: outside, or a crossing since the last run
    UNKNOWN = 3  # check: cannot measure, bad input, usage or internal error
    ACTION_FAILED = 1  # policy fire: an action failed or timed out
    VERIFY_FAILED = 1  # attest verify: verification ran and found a problem
    USAGE = 2  # other commands: a usage error (click's own code)
    ERROR = 3  # other commands: bad input, cannot measure, internal error; verify: bad evidence
    INTERRUPTED = 130  # Ctrl-C, as a shell reports a SIGINT
