"""webhook against a real HTTP server on 127.0.0.1; syslog into a real unix datagram socket."""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geoprobe.defend import notify, runner
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout

from .conftest import spec
from .receiver import receiver


def test_webhook_posts_the_cloudevent(ctx: Callable[..., ActionContext]) -> None:
    c = ctx()
    with receiver() as rx:
        out = notify.run_webhook(spec("webhook", url=rx.url, headers={"X-Token": "t"}), c)
    (req,) = rx.requests
    assert req.path == "/geoprobe"
    assert req.headers["Content-Type"] == "application/cloudevents+json"
    assert req.headers["X-Token"] == "t"
    assert json.loads(req.body) == dict(c.event)
    assert out.data["attempts"] == [{"status": 200}]


def test_webhook_retries_5xx_and_429_then_succeeds(ctx: Callable[..., ActionContext]) -> None:
    with receiver() as rx:
        rx.statuses = [503, 429]
        out = notify.run_webhook(spec("webhook", url=rx.url, backoff=0.01), ctx())
    assert [a["status"] for a in out.data["attempts"]] == [503, 429, 200]
    assert len(rx.requests) == 3 and rx.requests[0].body == rx.requests[2].body


def test_webhook_does_not_retry_client_errors(ctx: Callable[..., ActionContext]) -> None:
    with receiver() as rx:
        rx.statuses = [404]
        with pytest.raises(ActionFailed, match="404"):
            notify.run_webhook(spec("webhook", url=rx.url, backoff=0.01), ctx())
    assert len(rx.requests) == 1


def test_webhook_gives_up_after_retries_on_refused_connection(
    ctx: Callable[..., ActionContext],
) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ActionFailed, match="after 3 attempt") as exc:
        notify.run_webhook(
            spec("webhook", url=f"http://127.0.0.1:{port}/x", retries=2, backoff=0.01), ctx()
        )
    assert all("error" in a for a in exc.value.data["attempts"])


def test_webhook_stops_retrying_at_the_deadline(ctx: Callable[..., ActionContext]) -> None:
    with receiver() as rx:
        rx.statuses = [500] * 50
        with pytest.raises(ActionTimeout):
            notify.run_webhook(
                spec("webhook", url=rx.url, retries=50, backoff=0.2), ctx(timeout=1.0)
            )
    assert 1 <= len(rx.requests) < 50


def test_syslog_line_reaches_a_real_socket(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    addr = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(addr))
        srv.settimeout(5)
        notify.run_syslog(
            spec(
                "syslog",
                address=str(addr),
                priority="crit",
                facility="auth",
                message="moved {from} -> {to} ({verdict}) {nosuchfield}",
            ),
            ctx(),
        )
        line = srv.recv(4096).decode()
    assert line.startswith(f"<{4 * 8 + 2}>")  # auth=4, crit=2
    assert "geoprobe[" in line and line.endswith("moved DE -> PL (confirmed_crossing) ?")


def test_syslog_without_socket_fails(tmp_path: Path, ctx: Callable[..., ActionContext]) -> None:
    with pytest.raises(ActionFailed, match="cannot log"):
        notify.run_syslog(spec("syslog", address=str(tmp_path / "none")), ctx())


# --- redirects and credentials ------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    origin: str
    seen: list[Seen] = field(default_factory=list)
    status: int = 200
    location: str | None = None


@contextmanager
def server() -> Iterator[Server]:
    """A loopback HTTP server on a free port that records every request, whatever its method."""
    state: Server

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
            self.send_response(state.status)
            if state.location is not None:
                self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_HEAD = _any

        def log_message(self, *args: object) -> None:
            return None

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Server(f"http://127.0.0.1:{srv.server_address[1]}")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield state
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_fails_and_carries_nothing_there(
    ctx: Callable[..., ActionContext], status: int
) -> None:
    with server() as origin, server() as elsewhere:
        origin.status, origin.location = status, f"{elsewhere.origin}/steal?x=1"
        hook = spec(
            "webhook",
            url=f"{origin.origin}/geoprobe",
            headers={"Authorization": "Bearer s3cret-token", "X-Api-Key": "k3y"},
            retries=2,
            backoff=0.01,
        )
        with pytest.raises(ActionFailed) as exc:
            notify.run_webhook(hook, ctx())
    assert elsewhere.seen == []
    (req,) = origin.seen  # one attempt: a redirect is not retried either
    assert req.method == "POST" and req.headers["Authorization"] == "Bearer s3cret-token"
    msg = str(exc.value)
    assert f"-> {status}" in msg and "not followed" in msg and elsewhere.origin in msg
    assert "s3cret" not in msg and "k3y" not in json.dumps(exc.value.data)
    assert exc.value.data["attempts"] == [
        {"status": status, "location": f"{elsewhere.origin}/steal?x=1"}
    ]


def test_redirect_within_the_origin_is_a_failed_delivery_too(
    ctx: Callable[..., ActionContext],
) -> None:
    with server() as origin:
        origin.status, origin.location = 307, "/elsewhere"
        with pytest.raises(ActionFailed, match="redirect"):
            notify.run_webhook(spec("webhook", url=f"{origin.origin}/geoprobe"), ctx())
    assert [r.path for r in origin.seen] == ["/geoprobe"]


def test_the_runner_records_a_redirect_as_failed(ctx: Callable[..., ActionContext]) -> None:
    with server() as origin, server() as elsewhere:
        origin.status, origin.location = 302, elsewhere.origin
        res = runner.execute(spec("webhook", url=origin.origin, timeout=5), ctx())
    assert res.status == "failed" and elsewhere.seen == []


def test_password_in_the_url_is_sent_as_basic_auth_and_never_shown(
    ctx: Callable[..., ActionContext],
) -> None:
    with server() as rx:
        port = rx.origin.rsplit(":", 1)[1]
        url = f"http://alice:pa%40ss-w0rd@127.0.0.1:{port}/hook"
        hook = spec("webhook", url=url)
        shown = notify.plan_webhook(hook, ctx())
        out = notify.run_webhook(hook, ctx())
        rx.status = 404
        with pytest.raises(ActionFailed) as exc:
            notify.run_webhook(hook, ctx())
    first = rx.seen[0]
    assert first.path == "/hook" and first.headers["Host"] == f"127.0.0.1:{port}"
    assert base64.b64decode(first.headers["Authorization"].split()[1]) == b"alice:pa@ss-w0rd"
    for text in (shown, out.detail, json.dumps(out.data), str(exc.value)):
        assert "pa%40ss" not in text and "w0rd" not in text
    assert f"http://alice:***@127.0.0.1:{port}/hook" in out.detail


def test_a_configured_authorization_header_wins_over_url_credentials(
    ctx: Callable[..., ActionContext],
) -> None:
    with server() as rx:
        url = rx.origin.replace("http://", "http://bob:pw@")
        notify.run_webhook(spec("webhook", url=url, headers={"authorization": "Bearer t"}), ctx())
    (req,) = rx.seen
    assert [v for k, v in req.headers.items() if k.lower() == "authorization"] == ["Bearer t"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example/x", "https://u:***@h.example/x"),
        ("https://u@h.example:8443/x?q=1", "https://u@h.example:8443/x?q=1"),
        ("https://:p@h.example/", "https://:***@h.example/"),
        ("https://h.example/x", "https://h.example/x"),
        ("http://u:p@[::1]:80/", "http://u:***@[::1]:80/"),
        ("http://u:p@[::1/", "http://*** (unparseable URL)"),
        ("http://u:p@h:99999/", "http://*** (unparseable URL)"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert notify.redact_url(url) == shown


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=20), st.text(max_size=30))
def test_fuzz_redact_url_never_shows_the_password(secret: str, rest: str) -> None:
    assume("S3CR" not in rest)
    url = f"https://user:S3CR{urllib.parse.quote(secret, safe='')}@{rest}"
    shown = notify.redact_url(url)
    assert "S3CR" not in shown and "\n" not in shown
