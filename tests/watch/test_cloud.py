"""Cloud maintenance notices against a local HTTP server on loopback that speaks the three APIs.

The server is real (ThreadingHTTPServer); it records every request, so the tests can check the
headers each API demands and that nothing ever POSTs an Azure approval.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from geoprobe.watch.cloud import (
    AwsScheduledEvents,
    AzureScheduledEvents,
    CloudError,
    CloudNotices,
    GceMaintenance,
)


@dataclass
class Metadata:
    """What the fake metadata service says; tests change it while clients poll."""

    gce_value: str = "NONE"
    gce_etag: int = 1
    gce_flavor: bool = True
    fail: dict[str, int] = field(default_factory=dict)  # path prefix -> HTTP status to answer
    delay: float = 0.0
    azure: Any = field(default_factory=lambda: {"DocumentIncarnation": 0, "Events": []})
    aws: Any = None  # None -> 404 (no events)
    tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def set_gce(self, value: str) -> None:
        with self.changed:
            self.gce_value = value
            self.gce_etag += 1
            self.changed.notify_all()


def _handler(md: Metadata) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: str | bytes, headers: dict[str, str] | None = None
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _common(self, method: str) -> bool:
            md.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if md.delay:
                time.sleep(md.delay)
            for prefix, status in md.fail.items():
                if self.path.startswith(prefix):
                    self._send(status, "unavailable")
                    return True
            return False

        def do_PUT(self) -> None:
            if self._common("PUT"):
                return
            if (
                self.path == "/latest/api/token"
                and "X-aws-ec2-metadata-token-ttl-seconds" in self.headers
            ):
                tok = f"tok{len(md.tokens)}"
                md.tokens.add(tok)
                self._send(200, tok)
            else:
                self._send(400, "bad")

        def do_POST(self) -> None:
            md.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
            self._send(200, "")

        def do_GET(self) -> None:
            if self._common("GET"):
                return
            path, _, query = self.path.partition("?")
            if path == "/computeMetadata/v1/instance/maintenance-event":
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403, "Missing Metadata-Flavor:Google header.")
                if "wait_for_change=true" in query:
                    params = dict(p.split("=", 1) for p in query.split("&"))
                    with md.changed:
                        md.changed.wait_for(
                            lambda: params.get("last_etag") != str(md.gce_etag),
                            timeout=float(params.get("timeout_sec", 5)),
                        )
                headers = {"ETag": str(md.gce_etag)}
                if md.gce_flavor:
                    headers["Metadata-Flavor"] = "Google"
                return self._send(200, md.gce_value, headers)
            if path == "/metadata/scheduledevents":
                if self.headers.get("Metadata") != "true" or "api-version=2020-07-01" not in query:
                    return self._send(400, '{"error": "Bad request"}')
                body = md.azure if isinstance(md.azure, (str, bytes)) else json.dumps(md.azure)
                return self._send(200, body, {"Content-Type": "application/json"})
            if path == "/latest/meta-data/events/maintenance/scheduled":
                if self.headers.get("X-aws-ec2-metadata-token") not in md.tokens:
                    return self._send(401, "")
                if md.aws is None:
                    return self._send(404, "Not Found")
                body = md.aws if isinstance(md.aws, str) else json.dumps(md.aws)
                return self._send(200, body)
            self._send(404, "Not Found")

    return H


@pytest.fixture
def md() -> Iterator[tuple[Metadata, str]]:
    state = Metadata()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        with state.changed:
            state.changed.notify_all()
        server.shutdown()
        server.server_close()


# -- GCE ---------------------------------------------------------------------------------------


def test_gce_none_then_migrate(md: tuple[Metadata, str]) -> None:
    state, url = md
    gce = GceMaintenance(url)
    assert gce.poll() == []
    assert state.requests[-1][2].get("metadata-flavor") == "Google"
    state.set_gce("MIGRATE_ON_HOST_MAINTENANCE")
    [n] = gce.poll()
    assert n.provider == "gce" and n.kind == "MIGRATE_ON_HOST_MAINTENANCE" and n.migration
    state.set_gce("TERMINATE_ON_HOST_MAINTENANCE")
    [n] = gce.poll()
    assert not n.migration


def test_gce_long_poll_returns_when_the_value_changes(md: tuple[Metadata, str]) -> None:
    state, url = md
    gce = GceMaintenance(url, wait_s=30)
    gce.poll()
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(gce.poll(wait=True)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # hanging until something changes
    state.set_gce("MIGRATE_ON_HOST_MAINTENANCE")
    t.join(10)
    assert not t.is_alive() and result[0][0].kind == "MIGRATE_ON_HOST_MAINTENANCE"
    q = state.requests[-1][1]
    assert "wait_for_change=true" in q and "last_etag=1" in q


def test_gce_errors(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.fail["/computeMetadata"] = 503
    with pytest.raises(CloudError, match="503"):
        GceMaintenance(url).poll()
    state.fail.clear()
    state.gce_flavor = False
    with pytest.raises(CloudError, match="Metadata-Flavor"):
        GceMaintenance(url).poll()
    state.gce_flavor = True
    state.gce_value = "<html>oops</html>"
    with pytest.raises(CloudError, match="malformed"):
        GceMaintenance(url).poll()


def test_timeouts_and_unreachable_raise_cloud_error(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.delay = 1.5
    with pytest.raises(CloudError):
        GceMaintenance(url, timeout=0.3).poll()
    state.delay = 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(CloudError):
            AzureScheduledEvents(f"http://127.0.0.1:{port}", timeout=1).poll()


# -- Azure -------------------------------------------------------------------------------------

FREEZE = {
    "EventId": "602d9444-d2cd-49c7-8624-8643e7171297",
    "EventType": "Freeze",
    "ResourceType": "VirtualMachine",
    "Resources": ["vm1"],
    "EventStatus": "Scheduled",
    "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
    "Description": "Host server is undergoing maintenance.",
    "EventSource": "Platform",
    "DurationInSeconds": 5,
}


def test_azure_freeze_is_read_and_never_approved(md: tuple[Metadata, str]) -> None:
    state, url = md
    az = AzureScheduledEvents(url)
    assert az.poll() == []
    state.azure = {
        "DocumentIncarnation": 2,
        "Events": [FREEZE, {**FREEZE, "EventType": "Reboot", "EventId": "x"}],
    }
    notices = az.poll()
    assert [n.kind for n in notices] == ["Freeze", "Reboot"]
    assert notices[0].migration and not notices[1].migration
    assert notices[0].not_before == FREEZE["NotBefore"] and az.incarnation == 2
    sig = CloudNotices([az])
    r = sig.sample()
    assert r.anomalous and r.detail["migration"] and "Freeze" in r.reason
    assert all(m != "POST" for m, _, _ in state.requests)
    assert all(h.get("metadata") == "true" for _, _, h in state.requests)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps({"Events": "x"}),
        json.dumps({"Events": [{"a": 1}]}),
        json.dumps([1, 2]),
    ],
)
def test_azure_malformed(md: tuple[Metadata, str], body: str) -> None:
    state, url = md
    state.azure = body
    with pytest.raises(CloudError):
        AzureScheduledEvents(url).poll()


# -- AWS ---------------------------------------------------------------------------------------

AWS_EVENT = {
    "NotBefore": "21 Jan 2019 09:00:43 GMT",
    "Code": "system-reboot",
    "Description": "scheduled reboot",
    "EventId": "instance-event-0d59937288b749b32",
    "NotAfter": "21 Jan 2019 09:17:23 GMT",
    "State": "active",
}


def test_aws_token_then_events(md: tuple[Metadata, str]) -> None:
    state, url = md
    aws = AwsScheduledEvents(url, token_ttl_s=300)
    assert aws.poll() == []  # 404: nothing scheduled
    put = [r for r in state.requests if r[0] == "PUT"]
    assert len(put) == 1 and put[0][2]["x-aws-ec2-metadata-token-ttl-seconds"] == "300"
    state.aws = [
        AWS_EVENT,
        {**AWS_EVENT, "EventId": "old", "State": "completed"},
        {**AWS_EVENT, "EventId": "c", "Description": "[Canceled] scheduled reboot", "State": ""},
    ]
    [n] = aws.poll()
    assert n.kind == "system-reboot" and n.event_id == AWS_EVENT["EventId"] and n.not_before
    assert aws.tokens_fetched == 1  # the token was reused


def test_aws_expired_token_is_renewed(md: tuple[Metadata, str]) -> None:
    state, url = md
    aws = AwsScheduledEvents(url)
    aws.poll()
    state.tokens.clear()  # IMDS forgot the token: it answers 401
    state.aws = [AWS_EVENT]
    assert [n.kind for n in aws.poll()] == ["system-reboot"]
    assert aws.tokens_fetched == 2


def test_aws_errors(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.fail["/latest/api/token"] = 403
    with pytest.raises(CloudError, match="token"):
        AwsScheduledEvents(url).poll()
    state.fail.clear()
    state.aws = "{not json"
    with pytest.raises(CloudError, match="JSON"):
        AwsScheduledEvents(url).poll()
    state.aws = "{}"
    with pytest.raises(CloudError, match="list"):
        AwsScheduledEvents(url).poll()


# -- the signal --------------------------------------------------------------------------------


def test_signal_unavailable_when_no_service_answers(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.fail["/"] = 503
    r = CloudNotices(
        [GceMaintenance(url), AzureScheduledEvents(url), AwsScheduledEvents(url)]
    ).sample()
    assert not r.available and "503" in r.reason


def test_signal_quiet_and_partial(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.fail["/metadata/"] = 503  # Azure down; GCE answers NONE
    r = CloudNotices([GceMaintenance(url), AzureScheduledEvents(url)]).sample()
    assert r.available and not r.anomalous and r.value == 0
    assert r.detail["providers"] == ["gce"] and "azure" in r.detail["errors"]


def test_background_long_poll_sees_a_migration_notice(md: tuple[Metadata, str]) -> None:
    state, url = md
    sig = CloudNotices([GceMaintenance(url, wait_s=30), AzureScheduledEvents(url)], interval_s=0.1)
    sig.start()
    try:
        deadline = time.monotonic() + 10
        while not sig.sample().available:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sig.changed.clear()
        state.set_gce("MIGRATE_ON_HOST_MAINTENANCE")
        assert sig.changed.wait(10)
        r = sig.sample()
        assert r.anomalous and r.detail["migration"] and r.detail["trigger"]
        state.set_gce("NONE")
        while sig.sample().anomalous:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
    finally:
        sig.stop()
    assert all(m != "POST" for m, _, _ in state.requests)


def test_background_polling_backs_off_on_errors(md: tuple[Metadata, str]) -> None:
    state, url = md
    state.fail["/metadata/"] = 503
    sig = CloudNotices([AzureScheduledEvents(url)], interval_s=0.05, max_backoff_s=0.4)
    sig.start()
    time.sleep(1.0)
    n_fail = len(state.requests)
    state.fail.clear()
    state.azure = {"DocumentIncarnation": 1, "Events": [FREEZE]}
    deadline = time.monotonic() + 10
    try:
        while not sig.sample().anomalous:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        sig.stop()
    assert 2 <= n_fail < 15  # 0.05, 0.1, 0.2, 0.4, 0.4 ... not one request per 50 ms
