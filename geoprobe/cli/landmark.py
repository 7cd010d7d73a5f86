"""CLI: ``geoprobe landmark keygen|serve`` (run a signed landmark) and the ``geoprobe landmarks``
group.

``geoprobe landmarks sync`` lives in ``cli/sync.py`` and is added here, so that loading this one
module (commands load lazily) gives the whole ``landmarks`` group; plug-ins may add more with
:func:`add_landmarks_command`.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.cli.env import Environment
from geoprobe.probe import keys
from geoprobe.probe.protocol import DEFAULT_PORT, MAX_ID_LEN
from geoprobe.probe.ratelimit import DEFAULT_BURST, DEFAULT_RATE, RateLimit


@click.group("landmark")
def landmark_group() -> None:
    """Run a signed landmark of your own."""


@landmark_group.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for landmark.key (mode 0600) and landmark.pub.",
)
@click.pass_obj
def keygen_cmd(env: Environment, out_dir: Path) -> None:
    """Create the Ed25519 key a landmark signs its echo replies with."""
    pair = keys.keygen(out_dir)
    env.stdout.write(
        f"private key: {pair.private_path} (keep it secret; mode 0600)\n"
        f"public key:  {pair.pubkey_b64}\n"
        f"key id:      {pair.key_id}\n"
    )


def catalogue_entry(
    landmark_id: str,
    lat: float,
    lon: float,
    address: str | None,
    port: int,
    pubkey_b64: str,
    key_id: str,
    country: str | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": landmark_id, "lat": lat, "lon": lon}
    if country:
        entry["country"] = country
    entry["address"] = address or "FILL IN: this host's public address"
    entry["methods"] = {"udp": port}
    entry["pubkey"] = pubkey_b64
    entry["key_id"] = key_id
    return entry


@landmark_group.command("serve")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key from `geoprobe landmark keygen`.",
)
@click.option("--id", "landmark_id", required=True, help="Landmark id, as in the catalogue.")
@click.option(
    "--lat", required=True, type=click.FloatRange(-90, 90), help="Latitude of this server."
)
@click.option(
    "--lon", required=True, type=click.FloatRange(-180, 180), help="Longitude of this server."
)
@click.option("--country", help="ISO 3166 alpha-2 code, for the printed catalogue entry.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="UDP port (0: any free port; the entry printed names it).",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_RATE,
    show_default=True,
    help="Signed replies per second to one source address (IPv6: per /64); 0: no limit.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=int(DEFAULT_BURST),
    show_default=True,
    help="Replies one source may get at once before --rate-limit applies.",
)
@click.pass_obj
def serve_cmd(
    env: Environment,
    key_path: Path,
    landmark_id: str,
    lat: float,
    lon: float,
    country: str | None,
    bind: str,
    port: int,
    rate_limit: float,
    burst: int,
) -> None:
    """Answer signed echo requests in the foreground until SIGTERM or SIGINT.

    Each source address gets at most --rate-limit replies a second (after a --burst), so the
    landmark cannot be made to sign in bulk or to flood a spoofed address.
    """
    if not 1 <= len(landmark_id.encode("utf-8")) <= MAX_ID_LEN:
        raise click.BadParameter(f"must be 1-{MAX_ID_LEN} bytes", param_hint="--id")
    key = keys.load_private(key_path)
    raw = keys.public_raw(key)
    import base64

    pub_b64 = base64.b64encode(raw).decode("ascii")
    kid = keys.key_id(raw)
    limit = RateLimit(rate=rate_limit, burst=burst) if rate_limit > 0 else None
    asyncio.run(_serve(env, key, landmark_id, lat, lon, country, bind, port, pub_b64, kid, limit))


async def _serve(
    env: Environment,
    key: Ed25519PrivateKey,
    landmark_id: str,
    lat: float,
    lon: float,
    country: str | None,
    bind: str,
    port: int,
    pub_b64: str,
    kid: str,
    limit: RateLimit | None,
) -> None:
    from geoprobe.probe.responder import start_responder

    try:
        transport, responder = await start_responder(
            key, landmark_id, lat, lon, host=bind, port=port, key_id=kid, rate_limit=limit
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, bound_port = transport.get_extra_info("sockname")[:2]
    address = None if bind in ("0.0.0.0", "::") else bind
    cap = f"{limit.rate:g}/s per source, burst {limit.burst:g}" if limit else "no rate limit"
    env.stdout.write(
        f"serving landmark {landmark_id!r} on udp {host}:{bound_port} ({cap}); "
        "add to your catalogue:\n"
    )
    env.stdout.write(
        json.dumps(
            catalogue_entry(landmark_id, lat, lon, address, bound_port, pub_b64, kid, country),
            indent=1,
        )
        + "\n"
    )
    env.stdout.flush()
    try:
        await stop.wait()
    finally:
        transport.close()
        env.stdout.write(
            f"stopped after {responder.answered} replies "
            f"({responder.limited} requests over the rate limit dropped)\n"
        )
        env.stdout.flush()


def register(group: click.Group) -> None:
    group.add_command(landmark_group)
