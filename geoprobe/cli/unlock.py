"""CLI: ``geoprobe unlock NAME``: fetch a location-gated secret and print it on stdout.

The secret goes to stdout as raw bytes with no newline, for ``cryptsetup --key-file=-``; with
``--jwk`` it is the JSON key that the clevis pin wraps with. Nothing else is written to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from geoprobe.cli.env import Environment
from geoprobe.errors import InputError


@click.command("unlock")
@click.argument("name")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Client config (default: unlock.toml in the config dirs, else /etc/geoprobe/unlock.toml).",
)
@click.option("--jwk", is_flag=True, help="Print the clevis pin's wrapping key (JWK) instead.")
@click.option("-v", "--verbose", is_flag=True, help="Say on stderr which servers released.")
@click.pass_obj
def unlock_cmd(
    env: Environment, name: str, config_path: Path | None, jwk: bool, verbose: bool
) -> None:
    """Print secret NAME once the key servers time this host within its bound."""
    from geoprobe.keyrelease import client, config

    cfg = config.load_client(config_path or config.default_client_config(env.config_dirs))
    try:
        cfg.plan(name)
    except ValueError as exc:
        raise InputError(str(exc), field="NAME") from None

    def said(rel: client.Released) -> None:
        if verbose:
            env.stderr.write(
                f"{rel.server_id}: released at {rel.rtt_ms:.3f} ms (bound {rel.bound_ms:g} ms)\n"
            )

    secret = client.unlock(cfg, name, on_release=said)
    if jwk:
        env.stdout.write(json.dumps(client.jwk_for(secret), separators=(",", ":")))
        env.stdout.flush()
        return
    out = getattr(env.stdout, "buffer", None)
    if out is None:  # an injected text stream (tests): the secret as latin-1 keeps every byte
        env.stdout.write(secret.decode("latin-1"))
    else:
        env.stdout.flush()
        out.write(secret)
        out.flush()


def register(group: click.Group) -> None:
    group.add_command(unlock_cmd)
