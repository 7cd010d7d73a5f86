"""Cloud maintenance notices: the provider saying, ahead of time, that the VM will be moved.

* GCE: ``computeMetadata/v1/instance/maintenance-event`` (``Metadata-Flavor: Google``), a long
  poll with ``wait_for_change=true`` and the last ETag. Values: ``NONE``,
  ``MIGRATE_ON_HOST_MAINTENANCE``, ``TERMINATE_ON_HOST_MAINTENANCE``. It answers 503 while
  maintenance is under way: retry.
* Azure: Scheduled Events, ``metadata/scheduledevents?api-version=2020-07-01`` (``Metadata: true``);
  ``Freeze`` is the live-migration pause. We only ever read: approving an event (POSTing
  ``StartRequests``) would *hasten* the very move we watch for, so this module has no POST at all.
* AWS: IMDSv2. ``PUT /latest/api/token`` (TTL header) for a session token, then
  ``GET /latest/meta-data/events/maintenance/scheduled`` with it; a 401 means the token expired.

A notice is a trigger to measure (probe now, probe faster), never evidence of where the VM is:
the provider's word about maintenance says nothing about the new host's country. Requests bypass
any HTTP proxy from the environment, since metadata services are link-local.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from geoprobe.watch.signals.base import Reading

GCE_BASE = "http://metadata.google.internal"
IMDS_BASE = "http://169.254.169.254"
AZURE_API_VERSION = "2020-07-01"

GCE_MOVES = {"MIGRATE_ON_HOST_MAINTENANCE"}
AWS_DONE_STATES = {"completed", "canceled", "cancelled"}


class CloudError(Exception):
    """The metadata service was unreachable, said no, or answered something we cannot read."""


@dataclass(frozen=True, slots=True)
class Notice:
    provider: str  # "gce", "azure", "aws"
    kind: str  # MIGRATE_ON_HOST_MAINTENANCE, Freeze, system-maintenance, ...
    event_id: str = ""
    status: str = ""  # Scheduled/Started (Azure), active (AWS)
    not_before: str | None = None
    description: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)
    received: float = field(default_factory=time.time)

    @property
    def migration(self) -> bool:
        """Does the notice announce a live migration (rather than a reboot or stop)?"""
        return self.kind in GCE_MOVES or (self.provider == "azure" and self.kind == "Freeze")

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "kind": self.kind,
            "event_id": self.event_id,
            "status": self.status,
            "not_before": self.not_before,
            "description": self.description,
            "migration": self.migration,
            "received": self.received,
        }


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange. HTTP errors come back as a status; network trouble raises CloudError."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read(1 << 16)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CloudError(f"{url}: {reason}") from None


class Source(Protocol):
    provider: str

    def poll(self, wait: bool = False) -> list[Notice]:
        """Current notices (``wait``: long-poll for a change where the API supports it)."""
        ...


class GceMaintenance:
    provider = "gce"
    PATH = "/computeMetadata/v1/instance/maintenance-event"

    def __init__(self, base_url: str = GCE_BASE, timeout: float = 5.0, wait_s: int = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.wait_s = wait_s
        self.etag: str | None = None
        self.value: str | None = None

    def poll(self, wait: bool = False) -> list[Notice]:
        url = self.base_url + self.PATH
        timeout = self.timeout
        if wait:
            url += f"?wait_for_change=true&timeout_sec={self.wait_s}"
            if self.etag:
                url += f"&last_etag={self.etag}"
            timeout = self.timeout + self.wait_s
        status, headers, body = _request(
            url, headers={"Metadata-Flavor": "Google"}, timeout=timeout
        )
        if status != 200:
            raise CloudError(
                f"gce: HTTP {status} from maintenance-event"
                + (" (maintenance under way?)" if status == 503 else "")
            )
        if headers.get("metadata-flavor") != "Google":
            raise CloudError(
                "gce: answer lacks 'Metadata-Flavor: Google' (not a GCE metadata server)"
            )
        value = body.decode("ascii", "replace").strip()
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
            raise CloudError(f"gce: malformed maintenance-event value {value[:40]!r}")
        self.etag = headers.get("etag", self.etag)
        self.value = value
        if value == "NONE":
            return []
        return [
            Notice("gce", value, event_id=self.etag or "", status="pending", raw={"value": value})
        ]


class AzureScheduledEvents:
    """Read-only client of Azure Scheduled Events. It never approves (never POSTs) an event."""

    provider = "azure"
    PATH = f"/metadata/scheduledevents?api-version={AZURE_API_VERSION}"

    def __init__(self, base_url: str = IMDS_BASE, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.incarnation: int | None = None

    def poll(self, wait: bool = False) -> list[Notice]:
        status, _, body = _request(
            self.base_url + self.PATH, headers={"Metadata": "true"}, timeout=self.timeout
        )
        if status != 200:
            raise CloudError(f"azure: HTTP {status} from scheduledevents")
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CloudError(f"azure: scheduledevents is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("Events"), list):
            raise CloudError("azure: scheduledevents lacks an 'Events' list")
        inc = doc.get("DocumentIncarnation")
        if isinstance(inc, int) and not isinstance(inc, bool):
            self.incarnation = inc
        out = []
        for ev in doc["Events"]:
            if not isinstance(ev, dict) or not isinstance(ev.get("EventType"), str):
                raise CloudError("azure: an event lacks its EventType")
            nb = ev.get("NotBefore")
            out.append(
                Notice(
                    "azure",
                    ev["EventType"],
                    event_id=str(ev.get("EventId", "")),
                    status=str(ev.get("EventStatus", "")),
                    not_before=str(nb) if nb else None,
                    description=str(ev.get("Description", "")),
                    raw=ev,
                )
            )
        return out


class AwsScheduledEvents:
    """IMDSv2: a session token first, renewed before it expires and again on a 401."""

    provider = "aws"
    TOKEN_PATH = "/latest/api/token"
    PATH = "/latest/meta-data/events/maintenance/scheduled"

    def __init__(
        self, base_url: str = IMDS_BASE, timeout: float = 5.0, token_ttl_s: int = 21_600
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token_ttl_s = token_ttl_s
        self._token: str | None = None
        self._expires = 0.0
        self.tokens_fetched = 0

    def _fetch_token(self) -> str:
        status, _, body = _request(
            self.base_url + self.TOKEN_PATH,
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)},
            timeout=self.timeout,
        )
        token = body.decode("ascii", "replace").strip()
        if status != 200 or not token:
            raise CloudError(f"aws: no IMDSv2 token (HTTP {status})")
        self._token = token
        self._expires = time.monotonic() + self.token_ttl_s * 0.9
        self.tokens_fetched += 1
        return token

    def poll(self, wait: bool = False) -> list[Notice]:
        token = (
            self._token if self._token and time.monotonic() < self._expires else self._fetch_token()
        )
        for attempt in range(2):
            status, _, body = _request(
                self.base_url + self.PATH,
                headers={"X-aws-ec2-metadata-token": token},
                timeout=self.timeout,
            )
            if status == 401 and attempt == 0:  # the token expired early (or IMDS restarted)
                token = self._fetch_token()
                continue
            break
        if status == 404:  # no events scheduled
            return []
        if status != 200:
            raise CloudError(f"aws: HTTP {status} from events/maintenance/scheduled")
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CloudError(f"aws: scheduled events are not JSON: {exc}") from None
        if not isinstance(doc, list):
            raise CloudError("aws: scheduled events are not a list")
        out = []
        for ev in doc:
            if not isinstance(ev, dict) or not isinstance(ev.get("Code"), str):
                raise CloudError("aws: an event lacks its Code")
            state = str(ev.get("State", ""))
            desc = str(ev.get("Description", ""))
            if state.lower() in AWS_DONE_STATES or desc.startswith(("[Completed]", "[Canceled]")):
                continue
            nb = ev.get("NotBefore")
            out.append(
                Notice(
                    "aws",
                    ev["Code"],
                    event_id=str(ev.get("EventId", "")),
                    status=state,
                    not_before=str(nb) if nb else None,
                    description=desc,
                    raw=ev,
                )
            )
        return out


def default_sources(
    gce: str = GCE_BASE, imds: str = IMDS_BASE, timeout: float = 2.0
) -> list[Source]:
    return [
        GceMaintenance(gce, timeout),
        AzureScheduledEvents(imds, timeout),
        AwsScheduledEvents(imds, timeout),
    ]


class CloudNotices:
    """Maintenance notices from the configured providers, as a signal.

    Without ``start()``, ``sample()`` polls every source once (blocking up to each timeout). With
    it, one thread per source polls in the background (GCE long-polls) and ``sample()`` only reads.
    """

    decisive = True

    def __init__(
        self,
        sources: Sequence[Source] | None = None,
        *,
        name: str = "cloud_notice",
        interval_s: float = 5.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.name = name
        self.sources = list(sources) if sources is not None else default_sources()
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._notices: dict[str, list[Notice]] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.changed = (
            threading.Event()
        )  # set when a source's notices change (the daemon may wait on it)

    def _record(self, src: Source, notices: list[Notice] | None, error: str | None) -> None:
        with self._lock:
            if error is not None:
                self.errors[src.provider] = error
                return
            self.errors.pop(src.provider, None)
            old = [(n.kind, n.event_id, n.status) for n in self._notices.get(src.provider, [])]
            self._notices[src.provider] = notices or []
            if old != [(n.kind, n.event_id, n.status) for n in notices or []]:
                self.changed.set()

    def poll(self) -> list[Notice]:
        for src in self.sources:
            try:
                self._record(src, src.poll(wait=False), None)
            except CloudError as exc:
                self._record(src, None, str(exc))
        return self.notices()

    def notices(self) -> list[Notice]:
        with self._lock:
            return [n for ns in self._notices.values() for n in ns]

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for src in self.sources:
            t = threading.Thread(
                target=self._run, args=(src,), name=f"cloud-{src.provider}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)  # a long poll may still hang; the thread is a daemon
        self._threads = []

    def _run(self, src: Source) -> None:
        backoff = self.interval_s
        wait = isinstance(src, GceMaintenance)
        first = True
        while not self._stop.is_set():
            try:
                # the first GCE read is immediate; later ones hang until the value changes
                self._record(src, src.poll(wait=wait and not first), None)
                first = False
                backoff = self.interval_s
                delay = 0.0 if wait else self.interval_s
            except CloudError as exc:
                self._record(src, None, str(exc))
                delay, backoff = backoff, min(backoff * 2, self.max_backoff_s)
            if delay and self._stop.wait(delay):
                return

    def sample(self) -> Reading:
        if not self._threads:
            self.poll()
        with self._lock:
            answered = [p for p in self._notices]
            errors = dict(self.errors)
            notices = [n for ns in self._notices.values() for n in ns]
        if not answered:
            return Reading.unavailable(
                self.name,
                "no metadata service answered: " + "; ".join(errors.values())
                if errors
                else "no answer yet",
                unit="notices",
            )
        moves = [n for n in notices if n.migration]
        reason = "; ".join(
            f"{n.provider}: {n.kind}" + (f" not before {n.not_before}" if n.not_before else "")
            for n in notices
        )
        return Reading(
            self.name,
            value=float(len(notices)),
            baseline=0.0,
            score=float(len(notices)),
            anomalous=bool(notices),
            unit="notices",
            reason=reason,
            detail={
                "notices": [n.to_json() for n in notices],
                "migration": bool(moves),
                "providers": answered,
                "errors": errors,
                "trigger": True,
            },
        )
