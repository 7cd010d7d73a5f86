"""webhook against a real HTTP server on 127.0.0.1; syslog into a real unix datagram socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from geoprobe.defend import notify
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
