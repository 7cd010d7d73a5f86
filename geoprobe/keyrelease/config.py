"""The key server's and the client's TOML configs, validated in full when loaded.

Every problem is one InputError naming the file, the entry and the field, so a typo (or a client
entry without its bound) stops the server before it could release anything. Relative paths are
read from the config file's directory.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError
from geoprobe.keyrelease import keys as rkeys
from geoprobe.keyrelease import wire

KM_PER_MS = 100.0  # the sound bound: light in fibre covers ~200 km/ms, there and back
MAX_BOUND_MS = 1000.0
DEFAULT_TTL_MS = 1000
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_ATTEMPTS = 3
MAX_CONFIG_BYTES = 1 << 20
CLIENT_CONFIG = "unlock.toml"


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """What the server knows of one client: its keys, the secrets it may have, and its bound."""

    id: str
    sign_pubkey: bytes
    box_pubkey: bytes
    secrets: tuple[str, ...]
    bound_ns: int
    bound_written: str  # "5 ms", or "5 ms (500 km)" when written in km: for log lines


@dataclass(frozen=True, slots=True)
class ServerConfig:
    path: Path
    server_id: str
    key_path: Path
    host: str
    port: int
    log_path: Path | None
    challenge_ttl_ms: int
    secrets: Mapping[str, bytes] = field(repr=False)
    clients: Mapping[str, ClientEntry] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerRef:
    id: str
    host: str
    port: int
    pubkey: bytes


@dataclass(frozen=True, slots=True)
class SecretPlan:
    """Which servers hold a secret (or its shares), and how many releases rebuild it."""

    name: str
    servers: tuple[str, ...]
    k: int


@dataclass(frozen=True, slots=True)
class ClientConfig:
    path: Path
    client_id: str
    sign_key_path: Path
    box_key_path: Path
    timeout_ms: int
    attempts: int
    servers: Mapping[str, ServerRef]
    secrets: Mapping[str, SecretPlan]

    def plan(self, name: str) -> SecretPlan:
        """The config's plan for ``name``; without one, any single server that releases it."""
        wire.check_id(name, "secret name")
        if name in self.secrets:
            return self.secrets[name]
        return SecretPlan(name, tuple(self.servers), 1)


# --- reading ------------------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read config: {exc.strerror}", file=path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"larger than {MAX_CONFIG_BYTES} bytes", file=path)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("not UTF-8", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", file=path) from None
    except RecursionError:
        raise InputError("nested too deeply", file=path) from None


class _Table:
    """A TOML table read field by field, each error naming file, entry and field."""

    def __init__(self, raw: Any, path: Path, entry: str | None, allowed: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise InputError("must be a table", file=path, entry=entry)
        self.raw, self.path, self.entry = raw, path, entry
        for key in raw:
            if key not in allowed:
                raise InputError(
                    f"unknown key (known: {', '.join(allowed)})", file=path, entry=entry, field=key
                )

    def error(self, message: str, key: str) -> InputError:
        return InputError(message, file=self.path, entry=self.entry, field=key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if value is None:
            raise self.error("missing", key)
        if not isinstance(value, str) or not value:
            raise self.error("must be a non-empty string", key)
        return value

    def ident(self, key: str) -> str:
        value = self.text(key)
        try:
            wire.check_id(value, key)
        except ValueError as exc:
            raise self.error(str(exc), key) from None
        return value

    def file(self, key: str, default: str | None = None) -> Path:
        p = Path(self.text(key, default)).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(f"must be an integer from {lo} to {hi}", key)
        return value

    def number(self, key: str) -> float:
        value = self.raw[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise self.error("must be a positive number", key)
        return float(value)

    def public(self, key: str, kind: str) -> bytes:
        if key not in self.raw:
            raise self.error("missing", key)
        try:
            return rkeys.parse_public(self.raw[key], kind)
        except (ValueError, TypeError) as exc:
            raise self.error(str(exc), key) from None

    def idents(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key)
        if value is None:
            raise self.error("missing", key)
        if not isinstance(value, list) or not value:
            raise self.error("must be a non-empty list of names", key)
        out = []
        for v in value:
            if not isinstance(v, str):
                raise self.error("must be a non-empty list of names", key)
            try:
                wire.check_id(v, key)
            except ValueError as exc:
                raise self.error(str(exc), key) from None
            out.append(v)
        if len(set(out)) != len(out):
            raise self.error("names a server or secret twice", key)
        return tuple(out)


def parse_address(
    text: str, default_port: int = wire.DEFAULT_PORT, *, any_port: bool = False
) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``[v6]`` -> (host, port).

    The port is 0 if ``any_port``.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare name or a bare IPv6 address
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        return host, default_port
    lo = 0 if any_port else 1
    if not port_text.isdigit() or not lo <= int(port_text) <= 65535:
        raise ValueError(f"{port_text!r} is not a port ({lo}-65535)")
    return host, int(port_text)


def _bound(t: _Table) -> tuple[int, str]:
    if t.has("bound_ms") and t.has("bound_km"):
        raise t.error("give bound_ms or bound_km, not both", "bound_km")
    if t.has("bound_ms"):
        ms = t.number("bound_ms")
        written = f"{ms:g} ms"
    elif t.has("bound_km"):
        km = t.number("bound_km")
        ms = km / KM_PER_MS
        written = f"{ms:g} ms ({km:g} km)"
    else:
        raise t.error(
            "missing: every client needs its round-trip bound (bound_ms, or bound_km at"
            f" {KM_PER_MS:g} km per ms)",
            "bound_ms",
        )
    if ms > MAX_BOUND_MS:
        raise t.error(
            f"must be at most {MAX_BOUND_MS:g} ms", "bound_km" if "km" in written else "bound_ms"
        )
    return round(ms * 1e6), written


def _secret(path: Path, cfg: Path, name: str) -> bytes:
    data = rkeys.read_private_file(path, field=f"secrets.{name}")
    if not 1 <= len(data) <= wire.MAX_SECRET_LEN:
        raise InputError(
            f"a secret is 1-{wire.MAX_SECRET_LEN} bytes, {path} has {len(data)}",
            file=cfg,
            field=f"secrets.{name}",
        )
    return data


def parse_server(raw: Mapping[str, Any], path: Path) -> ServerConfig:
    top = _Table(
        raw,
        path,
        None,
        ("server_id", "key", "listen", "log", "challenge_ttl_ms", "secrets", "clients"),
    )
    server_id = top.ident("server_id")
    key_path = top.file("key")
    try:
        host, port = parse_address(
            top.text("listen", f"0.0.0.0:{wire.DEFAULT_PORT}"), any_port=True
        )
    except ValueError as exc:
        raise top.error(str(exc), "listen") from None
    log_path = top.file("log") if top.has("log") else None
    ttl = top.integer("challenge_ttl_ms", DEFAULT_TTL_MS, 10, 60_000)

    sec_raw = raw.get("secrets")
    if sec_raw is None:
        raise top.error("missing: a table of name = file", "secrets")
    sec = _Table(sec_raw, path, "secrets", tuple(sec_raw) if isinstance(sec_raw, dict) else ())
    secrets: dict[str, bytes] = {}
    for name in sec.raw:
        try:
            wire.check_id(name, "secret name")
        except ValueError as exc:
            raise sec.error(str(exc), name) from None
        secrets[name] = _secret(sec.file(name), path, name)

    items = raw.get("clients")
    if not isinstance(items, list) or not items:
        raise top.error("missing: at least one [[clients]] entry", "clients")
    clients: dict[str, ClientEntry] = {}
    for i, item in enumerate(items):
        t = _Table(
            item,
            path,
            f"clients[{i}]",
            ("id", "sign_pubkey", "box_pubkey", "secrets", "bound_ms", "bound_km"),
        )
        cid = t.ident("id")
        if cid in clients:
            raise t.error(f"client {cid!r} appears twice", "id")
        names = t.idents("secrets")
        for n in names:
            if n not in secrets:
                raise t.error(f"no secret {n!r} in [secrets]", "secrets")
        bound_ns, written = _bound(t)
        clients[cid] = ClientEntry(
            id=cid,
            sign_pubkey=t.public("sign_pubkey", "Ed25519"),
            box_pubkey=t.public("box_pubkey", "X25519"),
            secrets=names,
            bound_ns=bound_ns,
            bound_written=written,
        )
    return ServerConfig(
        path=path,
        server_id=server_id,
        key_path=key_path,
        host=host,
        port=port,
        log_path=log_path,
        challenge_ttl_ms=ttl,
        secrets=secrets,
        clients=clients,
    )


def load_server(path: str | Path) -> ServerConfig:
    p = Path(path)
    return parse_server(read_toml(p), p)


def parse_client(raw: Mapping[str, Any], path: Path) -> ClientConfig:
    top = _Table(
        raw,
        path,
        None,
        ("client_id", "sign_key", "box_key", "timeout_ms", "attempts", "servers", "secrets"),
    )
    client_id = top.ident("client_id")
    sign_key = top.file("sign_key", rkeys.CLIENT_SIGN_KEY)
    box_key = top.file("box_key", rkeys.CLIENT_BOX_KEY)
    timeout = top.integer("timeout_ms", DEFAULT_TIMEOUT_MS, 1, 60_000)
    attempts = top.integer("attempts", DEFAULT_ATTEMPTS, 1, 20)

    items = raw.get("servers")
    if not isinstance(items, list) or not items:
        raise top.error("missing: at least one [[servers]] entry", "servers")
    servers: dict[str, ServerRef] = {}
    for i, item in enumerate(items):
        t = _Table(item, path, f"servers[{i}]", ("id", "address", "pubkey"))
        sid = t.ident("id")
        if sid in servers:
            raise t.error(f"server {sid!r} appears twice", "id")
        try:
            host, port = parse_address(t.text("address"))
        except ValueError as exc:
            raise t.error(str(exc), "address") from None
        servers[sid] = ServerRef(sid, host, port, t.public("pubkey", "Ed25519"))

    plans: dict[str, SecretPlan] = {}
    sec_raw = raw.get("secrets", {})
    if not isinstance(sec_raw, dict):
        raise top.error("must be a table of [secrets.NAME] tables", "secrets")
    for name, item in sec_raw.items():
        t = _Table(item, path, f"secrets.{name}", ("servers", "k"))
        try:
            wire.check_id(name, "secret name")
        except ValueError as exc:
            raise InputError(str(exc), file=path, entry=f"secrets.{name}") from None
        names = t.idents("servers") if t.has("servers") else tuple(servers)
        for n in names:
            if n not in servers:
                raise t.error(f"no server {n!r} in [[servers]]", "servers")
        k = t.integer("k", 1, 1, len(names))
        plans[name] = SecretPlan(name, names, k)
    return ClientConfig(
        path=path,
        client_id=client_id,
        sign_key_path=sign_key,
        box_key_path=box_key,
        timeout_ms=timeout,
        attempts=attempts,
        servers=servers,
        secrets=plans,
    )


def default_client_config(dirs: Sequence[Path] | None = None) -> Path:
    """``unlock.toml`` in the first of ``dirs`` (default: ``geoprobe.paths.config_dirs()``) that
    has one, else /etc/geoprobe/unlock.toml."""
    from geoprobe import paths

    for d in dirs if dirs is not None else paths.config_dirs():
        if (d / CLIENT_CONFIG).exists():
            return d / CLIENT_CONFIG
    return Path("/etc/geoprobe") / CLIENT_CONFIG


def load_client(path: str | Path) -> ClientConfig:
    p = Path(path)
    return parse_client(read_toml(p), p)
