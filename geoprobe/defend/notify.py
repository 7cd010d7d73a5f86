"""webhook and syslog: tell someone else, who is not on the VM being moved.

The webhook POSTs the CloudEvent in structured mode (``application/cloudevents+json``) with
urllib only, retrying connection errors and 5xx/408/429 with exponential backoff inside the
action's timeout. Proxies from the environment are ignored: the owner's URL is used as written.
The syslog action writes an RFC 3164 line to the local syslog socket (``/dev/log``).
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import geoprobe
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Outcome
from geoprobe.policy import ActionSpec

CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
PER_TRY_TIMEOUT_S = 5.0
RETRY_STATUS = {408, 425, 429}

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def plan_webhook(spec: ActionSpec, ctx: ActionContext) -> str:
    return (
        f"POST the CloudEvent ({CONTENT_TYPE}) to {spec.options['url']}, "
        f"up to {int(spec.options.get('retries', DEFAULT_RETRIES))} retries"
    )


def run_webhook(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    url = str(spec.options["url"])
    retries = int(spec.options.get("retries", DEFAULT_RETRIES))
    backoff = float(spec.options.get("backoff", DEFAULT_BACKOFF_S))
    headers = {
        "Content-Type": CONTENT_TYPE,
        "User-Agent": f"geoprobe/{geoprobe.__version__}",
        **spec.options.get("headers", {}),
    }
    body = ctx.event_json
    attempts: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        if attempt:
            wait = min(backoff * 2 ** (attempt - 1), ctx.deadline.remaining())
            time.sleep(wait)
        if ctx.deadline.expired():
            raise ActionTimeout(
                f"timed out after {len(attempts)} attempt(s) to {url}", data={"attempts": attempts}
            )
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(
                req, timeout=max(0.05, min(PER_TRY_TIMEOUT_S, ctx.deadline.remaining()))
            ) as resp:
                status = int(resp.status)
                resp.read(4096)
            attempts.append({"status": status})
            return Outcome(
                f"POST {url} -> {status} (attempt {attempt + 1})", data={"attempts": attempts}
            )
        except urllib.error.HTTPError as exc:
            attempts.append({"status": exc.code})
            if exc.code < 500 and exc.code not in RETRY_STATUS:
                raise ActionFailed(
                    f"POST {url} -> {exc.code} {exc.reason}", data={"attempts": attempts}
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            attempts.append({"error": str(reason)})
    raise ActionFailed(
        f"POST {url} failed after {len(attempts)} attempt(s): "
        f"{attempts[-1].get('error') or attempts[-1].get('status')}",
        data={"attempts": attempts},
    )


# --- syslog ----------------------------------------------------------------------------------

PRIORITIES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
FACILITIES = {
    "kern": 0,
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
DEFAULT_MESSAGE = (
    "{verdict}: migration event {id} from {from} to {to} ({distance_km} km); policy actions running"
)


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _message(spec: ActionSpec, ctx: ActionContext) -> str:
    data: Mapping[str, Any] = ctx.event.get("data") or {}
    fields = _Fields({k: v for k, v in data.items() if v is not None})
    fields.update({"verdict": ctx.verdict, "id": ctx.event_id, "type": ctx.event.get("type", "")})
    template = str(spec.options.get("message", DEFAULT_MESSAGE))
    try:
        return template.format_map(fields)
    except (ValueError, IndexError, AttributeError):  # a stray brace in the owner's text
        return template


def _line(spec: ActionSpec, ctx: ActionContext) -> bytes:
    pri = (
        FACILITIES[str(spec.options.get("facility", "daemon"))] * 8
        + PRIORITIES[str(spec.options.get("priority", "alert"))]
    )
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
    return f"<{pri}>{stamp} geoprobe[{os.getpid()}]: {_message(spec, ctx)}".encode()


def plan_syslog(spec: ActionSpec, ctx: ActionContext) -> str:
    return f"log to {spec.options.get('address', '/dev/log')}: {_message(spec, ctx)}"


def run_syslog(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    address = str(spec.options.get("address", "/dev/log"))
    line = _line(spec, ctx)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(max(0.05, ctx.deadline.remaining()))
            s.connect(address)
            s.send(line)
    except OSError as dgram_error:
        try:  # some syslog daemons listen on a stream socket: frame with NUL like SysLogHandler
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(max(0.05, ctx.deadline.remaining()))
                s.connect(address)
                s.sendall(line + b"\0")
        except OSError:
            raise ActionFailed(
                f"cannot log to {address}: {dgram_error.strerror or dgram_error}"
            ) from None
    return Outcome(f"logged to {address}", data={"line": line.decode()})
