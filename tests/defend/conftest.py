"""Shared by the defence tests: real events, specs built through the real policy parser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geoprobe.defend.base import ActionContext, Deadline
from geoprobe.events import CONFIRMED, make_event
from geoprobe.policy import ActionSpec, parse_policy


def crossing_event(event_id: str | None = None, **data: Any) -> dict[str, Any]:
    body = {"crossing": True, "from": "DE", "to": "PL", "distance_km": 620.0, "signals": ["rtt"]}
    body.update(data)
    return make_event(CONFIRMED, body, event_id=event_id)


def spec(action: str, verdict: str = "confirmed_crossing", **options: Any) -> ActionSpec:
    """An ActionSpec as the loader makes it, so tests exercise validated options only."""
    pol = parse_policy({"on": {verdict: [{"action": action, **options}]}})
    return pol.actions_for(verdict)[0]


@pytest.fixture
def ctx(tmp_path: Path) -> Callable[..., ActionContext]:
    def make(
        timeout: float = 10.0,
        event: dict[str, Any] | None = None,
        verdict: str = "confirmed_crossing",
    ) -> ActionContext:
        return ActionContext(
            event=event or crossing_event(),
            verdict=verdict,
            deadline=Deadline.after(timeout),
            store_path=tmp_path / "state" / "geoprobe.sqlite",
        )

    return make
