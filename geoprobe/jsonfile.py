"""Reading JSON that may be hostile: every loader of a user's file goes through here.

Size, encoding, nesting and number length are checked before (or while) parsing, so what a file
makes us allocate is bounded by its size, and every failure is an InputError naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def read_json(path: Path, *, limit: int = MAX_FILE_BYTES) -> Any:
    """Parse a JSON file whose size, encoding, nesting and numbers may all be hostile.

    Reads at most ``limit`` bytes, so what is allocated is bounded by the cap.
    """
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if len(data) > limit:
        raise InputError(f"larger than {limit // (1024 * 1024)} MiB: refused", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=path) from None
    return parse_json(text, file=path)


def parse_json(text: str, *, file: str | Path) -> Any:
    """``json.loads`` with nesting and integer length refused in one line naming ``file``."""
    if too_deep(text):
        raise InputError(f"nested more than {MAX_DEPTH} levels deep", file=file)
    try:
        return json.loads(text)  # NaN/Infinity pass here; the field checks name them
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", file=file
        ) from None
    except (ValueError, RecursionError) as exc:  # int-string limit, nesting
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"not acceptable JSON: {msg}", file=file) from None


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Bracket depth outside strings, before json's recursive parser (or a later walk) sees it."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False
