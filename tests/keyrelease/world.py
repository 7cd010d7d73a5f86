"""Key servers and clients made on disk for the tests: keys, secrets and both configs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from geoprobe.keyrelease import config, keys, server


@dataclass
class ServerSpec:
    server_id: str
    dir: Path
    pubkey: str
    config_path: Path
    port: int = 0


@dataclass
class World:
    root: Path
    client_id: str
    client_dir: Path
    sign_pubkey: str
    box_pubkey: str
    servers: list[ServerSpec] = field(default_factory=list)

    def client_config(
        self,
        addresses: dict[str, str],
        *,
        k: int | None = None,
        timeout_ms: int = 500,
        attempts: int = 1,
        name: str = "vault",
    ) -> Path:
        lines = [
            f'client_id = "{self.client_id}"',
            f'sign_key = "{self.client_dir / keys.CLIENT_SIGN_KEY}"',
            f'box_key = "{self.client_dir / keys.CLIENT_BOX_KEY}"',
            f"timeout_ms = {timeout_ms}",
            f"attempts = {attempts}",
        ]
        for s in self.servers:
            if s.server_id in addresses:
                lines += [
                    "[[servers]]",
                    f'id = "{s.server_id}"',
                    f'address = "{addresses[s.server_id]}"',
                    f'pubkey = "{s.pubkey}"',
                ]
        if k is not None:
            ids = ", ".join(f'"{sid}"' for sid in addresses)
            lines += [f"[secrets.{name}]", f"servers = [{ids}]", f"k = {k}"]
        path = self.root / f"client-{len(list(self.root.glob('client-*.toml')))}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_world(root: Path, client_id: str = "vm-1") -> World:
    cdir = root / "client"
    ck = keys.keygen_client(cdir)
    return World(root, client_id, cdir, ck.sign_pubkey, ck.box_pubkey)


def add_server(
    world: World,
    server_id: str,
    secret: bytes,
    *,
    bound: str = "bound_ms = 5.0",
    listen: str = "127.0.0.1:0",
    name: str = "vault",
    extra: str = "",
) -> ServerSpec:
    d = world.root / server_id
    sk = keys.keygen_server(d)
    _write_secret(d / f"{name}.secret", secret)
    cfg = d / "keyserver.toml"
    cfg.write_text(
        f'server_id = "{server_id}"\n'
        f'key = "{keys.SERVER_KEY}"\n'
        f'listen = "{listen}"\n'
        f"{extra}"
        f'[secrets]\n{name} = "{name}.secret"\n'
        "[[clients]]\n"
        f'id = "{world.client_id}"\n'
        f'sign_pubkey = "{world.sign_pubkey}"\n'
        f'box_pubkey = "{world.box_pubkey}"\n'
        f'secrets = ["{name}"]\n'
        f"{bound}\n"
    )
    spec = ServerSpec(server_id, d, sk.pubkey, cfg)
    world.servers.append(spec)
    return spec


@contextmanager
def running(spec: ServerSpec, records: list[dict[str, object]] | None = None) -> Iterator[str]:
    """Serve ``spec`` on loopback in a thread; yields its host:port."""
    cfg = config.load_server(spec.config_path)
    key = keys.load_sign_key(cfg.key_path)
    sink: list[dict[str, object]] = records if records is not None else []
    srv = server.ReleaseServer(cfg, key, sink.append)
    sock = server.bind(cfg.host, cfg.port)
    stop = threading.Event()
    t = threading.Thread(target=srv.serve, args=(sock, stop), daemon=True)
    t.start()
    try:
        host, port = sock.getsockname()[:2]
        yield f"{host}:{port}"
    finally:
        stop.set()
        t.join(5)
        sock.close()
