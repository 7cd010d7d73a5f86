"""Hand-made MaxMind DB files: valid ones in every record size, and hostile ones.

mmdb_writer builds ordinary databases; these build what it never would (a pointer loop, a
pointer amplification, sizes past the end), after the MaxMind DB format spec.
"""

from __future__ import annotations

import struct
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _head(kind: int, size: int) -> bytes:
    """Control byte(s) for a value of ``kind`` (spec type number) and ``size``."""
    if size < 29:
        low, extra = size, b""
    elif size < 29 + 256:
        low, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        low, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        low, extra = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | low]) + extra
    return bytes([low, kind - 7]) + extra


class U16(int):
    """An unsigned 16-bit value (the spec types record_size and ip_version this way)."""


class U64(int):
    """An unsigned 64-bit value (build_epoch)."""


def pointer(offset: int) -> bytes:
    """A 4-byte pointer (size class 3) to ``offset`` in the data section."""
    return bytes([(1 << 5) | (3 << 3)]) + offset.to_bytes(4, "big")


def encode(v: Any) -> bytes:
    """A minimal encoder: maps, arrays, UTF-8 strings, unsigned ints, doubles; bytes pass as is."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return _head(2, len(v.encode())) + v.encode()
    if isinstance(v, bool):
        return _head(14, int(v))
    if isinstance(v, int):
        kind, width = (5, 2) if isinstance(v, U16) else (9, 8) if isinstance(v, U64) else (6, 4)
        raw = v.to_bytes(width, "big").lstrip(b"\0")
        return _head(kind, len(raw)) + raw
    if isinstance(v, float):
        return _head(3, 8) + struct.pack(">d", v)
    if isinstance(v, dict):
        return _head(7, len(v)) + b"".join(encode(k) + encode(x) for k, x in v.items())
    if isinstance(v, list):
        return _head(11, len(v)) + b"".join(encode(x) for x in v)
    raise TypeError(v)


def database(
    data: bytes,
    *,
    record_size: int = 24,
    record_offset: int = 0,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """One IPv4 search node: the lower half of the address space is empty, the upper half points
    to ``record_offset`` in ``data``."""
    node_count = 1
    empty, hit = node_count, node_count + 16 + record_offset
    if record_size == 24:
        node = empty.to_bytes(3, "big") + hit.to_bytes(3, "big")
    elif record_size == 28:
        node = (
            empty.to_bytes(3, "big")
            + bytes([((empty >> 24) << 4) | (hit >> 24)])
            + hit.to_bytes(3, "big")
        )
    else:
        node = struct.pack(">II", empty, hit)
    metadata = {
        "node_count": node_count,
        "record_size": U16(record_size),
        "ip_version": U16(4),
        "database_type": "Hand-City",
        "languages": ["en"],
        "description": {"en": "hand-made"},
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(1700000000),
    }
    metadata.update(meta or {})
    return node + bytes(16) + data + METADATA_MARKER + encode(metadata)


def city(iso: str, lat: float, lon: float) -> bytes:
    return encode({"country": {"iso_code": iso}, "location": {"latitude": lat, "longitude": lon}})


def amplification(levels: int = 7, fanout: int = 16) -> bytes:
    """Each level an array of ``fanout`` pointers to the level below: a few hundred bytes that
    decode to ``fanout ** levels`` strings."""
    data = encode("x" * 64)
    offsets = [0]
    for _ in range(levels):
        offsets.append(len(data))
        data += _head(11, fanout) + pointer(offsets[-2]) * fanout
    # the record: a map whose "location" points at the top level of the amplification
    record = len(data)
    data += (
        _head(7, 2)
        + encode("country")
        + encode({"iso_code": "DE"})
        + encode("location")
        + pointer(offsets[-1])
    )
    return database(data, record_offset=record)


def pointer_loop() -> bytes:
    """A record that is a pointer to itself."""
    return database(pointer(0))


def nested(depth: int = 2000) -> bytes:
    """Arrays nested ``depth`` deep."""
    return database(_head(11, 1) * depth + encode("x"))


def oversized_string() -> bytes:
    """A string whose size runs far past the end of the file."""
    return database(_head(2, 16_000_000) + b"abc")
