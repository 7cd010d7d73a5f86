"""webhook and syslog: tell someone else, who is not on the VM being moved.

The webhook POSTs the CloudEvent in structured mode (``application/cloudevents+json``) with
urllib only, retrying connection errors and 5xx/408/425/429 with exponential backoff inside the
action's timeout. It talks to the configured origin only: proxies from the environment are
ignored, and a redirect (any 3xx) is a failed delivery, never followed, so neither the event nor
the ``Authorization`` and other configured headers can be sent on to another host. Credentials
written in the URL (``https://user:password@host/``) are sent as HTTP Basic authentication and
shown as ``user:***@host`` wherever the URL is reported.
The syslog action writes an RFC 3164 line to the local syslog socket (``/dev/log``).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

import geoprobe
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Outcome
from geoprobe.policy import ActionSpec

CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
PER_TRY_TIMEOUT_S = 5.0
RETRY_STATUS = {408, 425, 429}


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an HTTPError: following one would carry secrets elsewhere."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirects())


@dataclass(frozen=True)
class Target:
    """The URL to request (credentials taken out), how to show it, and its Basic credentials."""

    url: str
    shown: str
    authorization: str | None = None


def _hostport(parts: urllib.parse.SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def target(url: str) -> Target:
    """Split credentials out of ``url``; raise ValueError when it cannot be parsed."""
    parts = urllib.parse.urlsplit(url)
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    if "@" not in parts.netloc:
        return Target(url, url)
    hostport = _hostport(parts)
    user = parts.username or ""
    password = parts.password
    shown_user = user + (":***" if password is not None else "")
    creds = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
    return Target(
        urllib.parse.urlunsplit(parts._replace(netloc=hostport)),
        urllib.parse.urlunsplit(parts._replace(netloc=f"{shown_user}@{hostport}")),
        "Basic " + base64.b64encode(creds.encode()).decode("ascii"),
    )


def redact_url(url: str) -> str:
    """``url`` fit to print: a password in it becomes ``***``."""
    try:
        return target(url).shown
    except ValueError:
        scheme = url.partition("://")[0]
        return f"{scheme}://*** (unparseable URL)"


def plan_webhook(spec: ActionSpec, ctx: ActionContext) -> str:
    return (
        f"POST the CloudEvent ({CONTENT_TYPE}) to {redact_url(str(spec.options['url']))}, "
        f"up to {int(spec.options.get('retries', DEFAULT_RETRIES))} retries, no redirects"
    )


def _headers(spec: ActionSpec, dest: Target) -> dict[str, str]:
    configured: Mapping[str, str] = spec.options.get("headers", {})
    headers = {"Content-Type": CONTENT_TYPE, "User-Agent": f"geoprobe/{geoprobe.__version__}"}
    if dest.authorization and not any(k.lower() == "authorization" for k in configured):
        headers["Authorization"] = dest.authorization
    headers.update(configured)
    return headers


def run_webhook(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    raw_url = str(spec.options["url"])
    try:
        dest = target(raw_url)
    except ValueError as exc:
        raise ActionFailed(f"cannot POST to {redact_url(raw_url)}: {exc}") from None
    url = dest.shown
    retries = int(spec.options.get("retries", DEFAULT_RETRIES))
    backoff = float(spec.options.get("backoff", DEFAULT_BACKOFF_S))
    headers = _headers(spec, dest)
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
        try:
            req = urllib.request.Request(dest.url, data=body, headers=headers, method="POST")
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
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location") if exc.headers else None
                location = redact_url(str(where)) if where else "(no Location)"
                attempts.append({"status": exc.code, "location": location})
                raise ActionFailed(
                    f"POST {url} -> {exc.code} {exc.reason}: redirect to {location} not followed "
                    "(a redirect is a failed delivery)",
                    data={"attempts": attempts},
                ) from None
            attempts.append({"status": exc.code})
            if exc.code < 500 and exc.code not in RETRY_STATUS:
                raise ActionFailed(
                    f"POST {url} -> {exc.code} {exc.reason}", data={"attempts": attempts}
                ) from None
        except ValueError as exc:  # http.client.InvalidURL and the like: retrying cannot help
            raise ActionFailed(
                f"cannot POST to {url}: {exc}", data={"attempts": attempts}
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            attempts.append({"error": f"{type(exc).__name__}: {reason}"[:200]})
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
