"""CLI: ``geoprobe attest`` -- the VM's identity key, signed residency attestations per period,
and their offline verification (exit OK verified, VERIFY_FAILED failed verification, ERROR unusable
input)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from geoprobe.cli.env import Environment
from geoprobe.cli.options import allow_option, landmarks_option
from geoprobe.errors import InputError
from geoprobe.status import ExitStatus


def _state(env: Environment, state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else env.state_dir


state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (default: /var/lib/geoprobe for root, else the user's state dir).",
)


@click.group("attest")
def attest_group() -> None:
    """Signed per-period residency attestations an auditor can check offline."""


@attest_group.command("key")
@state_option
@click.pass_obj
def key_cmd(env: Environment, state_dir: Path | None) -> None:
    """Print the VM's public identity key (created, mode 0600, on first use)."""
    from geoprobe.attest import identity
    from geoprobe.probe import keys

    key = identity.load_or_create(_state(env, state_dir))
    raw = keys.public_raw(key)
    env.stdout.write(f"{base64.b64encode(raw).decode('ascii')} {keys.key_id(raw)}\n")


@attest_group.command("run")
@state_option
@landmarks_option("Catalogue the landmark statements are checked against.")
@allow_option()
@click.option(
    "--from-measurements",
    "measurements_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Attest saved measurement files (geoprobe locate --save) instead of the watch journal.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Chain directory (default: STATE/attest/chain).",
)
@click.option("--period", type=click.IntRange(1), default=3600, show_default=True, help="Seconds.")
@click.option("--webhook", help="POST a CloudEvent per attestation to this URL.")
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prometheus textfile with the end of the last attested period.",
)
@click.option(
    "--max-gap",
    type=click.FloatRange(min=1.0),
    default=600.0,
    show_default=True,
    help="Seconds without landmark-signed evidence after which a period is not proven inside.",
)
@click.option("--follow", is_flag=True, help="Keep attesting as periods close (until SIGTERM).")
@click.pass_obj
def run_cmd(
    env: Environment,
    state_dir: Path | None,
    landmarks_path: Path | None,
    allow: str | None,
    measurements_dir: Path | None,
    out_dir: Path | None,
    period: int,
    webhook: str | None,
    metrics_path: Path | None,
    max_gap: float,
    follow: bool,
) -> None:
    """Sign one statement per closed period since the chain's last one."""
    stop = threading.Event()
    if follow and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the period in hand, then exit
    from geoprobe.attest import chain, identity, publish, rounds
    from geoprobe.attest.actions import actions_since
    from geoprobe.geo.countries import default_index
    from geoprobe.geo.groups import expand
    from geoprobe.landmarks import catalogue_or_default
    from geoprobe.probe import keys
    from geoprobe.store import default_path

    if not allow:
        raise InputError("give the allowed jurisdictions, e.g. --allow EU", field="allow")
    allowed = sorted(expand(c for c in allow.split(",") if c.strip()))
    state = _state(env, state_dir)
    key = identity.load_or_create(state)
    kid = keys.key_id(keys.public_raw(key))
    cat = catalogue_or_default(landmarks_path, env.cache_dir)
    by_id = cat.by_id()
    out = out_dir if out_dir is not None else state / "attest" / "chain"
    countries = default_index(env.cache_dir)

    def published(issued: chain.Issued) -> None:
        """After the chain's lock is released: a slow collector never holds up the next issuer."""
        env.stdout.write(
            f"{issued.period.label} #{issued.sequence} {issued.verdict} -> {issued.path}\n"
        )
        if webhook:
            from geoprobe.defend.base import ActionFailed

            try:
                env.stderr.write(f"webhook: {publish.post(webhook, publish.cloudevent(issued))}\n")
            except ActionFailed as exc:  # the chain keeps it; a collector can fetch it later
                env.stderr.write(f"webhook: {exc}\n")
        if metrics_path is not None:
            publish.write_gauge(metrics_path, issued.period.end)

    while True:
        if measurements_dir is not None:
            rs = list(rounds.measurement_rounds(measurements_dir, by_id, kid))
            evs: list[dict[str, Any]] = []
            acts: list[dict[str, Any]] = []
        else:
            top = chain.head(out)
            since = top[2] if top else 0.0
            journal = rounds.Journal(rounds.journal_path(state))
            rs, evs = journal.read(since, by_id, kid)
            if journal.skipped:
                env.stderr.write(f"{journal.path}: {journal.skipped} unreadable line(s) skipped\n")
            acts = actions_since(default_path(state), since)
        issued = chain.issue(
            out,
            key,
            rs,
            evs,
            landmarks=by_id,
            allowed=allowed,
            countries=countries,
            catalogue=str(cat.path) if cat.path else cat.name,
            now=time.time(),
            period_s=period,
            actions=acts,
            max_gap_s=max_gap,
        )
        for i in issued:
            published(i)
        if not follow or stop.wait(min(period, 60) / 4):
            return


@attest_group.command("verify")
@click.argument("chain_path", type=click.Path(path_type=Path))
@click.option(
    "--vm-key",
    required=True,
    help="The VM's public key: its identity.pub file, or the base64 key.",
)
@landmarks_option("Catalogue that pins the landmarks' keys.")
@click.option("--partial", is_flag=True, help="The chain may start after its first statement.")
@click.option(
    "--until",
    type=float,
    help="UNIX time the chain must reach: a missing last period is then a gap too.",
)
@click.option(
    "--max-gap",
    type=click.FloatRange(min=1.0),
    help="Fail a period claimed inside with a longer stretch (s) without landmark-signed evidence.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: problems, notes, periods.")
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    chain_path: Path,
    vm_key: str,
    landmarks_path: Path | None,
    partial: bool,
    until: float | None,
    max_gap: float | None,
    as_json: bool,
) -> None:
    """Verify a chain offline: exit 0 verified, 1 failed verification, 3 unusable input."""
    from geoprobe.attest import identity
    from geoprobe.attest.verify import load_entries, verify_chain
    from geoprobe.geo.countries import default_index
    from geoprobe.landmarks import catalogue_or_default

    env: Environment = ctx.obj
    if not chain_path.exists():
        raise InputError("no such file or directory", file=chain_path)
    pub = identity.load_public(vm_key)
    cat = catalogue_or_default(landmarks_path, env.cache_dir)
    entries = load_entries(chain_path)
    rep = verify_chain(
        entries,
        pub,
        cat.by_id(),
        default_index(env.cache_dir),
        partial=partial,
        until=until,
        max_gap=max_gap,
    )
    if as_json:
        doc = {
            "ok": rep.ok,
            "attestations": rep.envelopes,
            "problems": rep.problems,
            "notes": rep.notes,
            "periods": [{"period": lbl, "verdict": v, "country": c} for lbl, v, c in rep.periods],
        }
        env.stdout.write(json.dumps(doc) + "\n")
        if not rep.ok:
            ctx.exit(int(ExitStatus.VERIFY_FAILED))
        return
    for p in rep.problems:
        env.stdout.write(f"FAIL {p}\n")
    for n in rep.notes:
        env.stdout.write(f"NOTE {n}\n")
    if not rep.ok:
        env.stdout.write(
            f"FAILED: {len(rep.problems)} problem(s) in {rep.envelopes} attestation(s)\n"
        )
        ctx.exit(int(ExitStatus.VERIFY_FAILED))
    verdicts: dict[str, int] = {}
    for _, v, _ in rep.periods:
        verdicts[v] = verdicts.get(v, 0) + 1
    summary = ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
    env.stdout.write(
        f"OK: {rep.envelopes} attestation(s) verified, {rep.periods[0][0].split('..')[0]}.."
        f"{rep.periods[-1][0].split('..')[1]} ({summary})\n"
    )


def register(group: click.Group) -> None:
    group.add_command(attest_group)
