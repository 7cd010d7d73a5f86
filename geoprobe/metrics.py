"""The watch's Prometheus metrics: a textfile for node_exporter, and an optional scrape endpoint.

Built on ``prometheus_client``: one registry per watch, holding one collector that renders the last
round (:class:`RoundMetrics`) on demand, so a scrape or the textfile always shows the last round's
values and nothing older. Names are ``geoprobe_*`` in base units (seconds, meters, ratios) and
counters end in ``_total`` (prometheus_client adds the suffix).

Liveness is ``geoprobe_last_round_timestamp_seconds``: alert when ``time() -`` it exceeds a few
``geoprobe_probe_interval_seconds``, which holds whether the watch stopped, hung or was killed.
``geoprobe_up`` is 1 while the watch runs and is written as 0 when it exits (cleanly or by an
exception), so a stopped watch never leaves ``up 1`` behind; after ``kill -9`` only the timestamp
can tell.

The textfile is replaced atomically (a temp file in the same directory, fsync, rename), so the
collector never reads half a file.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from geoprobe.errors import InputError


@dataclass(frozen=True, slots=True)
class FixMetrics:
    """What the gauges say about the round's fix."""

    lat: float
    lon: float
    error_radius_m: float
    allowed_probability: float
    certified: str | None


@dataclass(slots=True)
class RoundMetrics:
    """The last round as the metrics show it; counters are totals since the watch started."""

    timestamp_s: float = 0.0
    duration_s: float = 0.0
    interval_s: float = 0.0
    landmarks_answered: int = 0
    warming_up: bool = False
    state: str = ""
    states: Sequence[str] = ()
    changed_landmarks: int | None = None
    fix: FixMetrics | None = None
    rounds: int = 0
    failed_rounds: int = 0
    suspected: int = 0
    confirmed: Mapping[str, int] = field(default_factory=dict)
    events: int = 0
    hook_errors: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> replies, all rounds


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


class _RoundCollector(Collector):
    def __init__(self, owner: WatchMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        with self.owner.lock:
            r, up = self.owner.last, self.owner.up
        yield _gauge("geoprobe_up", "1 while the watch runs; 0 once it has exited.", 1 if up else 0)
        if r is None:
            return
        yield _gauge(
            "geoprobe_last_round_timestamp_seconds",
            "UNIX time of the last round (liveness: compare with time()).",
            r.timestamp_s,
        )
        yield _gauge("geoprobe_round_duration_seconds", "Duration of the last round.", r.duration_s)
        yield _gauge(
            "geoprobe_probe_interval_seconds",
            "Seconds until the next round (shorter while a migration is suspected).",
            r.interval_s,
        )
        yield _gauge(
            "geoprobe_landmarks_answered",
            "Landmarks that answered in the last round.",
            r.landmarks_answered,
        )
        yield _gauge(
            "geoprobe_watch_warming_up",
            "1 until the baseline is built (at start and after a move).",
            1 if r.warming_up else 0,
        )
        state = GaugeMetricFamily(
            "geoprobe_watch_state",
            "1 for the migration state machine's state after the last round, 0 for the others.",
            labels=["state"],
        )
        for s in r.states:
            state.add_metric([s], 1 if s == r.state else 0)
        yield state
        if r.changed_landmarks is not None:
            yield _gauge(
                "geoprobe_fingerprint_changed_landmarks",
                "Landmarks whose minimum RTT moved beyond noise in the last round.",
                r.changed_landmarks,
            )
        if r.fix is not None:
            f = r.fix
            yield _gauge(
                "geoprobe_fix_latitude_degrees", "Latitude of the last round's fix.", f.lat
            )
            yield _gauge(
                "geoprobe_fix_longitude_degrees", "Longitude of the last round's fix.", f.lon
            )
            yield _gauge(
                "geoprobe_fix_error_radius_meters",
                "Error radius of the last round's fix.",
                f.error_radius_m,
            )
            yield _gauge(
                "geoprobe_allowed_probability_ratio",
                "Probability that the VM is in the allowed set, from the last round's fix.",
                f.allowed_probability,
            )
            yield _gauge(
                "geoprobe_fix_certified",
                "1 when the last round's fix is certified in one country (the label names it).",
                1 if f.certified else 0,
                country=f.certified or "",
            )
        yield from self._counters(r)

    @staticmethod
    def _counters(r: RoundMetrics) -> Iterator[Metric]:
        plain = (
            ("geoprobe_watch_rounds", "Probe rounds run.", r.rounds),
            (
                "geoprobe_watch_failed_rounds",
                "Rounds with too few landmarks answering, or that failed.",
                r.failed_rounds,
            ),
            ("geoprobe_migrations_suspected", "Migrations suspected.", r.suspected),
            ("geoprobe_events", "CloudEvents emitted.", r.events),
            ("geoprobe_hook_errors", "Policy responses that raised.", r.hook_errors),
        )
        for name, doc, value in plain:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        confirmed = CounterMetricFamily(
            "geoprobe_migrations_confirmed",
            "Migrations confirmed, by whether they crossed the border (true, false, unknown).",
            labels=["crossing"],
        )
        for crossing, n in sorted(r.confirmed.items()):
            confirmed.add_metric([crossing], n)
        yield confirmed
        rejected = CounterMetricFamily(
            "geoprobe_rejected_replies",
            "Replies refused and never used, by reason: a bad signature, wrong key or landmark id "
            "or location is a forged reply; replayed, late, unknown nonce, malformed.",
            labels=["reason"],
        )
        for reason, n in sorted(r.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected


def parse_listen(spec: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (addr, port); a one-line error otherwise."""
    host, sep, port_text = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
        ipaddress.ip_address(host)
    except ValueError:
        port = -1
    if not sep or not 0 < port < 65536:
        raise InputError(
            f"{spec!r} is not ADDR:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)",
            field="--metrics-listen",
        )
    return host, port


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class WatchMetrics:
    """The watch's registry; ``observe`` after each round, ``close`` when the watch exits."""

    def __init__(self, textfile: Path | None = None, listen: tuple[str, int] | None = None) -> None:
        self.textfile = textfile
        self.lock = threading.Lock()
        self.last: RoundMetrics | None = None
        self.up = True
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RoundCollector(self))
        self._server: Any = None
        self._rejected: Counter[str] = Counter()
        if listen is not None:
            host, port = listen
            try:
                self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                raise InputError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    field="--metrics-listen",
                ) from None

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the scrape endpoint listens (the port is the real one when 0 was asked for)."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def count_rejected(self, rejected: Iterable[Mapping[str, int]]) -> dict[str, int]:
        """Add one round's rejected replies (per measurement: reason -> count); the totals."""
        for per_landmark in rejected:
            self._rejected.update(per_landmark)
        return dict(self._rejected)

    def observe(self, r: RoundMetrics) -> None:
        with self.lock:
            self.last = r
        self.write()

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def write(self) -> None:
        if self.textfile is not None:
            write_atomically(self.textfile, self.text())

    def close(self) -> None:
        """Say the watch is no longer up (textfile and endpoint), then stop the endpoint."""
        with self.lock:
            self.up = False
        try:
            self.write()
        finally:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
