"""CLI: ``geoprobe keyserver serve|check|keygen|split``: the location-gated key release server."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO

import click

from geoprobe.cli.env import Environment
from geoprobe.errors import InputError

CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The server's TOML config (docs/keyrelease.md).",
)


@click.group("keyserver")
def keyserver_group() -> None:
    """Release secrets only to clients whose round trip is within their bound."""


@keyserver_group.command("check")
@CONFIG
@click.pass_obj
def check_cmd(env: Environment, config_path: Path) -> None:
    """Validate the config (keys, secrets, every client's bound) and print what it allows."""
    from geoprobe.keyrelease import config, keys

    cfg = config.load_server(config_path)
    keys.load_sign_key(cfg.key_path, field="key")
    env.stdout.write(
        f"{cfg.path}: server {cfg.server_id} on udp {cfg.host}:{cfg.port},"
        f" {len(cfg.secrets)} secret(s)\n"
    )
    for c in cfg.clients.values():
        env.stdout.write(f"  client {c.id}: {', '.join(c.secrets)} within {c.bound_written}\n")


def _open_log(path: Path) -> IO[str]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise InputError(f"cannot open the log: {exc.strerror}", file=path, field="log") from None
    return os.fdopen(fd, "a", encoding="utf-8")


@keyserver_group.command("serve")
@CONFIG
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Listen on this port instead of the config's (0: any free port).",
)
@click.pass_obj
def serve_cmd(env: Environment, config_path: Path, port: int | None) -> None:
    """Serve in the foreground until SIGTERM or SIGINT; one JSON line per release or refusal."""
    from geoprobe.keyrelease import config, keys, server

    cfg = config.load_server(config_path)
    key = keys.load_sign_key(cfg.key_path, field="key")
    log_stream = _open_log(cfg.log_path) if cfg.log_path is not None else env.stdout
    try:
        sock = server.bind(cfg.host, cfg.port if port is None else port)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}", file=cfg.path, field="listen"
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    srv = server.ReleaseServer(cfg, key, server.JsonLog(log_stream))
    host, bound = sock.getsockname()[:2]
    pub = keys.b64(keys.ed25519_raw(key))
    env.stderr.write(f"keyserver {cfg.server_id} listening on udp {host}:{bound} (pubkey {pub})\n")
    env.stderr.flush()
    try:
        srv.serve(sock, stop)
    finally:
        sock.close()
        env.stderr.write(f"keyserver stopped: {srv.released} released, {srv.refused} refused\n")
        if log_stream is not env.stdout:
            log_stream.close()


@keyserver_group.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the private key files (mode 0600).",
)
@click.option(
    "--client", is_flag=True, help="A client's keys (signing and sealing) instead of a server's."
)
@click.pass_obj
def keygen_cmd(env: Environment, out_dir: Path, client: bool) -> None:
    """Create a server's Ed25519 key, or a client's Ed25519 and X25519 keys."""
    from geoprobe.keyrelease import keys

    if client:
        ck = keys.keygen_client(out_dir)
        env.stdout.write(
            f"private keys: {ck.sign_path}, {ck.box_path} (mode 0600)\n"
            "for the server's [[clients]] entry:\n"
            f'sign_pubkey = "{ck.sign_pubkey}"\n'
            f'box_pubkey = "{ck.box_pubkey}"\n'
        )
    else:
        sk = keys.keygen_server(out_dir)
        env.stdout.write(
            f"private key: {sk.key_path} (mode 0600)\n"
            f'for the client\'s [[servers]] entry:\npubkey = "{sk.pubkey}"\n'
        )


@keyserver_group.command("split")
@click.option("--k", "k", required=True, type=click.IntRange(2, 255), help="Releases needed.")
@click.option("--n", "n", required=True, type=click.IntRange(2, 255), help="Shares to write.")
@click.option(
    "--in",
    "in_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The secret (1-256 bytes); '-' reads stdin.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for share-1 .. share-N (mode 0600), one per server.",
)
@click.pass_obj
def split_cmd(env: Environment, k: int, n: int, in_path: Path, out_dir: Path) -> None:
    """Split a secret into n shares, any k of which rebuild it (Shamir over GF(256))."""
    from geoprobe.keyrelease import shares, wire

    if k > n:
        raise click.BadParameter("must not exceed --n", param_hint="--k")
    if str(in_path) == "-":
        secret = sys.stdin.buffer.read(wire.MAX_SECRET_LEN + 1)
    else:
        try:
            secret = in_path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", file=in_path) from None
    if not 1 <= len(secret) <= wire.MAX_SECRET_LEN - 1:
        raise InputError(
            f"a secret to split is 1-{wire.MAX_SECRET_LEN - 1} bytes, got {len(secret)}",
            file=in_path,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, share in enumerate(shares.split(secret, k, n), start=1):
        path = out_dir / f"share-{i}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise InputError(f"cannot create: {exc.strerror}", file=path) from None
        with os.fdopen(fd, "wb") as f:
            f.write(share)
        env.stdout.write(f"{path}\n")


def register(group: click.Group) -> None:
    group.add_command(keyserver_group)
