"""A small reader of MaxMind DB files (GeoLite2 / DB-IP City), after the published format spec.

Our own, because the maxminddb and geoip2 packages are Apache-2.0 and geoprobe is GPL-2.0 with
scapy (GPL-2.0-only). The format: a binary search tree over address bits, a 16-byte separator, a
data section of typed values, and a metadata map after the marker ``\\xab\\xcd\\xefMaxMind.com``.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
from pathlib import Path
from typing import Any, Self

from geoprobe.errors import InputError

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_MAX_METADATA = 128 * 1024


class MMDBError(InputError):
    """The file is not a MaxMind DB or is corrupt."""


class Decoder:
    """Decodes the typed values of a data section starting at ``base`` in ``buf``."""

    def __init__(self, buf: bytes | mmap.mmap, base: int, *, file: str) -> None:
        self.buf = buf
        self.base = base
        self.file = file

    def _fail(self, why: str) -> MMDBError:
        return MMDBError(f"corrupt MaxMind DB: {why}", file=self.file)

    def _take(self, offset: int, n: int) -> bytes:
        if offset < 0 or offset + n > len(self.buf):
            raise self._fail(f"read past the end at {offset}")
        return bytes(self.buf[offset : offset + n])

    def decode(self, offset: int, depth: int = 0) -> tuple[Any, int]:
        """The value at ``offset`` (absolute) and the offset just after it."""
        if depth > 64:
            raise self._fail("nesting too deep")
        ctrl = self._take(offset, 1)[0]
        offset += 1
        kind = ctrl >> 5
        if kind == 1:  # pointer: its own size encoding; the target is decoded, not the pointer
            ss, vvv = (ctrl >> 3) & 0x3, ctrl & 0x7
            raw = self._take(offset, ss + 1)
            offset += ss + 1
            if ss == 0:
                ptr = (vvv << 8) | raw[0]
            elif ss == 1:
                ptr = ((vvv << 16) | int.from_bytes(raw, "big")) + 2048
            elif ss == 2:
                ptr = ((vvv << 24) | int.from_bytes(raw, "big")) + 526336
            else:
                ptr = int.from_bytes(raw, "big")
            value, _ = self.decode(self.base + ptr, depth + 1)
            return value, offset
        if kind == 0:  # extended type in the next byte
            kind = 7 + self._take(offset, 1)[0]
            offset += 1
        size = ctrl & 0x1F
        if size >= 29:
            extra = size - 28
            n = int.from_bytes(self._take(offset, extra), "big")
            offset += extra
            size = (29, 285, 65821)[extra - 1] + n
        return self._value(kind, size, offset, depth)

    def _value(self, kind: int, size: int, offset: int, depth: int) -> tuple[Any, int]:
        if kind == 2:
            return self._take(offset, size).decode("utf-8", "replace"), offset + size
        if kind == 3:
            if size != 8:
                raise self._fail("double of size != 8")
            return struct.unpack(">d", self._take(offset, 8))[0], offset + 8
        if kind == 4:
            return self._take(offset, size), offset + size
        if kind in (5, 6, 9, 10):  # uint16/32/64/128
            return int.from_bytes(self._take(offset, size), "big"), offset + size
        if kind == 8:  # int32, stored in up to 4 bytes
            raw = self._take(offset, size).rjust(4, b"\x00")
            return struct.unpack(">i", raw)[0], offset + size
        if kind == 7:
            out: dict[Any, Any] = {}
            for _ in range(size):
                key, offset = self.decode(offset, depth + 1)
                val, offset = self.decode(offset, depth + 1)
                out[key] = val
            return out, offset
        if kind == 11:
            items = []
            for _ in range(size):
                val, offset = self.decode(offset, depth + 1)
                items.append(val)
            return items, offset
        if kind == 14:
            return bool(size), offset
        if kind == 15:
            if size != 4:
                raise self._fail("float of size != 4")
            return struct.unpack(">f", self._take(offset, 4))[0], offset + 4
        raise self._fail(f"unknown data type {kind}")


class Reader:
    """Look addresses up in one .mmdb file (memory-mapped; close it or use ``with``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as f:
                self._buf: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=self.path
            ) from None
        start = self._buf.rfind(METADATA_MARKER, max(0, len(self._buf) - _MAX_METADATA))
        if start < 0:
            raise MMDBError("not a MaxMind DB (no metadata marker)", file=self.path)
        meta_at = start + len(METADATA_MARKER)
        meta, _ = Decoder(self._buf, meta_at, file=str(self.path)).decode(meta_at)
        if not isinstance(meta, dict):
            raise MMDBError("metadata is not a map", file=self.path)
        self.metadata: dict[str, Any] = meta
        try:
            self.node_count = int(meta["node_count"])
            self.record_size = int(meta["record_size"])
            self.ip_version = int(meta["ip_version"])
        except (KeyError, TypeError, ValueError):
            raise MMDBError(
                "metadata lacks node_count, record_size or ip_version", file=self.path
            ) from None
        if self.record_size not in (24, 28, 32):
            raise MMDBError(f"unsupported record size {self.record_size}", file=self.path)
        self._node_bytes = self.record_size * 2 // 8
        self._tree_size = self._node_bytes * self.node_count
        if self._tree_size + 16 > start:
            raise MMDBError("search tree larger than the file", file=self.path)
        self._data = Decoder(self._buf, self._tree_size + 16, file=str(self.path))
        self._ipv4_start = self._find_ipv4_start()

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def database_type(self) -> str:
        return str(self.metadata.get("database_type", ""))

    def _record(self, node: int, bit: int) -> int:
        off = node * self._node_bytes
        b = self._buf[off : off + self._node_bytes]
        if self.record_size == 24:
            return int.from_bytes(b[3:6] if bit else b[0:3], "big")
        if self.record_size == 28:
            if bit:
                return ((b[3] & 0x0F) << 24) | int.from_bytes(b[4:7], "big")
            return ((b[3] & 0xF0) << 20) | int.from_bytes(b[0:3], "big")
        return int.from_bytes(b[4:8] if bit else b[0:4], "big")

    def _find_ipv4_start(self) -> int:
        """IPv4 addresses live under ::/96 of an IPv6 tree: follow 96 zero bits once."""
        if self.ip_version != 6:
            return 0
        node = 0
        for _ in range(96):
            if node >= self.node_count:
                break
            node = self._record(node, 0)
        return node

    def get(self, ip: str) -> Any | None:
        """The record for ``ip`` (a dict for City databases), or None when the tree has none."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise InputError(f"not an IP address: {ip!r}", field="ip") from None
        if addr.version == 6 and self.ip_version == 4:
            return None
        node = self._ipv4_start if addr.version == 4 else 0
        bits = addr.max_prefixlen
        value = int(addr)
        for i in range(bits):
            if node >= self.node_count:
                break
            node = self._record(node, (value >> (bits - 1 - i)) & 1)
        if node == self.node_count:
            return None  # empty
        if node < self.node_count:
            raise MMDBError("search tree ended inside the tree", file=self.path)
        offset = self._tree_size + (
            node - self.node_count
        )  # = data section start + (record - count - 16)
        value_, _ = self._data.decode(offset)
        return value_
