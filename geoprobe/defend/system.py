"""unmount, stop_units, start_units, signal_units, poweroff: through the system's own tools
(umount, cryptsetup, systemctl).

``signal_units`` is how an application drops its keys reversibly: ``systemctl kill`` delivers the
signal to the unit's own processes (found by systemd through the unit's cgroup, so no pid file
can redirect it) within microseconds, without forking anything per application; the application
wipes its in-memory keys in its handler and keeps serving what needs none, and another signal
(or its own key fetch) brings them back once ``on.cleared`` runs.

Using the tools rather than syscalls keeps their safety checks and their logging, and lets an
administrator see in the audit trail the exact command that ran.
"""

from __future__ import annotations

import os
import shutil

from geoprobe.defend.base import (
    ActionContext,
    ActionFailed,
    ActionTimeout,
    Completed,
    Outcome,
    check_command,
)
from geoprobe.defend.safepath import PathRefused, checked_path
from geoprobe.defend.wipe import mounts
from geoprobe.policy import ActionSpec


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ActionFailed(f"{name} not found in PATH")
    return path


def _is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    return any(os.path.realpath(m.mountpoint) == real for m in mounts())


def _unmount_argvs(spec: ActionSpec) -> list[list[str]]:
    lazy = ["-l"] if spec.options.get("lazy") else []
    try:  # the loader's rule again: an ActionSpec need not come from the loader
        paths = [checked_path(p) for p in spec.options.get("paths", [])]
    except PathRefused as exc:
        raise ActionFailed(str(exc)) from None
    argvs = [["umount", *lazy, p] for p in paths]
    argvs += [["cryptsetup", "close", n] for n in spec.options.get("luks", [])]
    return argvs


def plan_unmount(spec: ActionSpec, ctx: ActionContext) -> str:
    return "; ".join(" ".join(a) for a in _unmount_argvs(spec))


def run_unmount(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Unmount each path, then close each LUKS mapping (its filesystem must be unmounted first)."""
    done: list[dict[str, object]] = []
    lines: list[str] = []
    errors: list[str] = []
    for argv in _unmount_argvs(spec):
        tool, target = argv[0], argv[-1]
        if tool == "umount" and not _is_mounted(target):
            done.append({"argv": argv, "skipped": "not mounted"})
            lines.append(f"{target} was not mounted")
            continue
        try:
            res: Completed = check_command([_tool(tool), *argv[1:]], ctx.deadline)
        except ActionTimeout:
            raise
        except ActionFailed as exc:
            errors.append(str(exc))
            done.append({"argv": argv, "error": str(exc)})
            continue
        done.append({"argv": res.argv, "returncode": res.returncode})
        lines.append(" ".join(argv))
    if errors:
        raise ActionFailed("; ".join(errors), data={"steps": done})
    return Outcome("; ".join(lines), data={"steps": done})


def _stop_argv(spec: ActionSpec) -> list[str]:
    return ["systemctl", "stop", "--", *spec.options["units"]]


def plan_stop_units(spec: ActionSpec, ctx: ActionContext) -> str:
    return " ".join(_stop_argv(spec))


def run_stop_units(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    argv = _stop_argv(spec)
    res = check_command([_tool("systemctl"), *argv[1:]], ctx.deadline)
    return Outcome(
        f"stopped {', '.join(spec.options['units'])}", data={"argv": res.argv, "stdout": res.stdout}
    )


def _start_argv(spec: ActionSpec) -> list[str]:
    return ["systemctl", "start", "--", *spec.options["units"]]


def plan_start_units(spec: ActionSpec, ctx: ActionContext) -> str:
    return " ".join(_start_argv(spec))


def run_start_units(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Start the units again (a running unit is left as it is: systemd makes that a no-op)."""
    argv = _start_argv(spec)
    res = check_command([_tool("systemctl"), *argv[1:]], ctx.deadline)
    return Outcome(
        f"started {', '.join(spec.options['units'])}", data={"argv": res.argv, "stdout": res.stdout}
    )


def _signal_argv(spec: ActionSpec) -> list[str]:
    whom = spec.options.get("whom", "main")
    return [
        "systemctl",
        "kill",
        f"--signal={spec.options['signal']}",
        f"--kill-who={whom}",  # the spelling systemd before 252 knows too
        "--",
        *spec.options["units"],
    ]


def plan_signal_units(spec: ActionSpec, ctx: ActionContext) -> str:
    return " ".join(_signal_argv(spec))


def run_signal_units(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Send the signal to each unit's processes; a unit that is not running is an error."""
    argv = _signal_argv(spec)
    res = check_command([_tool("systemctl"), *argv[1:]], ctx.deadline)
    return Outcome(
        f"sent {spec.options['signal']} to {', '.join(spec.options['units'])}",
        data={"argv": res.argv, "stdout": res.stdout},
    )


def _poweroff_argv(spec: ActionSpec) -> list[str]:
    return ["systemctl", "poweroff", *(["--force"] if spec.options.get("force") else [])]


def plan_poweroff(spec: ActionSpec, ctx: ActionContext) -> str:
    return " ".join(_poweroff_argv(spec))


def run_poweroff(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Sync, then ask systemd to power off; actions after this one may not get to run."""
    os.sync()
    argv = _poweroff_argv(spec)
    res = check_command([_tool("systemctl"), *argv[1:]], ctx.deadline)
    return Outcome("power-off requested", data={"argv": res.argv})
