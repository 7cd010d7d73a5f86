"""luks_suspend and luks_resume: take a volume key out of kernel memory, and bring it back only
through the location-gated key servers.

``cryptsetup luksSuspend`` blocks all I/O to the volume and wipes its key from the kernel; the
filesystem stays mounted and processes touching it wait. ``luks_resume`` fetches the passphrase
with ``geoprobe unlock`` semantics (the key servers time this host's round trip) and hands it to
``cryptsetup luksResume --key-file=-`` on stdin, so it never touches a file or an argv. Abroad
the servers refuse, and the volume stays suspended: resuming fails by construction.

Both look up each volume's state in sysfs first (``/sys/block/dm-*/dm/{name,suspended}``) and
leave alone what is already as wanted: suspending twice, or resuming a volume that was never
suspended, is a no-op instead of a cryptsetup error, so both are run again after a crash and a
resume with nothing to do asks no key server. A volume sysfs does not show is handed to
cryptsetup as written, which reports it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Outcome, check_command
from geoprobe.errors import GeoprobeError
from geoprobe.policy import ActionSpec

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
SYS_BLOCK = Path("/sys/block")


def suspended(name: str) -> bool | None:
    """Whether the device-mapper volume ``name`` is suspended; None when sysfs does not show it."""
    try:
        devices = list(SYS_BLOCK.glob("dm-*"))
    except OSError:
        return None
    for dev in devices:
        try:
            if (dev / "dm" / "name").read_text().strip() != name:
                continue
            return (dev / "dm" / "suspended").read_text().strip() == "1"
        except OSError:
            continue
    return None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ActionFailed(f"{name} not found in PATH")
    return path


def _header_args(spec: ActionSpec) -> list[str]:
    header = spec.options.get("header")
    return [f"--header={header}"] if header else []


def _suspend_argvs(spec: ActionSpec, names: list[str] | None = None) -> list[list[str]]:
    todo = spec.options["luks"] if names is None else names
    return [["cryptsetup", "luksSuspend", *_header_args(spec), n] for n in todo]


def _resume_argvs(spec: ActionSpec, names: list[str] | None = None) -> list[list[str]]:
    todo = spec.options["luks"] if names is None else names
    return [["cryptsetup", "luksResume", *_header_args(spec), "--key-file=-", n] for n in todo]


def plan_suspend(spec: ActionSpec, ctx: ActionContext) -> str:
    steps = ["sync", f"echo 3 > {DROP_CACHES}", *(" ".join(a) for a in _suspend_argvs(spec))]
    return "; ".join(steps)


def _drop_caches() -> str | None:
    """Drop clean page cache, dentries and inodes: decrypted file contents leave memory too."""
    try:
        with DROP_CACHES.open("w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"cannot drop caches ({exc.strerror}): decrypted pages may stay in memory"
    return None


def run_suspend(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """sync, drop caches, then luksSuspend each volume; one failure does not stop the others."""
    os.sync()
    warnings = [w] if (w := _drop_caches()) else []
    done: list[dict[str, object]] = []
    errors: list[str] = []
    already = [n for n in spec.options["luks"] if suspended(n) is True]
    done += [{"volume": n, "skipped": "already suspended"} for n in already]
    todo = [n for n in spec.options["luks"] if n not in already]
    for argv in _suspend_argvs(spec, todo):
        try:
            res = check_command([_tool("cryptsetup"), *argv[1:]], ctx.deadline)
        except ActionTimeout:
            raise
        except ActionFailed as exc:
            errors.append(str(exc))
            done.append({"argv": argv, "error": str(exc)})
            continue
        done.append({"argv": res.argv, "returncode": res.returncode})
    if errors:
        raise ActionFailed("; ".join(errors), data={"steps": done}, warnings=warnings)
    what = f"suspended {', '.join(todo)}" if todo else "nothing to suspend"
    if already:
        what += f" ({', '.join(already)} already suspended)"
    return Outcome(what, warnings=warnings, data={"steps": done})


def plan_resume(spec: ActionSpec, ctx: ActionContext) -> str:
    cfg = spec.options.get("config", "the default client config")
    fetch = f"geoprobe unlock {spec.options['secret']} (with {cfg})"
    return "; ".join([fetch, *(" ".join(a) + " (key on stdin)" for a in _resume_argvs(spec))])


def _fetch(spec: ActionSpec, ctx: ActionContext) -> tuple[bytes, list[dict[str, object]]]:
    from geoprobe.keyrelease import client, config

    path = spec.options.get("config") or config.default_client_config()
    releases: list[dict[str, object]] = []
    try:
        cfg = config.load_client(path)
        budget_ms = max(1, int(ctx.deadline.remaining() * 1000 / max(1, cfg.attempts)))
        if budget_ms < cfg.timeout_ms:  # never outlive the action's own timeout
            cfg = dataclasses.replace(cfg, timeout_ms=budget_ms)
        secret = client.unlock(
            cfg,
            spec.options["secret"],
            on_release=lambda r: releases.append(
                {"server": r.server_id, "rtt_ms": round(r.rtt_ms, 3), "bound_ms": r.bound_ms}
            ),
        )
    except GeoprobeError as exc:
        raise ActionFailed(
            f"key release refused, volumes stay suspended: {exc}", data={"releases": releases}
        ) from None
    return secret, releases


def run_resume(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Fetch the passphrase through the key servers, then luksResume each suspended volume."""
    idle = [n for n in spec.options["luks"] if suspended(n) is False]
    done: list[dict[str, object]] = [{"volume": n, "skipped": "not suspended"} for n in idle]
    todo = [n for n in spec.options["luks"] if n not in idle]
    if not todo:
        return Outcome(f"nothing to resume: {', '.join(idle)} not suspended", data={"steps": done})
    secret, releases = _fetch(spec, ctx)
    errors: list[str] = []
    for argv in _resume_argvs(spec, todo):
        ctx.deadline.check("before luksResume")
        try:
            res = check_command([_tool("cryptsetup"), *argv[1:]], ctx.deadline, stdin=secret)
        except ActionTimeout:
            raise
        except ActionFailed as exc:
            errors.append(str(exc))
            done.append({"argv": argv, "error": str(exc)})
            continue
        done.append({"argv": res.argv, "returncode": res.returncode})
    del secret
    data: dict[str, object] = {"steps": done, "releases": releases}
    if errors:
        raise ActionFailed("; ".join(errors), data=data)
    return Outcome(f"resumed {', '.join(todo)}", data=data)
