"""Errors that reach the user as one line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class GeoprobeError(Exception):
    """Base class: anything the CLI turns into a one-line message and a non-zero exit."""


class InputError(GeoprobeError):
    """Bad input: names the file, the entry and the field, so the user can fix it at once."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        entry: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.entry = entry
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.entry is not None:
            parts.append(f"entry {self.entry}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        where = ": ".join(parts)
        return f"{where}: {self.message}" if where else self.message


class MeasurementError(GeoprobeError):
    """Nothing usable could be measured (all landmarks silent, no permission, ...)."""


class InconsistentConstraints(GeoprobeError):
    """The distance bounds have an empty intersection; ``culprits`` names the suspects."""

    def __init__(self, message: str, culprits: list[str]) -> None:
        self.culprits = culprits
        super().__init__(message)
