"""Exit codes in one place (httpie-style), shared by every command."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes. ``check`` follows the Nagios plugin API exactly."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3
    # Non-check commands: 0 success, 2 usage (click's own), 3 bad input / cannot measure.
    ERROR = 3
