"""The lab's LUKS scenario: a guest volume only the key server can reopen, across real migrations.

The key server (`geoprobe keyserver serve`) runs on the host in a namespace of its own. Each site
reaches it over a veth pair through a delaying relay (`geoprobe.keyrelease.relay`) that listens on
the site's loopback, which the guest sees as 10.0.2.2: the round trip the server times depends on
the site the guest's QEMU runs at, near (2 ms) at sites in the allowed country, far (20 ms)
elsewhere. The guest (`luks_guest.py`) formats, opens and mounts a LUKS2 volume with the released
secret, then runs `geoprobe watch` with `on.suspected` = luks_suspend and `on.cleared` =
luks_resume. Two runs:

- **same**: a migration inside the allowed country; the volume is suspended on suspicion and the
  resume (a fresh release, near) succeeds: the data is readable again;
- **cross**: a migration across the border; the resume is refused (the server is far) and the
  data stays unreadable.

    python -m benchmarks.lab --luks [--a Frankfurt:DE --same Hamburg:DE --b Madrid:ES]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.keyrelease import keys as rkeys

from .console import ConsoleLine
from .netns import Namespace
from .programs import DEFAULT_WATCH, HOOK_SH, RUN_SH, SECRET, _is_fix
from .scenarios import GuestProgram, Lab, RunPlan, RunRecord
from .sites import REPO, Site, distance_km, find_place

HERE = Path(__file__).resolve().parent
ACTION_RESULT = re.compile(r"\] (luks_suspend|luks_resume): (ok|failed|timeout)\b")
PORT = 7208
SECRET_NAME = "vault"
CLIENT_ID = "lab-guest"
SERVER_ID = "ks-lab"
GUEST_CLIENT_CONFIG = "/lab/unlock.toml"


def add_options(ap: argparse.ArgumentParser, mode: Any) -> None:
    """The `--luks` mode and its knobs, added to the lab's parser."""
    mode.add_argument(
        "--luks",
        action="store_true",
        help="the LUKS scenario: suspend on suspicion, resume through the key server after a "
        "harmless move (--luks-harmless), refused after a cross-border one (--b)",
    )
    ap.add_argument("--luks-near-ms", type=float, default=2.0, help="RTT added at allowed sites")
    ap.add_argument("--luks-far-ms", type=float, default=20.0, help="RTT added elsewhere")
    ap.add_argument(
        "--luks-bound-km",
        type=float,
        default=1000.0,
        help="the key server's bound (the 2 ms path plus the emulated guest's own answer time)",
    )
    ap.add_argument(
        "--luks-harmless",
        default=None,
        help="SERVER:CC the harmless move goes to (default: another host at site A's own "
        "server: a same-country move the watch can clear; a destination whose region "
        "straddles the border is confirmed with crossing unknown, and nothing is given back)",
    )
    ap.add_argument(
        "--luks-kinds", default="same,cross", help="comma list among same,cross (--luks only)"
    )
    ap.add_argument(
        "--luks-clevis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also bind the volume with the geoprobe clevis pin in the guest",
    )


@dataclass
class KeyServer:
    """The key server in its own namespace, reachable from each site only through a relay."""

    workdir: Path
    source: Path
    bound_km: float
    ns: Namespace = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    server_pubkey: str = ""
    sign_pubkey: str = ""
    box_pubkey: str = ""
    attached: int = 0

    def __post_init__(self) -> None:
        self.ns = Namespace(f"geoprobe-lab-ks-{os.getpid()}")
        self.dir = self.workdir / "keyserver"

    @property
    def log_path(self) -> Path:
        return self.dir / "release.jsonl"

    def prepare(self) -> None:
        """Keys for the server and the guest, the secret, and the server's config."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server_pubkey = rkeys.keygen_server(self.dir / "server").pubkey
        ck = rkeys.keygen_client(self.dir / "client")
        self.sign_pubkey, self.box_pubkey = ck.sign_pubkey, ck.box_pubkey
        fd = os.open(self.dir / "vault.secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            # 256 random bits as base64 text: `clevis luks bind -k -` reads the existing
            # passphrase in a shell, which drops NUL bytes and trailing newlines.
            f.write(base64.b64encode(os.urandom(32)))
        (self.dir / "keyserver.toml").write_text(
            f'server_id = "{SERVER_ID}"\n'
            'key = "server/server.key"\n'
            f'listen = "0.0.0.0:{PORT}"\n'
            'log = "release.jsonl"\n'
            "[secrets]\n"
            f'{SECRET_NAME} = "vault.secret"\n'
            "[[clients]]\n"
            f'id = "{CLIENT_ID}"\n'
            f'sign_pubkey = "{self.sign_pubkey}"\n'
            f'box_pubkey = "{self.box_pubkey}"\n'
            f'secrets = ["{SECRET_NAME}"]\n'
            f"bound_km = {self.bound_km:g}\n"
        )

    def guest_files(self) -> dict[str, str | bytes]:
        """The guest's client config and private keys (the run disk gives keys/ mode 0600)."""
        cdir = self.dir / "client"
        return {
            "unlock.toml": (
                f'client_id = "{CLIENT_ID}"\n'
                f'sign_key = "/lab/keys/{rkeys.CLIENT_SIGN_KEY}"\n'
                f'box_key = "/lab/keys/{rkeys.CLIENT_BOX_KEY}"\n'
                # Under TCG on a shared host the guest's own answer time varies by milliseconds;
                # the fastest of several fresh challenges is the one that says where it is.
                "timeout_ms = 1000\nattempts = 20\n"
                "[[servers]]\n"
                f'id = "{SERVER_ID}"\n'
                f'address = "10.0.2.2:{PORT}"\n'
                f'pubkey = "{self.server_pubkey}"\n'
            ),
            f"keys/{rkeys.CLIENT_SIGN_KEY}": (cdir / rkeys.CLIENT_SIGN_KEY).read_bytes(),
            f"keys/{rkeys.CLIENT_BOX_KEY}": (cdir / rkeys.CLIENT_BOX_KEY).read_bytes(),
        }

    def start(self) -> KeyServer:
        self.ns.create()
        out = (self.dir / "keyserver.log").open("wb")
        env = dict(os.environ, PYTHONPATH=str(self.source))
        argv = [sys.executable, "-m", "geoprobe", "keyserver", "serve"]
        self.proc = self.ns.popen(
            [*argv, "--config", str(self.dir / "keyserver.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        _await_line(self.dir / "keyserver.log", "listening on udp", 30.0, self.proc)
        return self

    def attach(self, site: Site, rtt_ms: float) -> None:
        """A veth from the site's namespace to the server's; the site's relay on its loopback."""
        self.attached += 1
        n = self.attached
        here, there = f"gpks{n}-{os.getpid() % 100000}", f"gpkr{n}-{os.getpid() % 100000}"
        ip = ["ip", "link", "add", here, "netns", self.ns.name, "type", "veth"]
        subprocess.run([*ip, "peer", "name", there, "netns", site.ns.name], check=True)
        server_addr, site_addr = f"10.214.{n}.1", f"10.214.{n}.2"
        for ns, dev, addr in ((self.ns.name, here, server_addr), (site.ns.name, there, site_addr)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        relay = [sys.executable, "-m", "geoprobe.keyrelease.relay", f"127.0.0.1:{PORT}"]
        relay += [f"{server_addr}:{PORT}", "--rtt-ms", f"{rtt_ms:g}", "--seconds", "3600"]
        site._spawn("keyrelay", relay)
        _await_line(site.workdir / f"keyrelay-{site.label}.log", "ready", 30.0, site.procs[-1])
        with (self.dir / "sites.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {"site": site.label, "server": site.place.server, "peer": site_addr}
                    | {"relay_rtt_ms": rtt_ms, "attached": time.time()}
                )
                + "\n"
            )

    def attach_all(self, sites: Sequence[Site], rtt_for: Callable[[Site], float]) -> None:
        for site in sites:
            self.attach(site, rtt_for(site))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ns.delete()

    def records(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _await_line(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{path}: no {text!r} within {timeout:g} s: {path.read_text()[-500:]}")


def _header(allow: list[str]) -> str:
    codes = ", ".join(json.dumps(c) for c in allow)
    return f"[jurisdiction]\nallow = [{codes}]\n"


def _resume(stage: str) -> str:
    """The volume's resume through the key server, as the policy's ``stage`` runs it."""
    return f"""
[[on.{stage}]]
action = "luks_resume"
luks = ["{SECRET_NAME}"]
secret = "{SECRET_NAME}"
config = "{GUEST_CLIENT_CONFIG}"
"""


def policy_toml(allow: list[str]) -> str:
    return (
        _header(allow)
        + f"""
[[on.suspected]]
action = "luks_suspend"
luks = ["{SECRET_NAME}"]

[[on.confirmed_crossing]]
action = "hook"
command = ["/lab/hook.sh"]
"""
        + _resume("cleared")
    )


def resume_toml(allow: list[str]) -> str:
    """The resume the guest fires itself (`geoprobe policy fire`): the same action."""
    return _header(allow) + _resume("unknown")


def luks_step(line: ConsoleLine) -> dict[str, Any] | None:
    if not line.text.lstrip().startswith("LAB-LUKS "):
        return None
    return line.event()


def _done(line: ConsoleLine) -> bool:
    ev = luks_step(line)
    return bool(ev and ev.get("step") == "done")


GEOPROBE_WRAPPER = '#!/bin/sh\nexec python3 -m geoprobe "$@"\n'


def luks_program(
    ks: KeyServer,
    allow: list[str],
    rtt_for: Callable[[Site], float],
    clevis: bool,
    command: str = DEFAULT_WATCH,
) -> GuestProgram:
    settings = {
        "watch": command,
        "secret": SECRET_NAME,
        "client_config": GUEST_CLIENT_CONFIG,
        "mapping": SECRET_NAME,
        "image": "/tmp/vault.img",
        "size_mb": 48,
        "mount": "/mnt",
        "releases": 5,
        "clevis": clevis,
        "give_up_s": 120,
    }
    pins = REPO / "contrib" / "clevis"
    files: dict[str, str | bytes] = {
        "policy.toml": policy_toml(allow),
        "resume.toml": resume_toml(allow),
        "hook.sh": HOOK_SH,
        "luks.json": json.dumps(settings),
        "luks_guest.py": (HERE / "luks_guest.py").read_text(),
        "bin/geoprobe": GEOPROBE_WRAPPER,
        "bin/clevis-encrypt-geoprobe": (pins / "clevis-encrypt-geoprobe").read_text(),
        "bin/clevis-decrypt-geoprobe": (pins / "clevis-decrypt-geoprobe").read_text(),
        **ks.guest_files(),
    }
    extra = "export PATH=/lab/bin:$PATH GEOPROBE=/lab/bin/geoprobe"
    return GuestProgram(
        name="luks",
        run_sh=RUN_SH.format(
            secret=SECRET, extra=extra, command="exec python3 /lab/luks_guest.py /lab/luks.json"
        ),
        files=files,
        needs_testbed=True,
        ready=_is_fix,
        confirmed=_done,
        on_sites=lambda sites: ks.attach_all(sites, rtt_for),
    )


# --- the figures ---------------------------------------------------------------------------


def _stop_time(rec: RunRecord) -> float | None:
    for e in rec.src_events:
        if e.get("event") == "STOP":
            return float(e["qemu_time"])
    return None


def analyse(rec: RunRecord, releases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's LUKS timeline, in seconds from the switchover (QMP STOP at the source)."""
    stop = _stop_time(rec)
    steps: list[tuple[float, dict[str, Any]]] = []

    def rel(t: float | None) -> float | None:
        return None if t is None or stop is None else round(t - stop, 3)

    watch: list[tuple[float, str, dict[str, Any]]] = []
    actions: list[tuple[float | None, str, str]] = []  # the policy's own account, as it ran them
    for t, text in rec.console:
        line = ConsoleLine(t, text)
        ev = luks_step(line)
        if ev is not None:
            steps.append((t, ev))
            continue
        if m := ACTION_RESULT.search(text):
            actions.append((rel(t), m.group(1), m.group(2)))
            continue
        gev = line.event()
        if gev and str(gev.get("type", "")).startswith("io.geoprobe.migration."):
            watch.append((t, str(gev["type"]).rsplit(".", 1)[-1], gev.get("data") or {}))

    def first(pred: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in steps if pred(e)), None)

    by_step = {e["step"]: e for _, e in steps}
    suspended = first(lambda e: e["step"] == "state" and e.get("suspended") is True)
    resumed = None
    if suspended is not None:
        resumed = next(
            (
                (t, e)
                for t, e in steps
                if t > suspended[0] and e["step"] == "state" and e.get("suspended") is False
            ),
            None,
        )
    readable = first(lambda e: e["step"] == "readable")
    attempts = [e for _, e in steps if e["step"] == "resume_attempt"]
    sites: dict[str, list[dict[str, Any]]] = {}
    for r in releases:
        if rec.started <= float(r.get("ts", 0)) <= rec.ended:
            sites.setdefault(str(r.get("peer", "")).split(":")[0], []).append(r)
    return {
        "kind": rec.plan.kind,
        "a": rec.plan.a.server,
        "b": rec.plan.b.server,
        "distance_km": round(distance_km(rec.plan.a, rec.plan.b), 1),
        "error": rec.error,
        "migration": rec.final.get("status"),
        "boot_releases_ms": by_step.get("release", {}).get("rtts_ms"),
        "boot_release_errors": by_step.get("release", {}).get("errors"),
        "format": by_step.get("format"),
        "open": by_step.get("open"),
        "mounted": by_step.get("mounted"),
        "clevis": by_step.get("clevis"),
        "actions_s": actions,
        "watch_events_s": [(rel(t), kind, d.get("crossing")) for t, kind, d in watch],
        "suspended_s": rel(suspended[0]) if suspended else None,
        "resumed_s": rel(resumed[0]) if resumed else None,
        "readable_s": rel(readable[0]) if readable else None,
        "readable_ok": readable[1].get("ok") if readable else None,
        "resume_attempts": attempts,
        "unlock_after_move": by_step.get("unlock_after_move"),
        "done": by_step.get("done"),
        "server_log": {
            peer: {
                "released": [x["rtt_ms"] for x in rs if x.get("event") == "release"],
                "refused": [
                    (x.get("code"), x.get("rtt_ms")) for x in rs if x.get("event") == "refuse"
                ],
            }
            for peer, rs in sites.items()
        },
    }


def targets(rows: list[dict[str, Any]]) -> list[str]:
    missed = []
    for r in rows:
        k = r["kind"]
        if r["error"]:
            missed.append(f"{k}: run failed: {r['error'][:200]}")
            continue
        if not (r["mounted"] or {}).get("read_back"):
            missed.append(f"{k}: the volume was not opened and read in the guest")
        if r["suspended_s"] is None:
            missed.append(f"{k}: the volume was never suspended")
        if k == "luks-same" and not (r["resumed_s"] is not None and r["readable_ok"]):
            missed.append(f"{k}: the volume was not resumed and read after the harmless move")
        if k == "luks-cross":
            if r["resumed_s"] is not None or r["readable_s"] is not None:
                missed.append(f"{k}: the volume came back after the cross-border move")
            if not any(a.get("rc") for a in r["resume_attempts"]):
                missed.append(f"{k}: no refused resume attempt after the move")
    return missed


def first_event(row: dict[str, Any], kind: str) -> float | None:
    return next((t for t, k, _ in row["watch_events_s"] if k == kind), None)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        "# LUKS lab run",
        "",
        (
            f"{meta['started_utc']}, {meta['seconds']} s, QEMU {meta['qemu']}, "
            f"snapshot {meta['geoprobe_snapshot']}, relay {meta['near_ms']:g} ms near / "
            f"{meta['far_ms']:g} ms far, bound {meta['bound_km']:g} km"
        ),
        "",
        (
            "| run | boot releases (ms) | format / open | suspected | suspended | cleared / "
            "confirmed | resumed | data readable | resume attempts | server log |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = r["boot_releases_ms"] or []
        attempts = "; ".join(
            f"{a.get('kind')}: rc {a.get('rc')} in {a.get('seconds')} s"
            for a in r["resume_attempts"]
        )
        fo = " / ".join(
            str((r[s] or {}).get("detail", "-")).rsplit("(", 1)[-1].rstrip(")")
            for s in ("format", "open")
        )
        log = "; ".join(
            f"{p}: released {len(v['released'])} "
            f"(median {statistics.median(v['released']):.2f} ms), refused {len(v['refused'])}"
            if v["released"]
            else f"{p}: refused {len(v['refused'])} "
            f"(min {min((x[1] or 0) for x in v['refused']):.2f} ms)"
            for p, v in r["server_log"].items()
        )
        ends = ", ".join(
            f"{k} {t} s" + (f" (crossing {c})" if k == "confirmed" else "")
            for t, k, c in r["watch_events_s"]
            if k in ("cleared", "confirmed")
        )
        out.append(
            f"| {r['kind']} {r['a']} -> {r['b']} | {', '.join(f'{x:.2f}' for x in rel)} | {fo} | "
            f"{first_event(r, 'suspected')} s | {r['suspended_s']} s | {ends or '-'} | "
            f"{r['resumed_s']} s | {r['readable_s']} s "
            f"({r['readable_ok']}) | {attempts or '-'} | {log} |"
        )
    out += ["", "Times are seconds from the switchover (QMP STOP at the source).", ""]
    for r in rows:
        if r["unlock_after_move"]:
            out.append(f"- {r['kind']}: `geoprobe unlock` after the move: {r['unlock_after_move']}")
        if r["clevis"]:
            out.append(f"- {r['kind']}: clevis: {r['clevis']}")
        out.append(f"- {r['kind']}: watch events {r['watch_events_s']}; done {r['done']}")
        out.append(f"- {r['kind']}: policy actions (s, action, status) {r['actions_s']}")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace, lab: Lab, log: Callable[[str], None], digest: str) -> int:
    """The --luks mode: one same-country and one cross-border migration with the volume open."""
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    )
    meta: dict[str, Any] = {
        "qemu": qemu.stdout.split("\n")[0].replace("QEMU emulator version ", ""),
        "geoprobe_snapshot": digest,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "guest_command": args.guest_command,
        "guest_landmarks": args.landmarks,
    }
    ks = KeyServer(lab.workdir, lab.source, args.luks_bound_km)
    ks.prepare()
    allow = [args.a.country]

    def rtt_for(site: Site) -> float:
        return float(args.luks_near_ms if site.place.country in allow else args.luks_far_ms)

    kinds = args.luks_kinds.split(",")
    plan_args: dict[str, Any] = {"settle_s": args.settle, "after_s": max(args.after, 150.0)}
    harmless = args.a
    if args.luks_harmless:
        server, _, country = args.luks_harmless.partition(":")
        try:
            harmless = find_place(server, country or args.a.country)
        except ValueError as exc:
            log(f"--luks-harmless: {exc}")
            return 2
    todo = [
        RunPlan(f"luks-{k}", args.a, harmless if k == "same" else args.b, **plan_args)
        for k in kinds
    ]
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    try:
        ks.start()
        log(f"key server {SERVER_ID} in {ks.ns.name}: bound {args.luks_bound_km:g} km")
        for plan in todo:
            log(f"luks run {plan.kind}: {plan.a.server} -> {plan.b.server}")
            rec = lab.run(
                plan, luks_program(ks, allow, rtt_for, args.luks_clevis, args.guest_command)
            )
            row = analyse(rec, ks.records())
            rows.append(row)
            log(
                f"  suspended {row['suspended_s']} s, resumed {row['resumed_s']} s, readable "
                f"{row['readable_s']} s, attempts {[a.get('rc') for a in row['resume_attempts']]}"
            )
    finally:
        ks.stop()
    meta = meta | {
        "seconds": round(time.time() - t0),
        "near_ms": args.luks_near_ms,
        "far_ms": args.luks_far_ms,
        "bound_km": args.luks_bound_km,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lab-luks.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    md = markdown(rows, meta)
    (args.out / "lab-luks.md").write_text(md)
    print(md)
    missed = targets(rows)
    for m in missed:
        log(f"target missed: {m}")
    return 1 if missed else 0
