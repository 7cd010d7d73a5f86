"""What the guest runs: geoprobe watch under a policy, or the lab's own clock probe.

Switching the lab from the development probe to geoprobe is choosing a different GuestProgram; the
guest command itself is one string (`--guest-command`), so trying another geoprobe invocation needs
no code.
"""

from __future__ import annotations

import json
from pathlib import Path

from .console import ConsoleLine
from .scenarios import CONFIRMED, SUSPECTED, GuestProgram
from .sites import CLOCK_PORT, WEBHOOK_PORT

HERE = Path(__file__).resolve().parent
SECRET = "/tmp/geoprobe-lab/secret.key"

RUN_SH = """#!/bin/sh
exec 2>&1
cd /lab
export PYTHONPATH=/lab GEOPROBE_STATE_DIR=/tmp/geoprobe-state GEOPROBE_CACHE_DIR=/tmp/geoprobe-cache
export GEOPROBE_RUNTIME_DIR=/tmp/geoprobe-run
mkdir -p /tmp/geoprobe-lab /tmp/geoprobe-state /tmp/geoprobe-cache /tmp/geoprobe-run
[ -d /lab/cache ] && cp -r /lab/cache/. /tmp/geoprobe-cache/
head -c 4096 /dev/urandom > {secret}
{extra}
echo "LAB-GUEST-START uptime=$(cut -d' ' -f1 /proc/uptime)"
{command}
"""

# The policy's counter-measures announce themselves on the console so the host can time them.
HOOK_SH = """#!/bin/sh
ev=$(cat)
echo "LAB-HOOK $(cut -d' ' -f1 /proc/uptime) $(printf %s "$ev" | tr -d '\\n' | head -c 2000)" > /dev/console
"""


def policy_toml(allow: list[str], delay_on_suspect: bool = False) -> str:
    codes = ", ".join(json.dumps(c) for c in allow)
    text = f"""[jurisdiction]
allow = [{codes}]

[[on.confirmed_crossing]]
action = "wipe"
paths = ["{SECRET}"]

[[on.confirmed_crossing]]
action = "hook"
command = ["/lab/hook.sh"]

[[on.confirmed_crossing]]
action = "webhook"
url = "http://10.0.2.2:{WEBHOOK_PORT}/geoprobe"
"""
    if delay_on_suspect:
        text += '\n[[on.suspected]]\naction = "delay"\n'
    return text


def _event_type(line: ConsoleLine) -> str | None:
    ev = line.event()
    return str(ev.get("type")) if ev and "type" in ev else None


def _is_fix(line: ConsoleLine) -> bool:
    return _event_type(line) == "io.geoprobe.location.fix"


def _is_confirmed(line: ConsoleLine) -> bool:
    return _event_type(line) == CONFIRMED


def _is_suspected(line: ConsoleLine) -> bool:
    return _event_type(line) == SUSPECTED


# --samples 2: one sample per landmark let host-load bursts read as a move (2 false suspicions in 3
# controls at --interval 0.5); --timeout 0.5 caps the round the switchover cuts (its replies in
# flight are lost) before the daemon's adaptive timeout has a baseline; -v puts the state
# transitions, with their reasons, on the console for the timeline.
DEFAULT_WATCH = (
    "python3 -m geoprobe watch --landmarks /lab/catalogue.json --policy /lab/policy.toml "
    "--state /tmp/geoprobe-state --interval 1 --fast-interval 0.2 --samples 2 --timeout 0.5 -v"
)


def geoprobe_program(
    allow: list[str],
    command: str = DEFAULT_WATCH,
    background: str = "",
    delay_on_suspect: bool = False,
) -> GuestProgram:
    """geoprobe watch at boot; events (JSON lines) on stdout, which is the serial console."""
    return GuestProgram(
        name="geoprobe",
        run_sh=RUN_SH.format(secret=SECRET, extra=background, command=command),
        files={"policy.toml": policy_toml(allow, delay_on_suspect), "hook.sh": HOOK_SH},
        needs_testbed=True,
        ready=_is_fix,
        confirmed=_is_confirmed,
        suspected=_is_suspected,
    )


def _clock_site(line: ConsoleLine, site: str) -> bool:
    ev = line.event()
    return bool(
        ev and ev.get("lab") == "clock" and ev.get("event") == "site" and ev.get("site") == site
    )


def clock_program(background: str = "") -> GuestProgram:
    """The development probe alone: proves boot, per-site networking and migration without geoprobe.

    "Confirmed" here means the guest's packets are answered by site B's clock.
    """
    return GuestProgram(
        name="clock",
        run_sh=RUN_SH.format(
            secret=SECRET,
            extra=background,
            command=f"exec python3 /lab/guest_clock.py {CLOCK_PORT}",
        ),
        files={"guest_clock.py": (HERE / "guest_clock.py").read_text()},
        needs_testbed=False,
        ready=lambda line: _clock_site(line, "A"),
        confirmed=lambda line: _clock_site(line, "B"),
    )
