"""Fleet collection: a CloudEvent per attestation to a webhook, and the last attested period's
end for Prometheus. The webhook goes through the policy's webhook action (retries, backoff)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geoprobe import events
from geoprobe.attest.chain import Issued

ATTESTED = "io.geoprobe.residency.attested"
GAUGE = "geoprobe_attest_last_period_end_timestamp_seconds"
WEBHOOK_TIMEOUT_S = 20.0


def cloudevent(issued: Issued, *, source: str | None = None) -> dict[str, Any]:
    """Structured-mode CloudEvent whose data is the DSSE envelope itself.

    The id is the statement's digest, so a collector that receives a retry twice keeps one.
    """
    return events.make_event(
        ATTESTED,
        issued.envelope.to_json(),
        source=source,
        subject=f"{issued.period.label} sequence {issued.sequence} {issued.verdict}",
        event_id=issued.envelope.digest,
        time=datetime.fromtimestamp(issued.period.end, UTC),
    )


def post(url: str, event: dict[str, Any], *, timeout: float = WEBHOOK_TIMEOUT_S) -> str:
    """POST the event; the action's one-line outcome (raises ``ActionFailed`` on failure)."""
    from geoprobe.defend.base import ActionContext, Deadline
    from geoprobe.defend.notify import run_webhook
    from geoprobe.policy import ActionSpec

    spec = ActionSpec(
        action="webhook", verdict="attested", index=0, timeout=timeout, options={"url": url}
    )
    ctx = ActionContext(
        event=event,
        verdict="attested",
        deadline=Deadline.after(timeout),
        store_path=Path("/dev/null"),
    )
    return run_webhook(spec, ctx).detail


def write_gauge(path: Path, period_end: float) -> None:
    """A textfile for node_exporter: alert when time() minus this exceeds two periods."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from geoprobe.metrics import write_atomically

    registry = CollectorRegistry()
    g = Gauge(GAUGE, "End of the last attested period (UNIX time).", registry=registry)
    g.set(period_end)
    write_atomically(path, generate_latest(registry))
