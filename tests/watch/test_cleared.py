"""The end of a suspicion without a crossing: one cleared event per episode, naming its suspected
event, published after it; none for a crossing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_daemon import (
    BERLIN,
    FRANKFURT,
    MADRID,
    World,
    catalogue,
    make_watcher,
    types,
    watch_at_home,
)

from geoprobe import events
from geoprobe.landmarks import Catalogue
from geoprobe.watch.fusion import State

__all__ = ["catalogue"]


def cleared(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == events.CLEARED]


def test_a_move_inside_the_allowed_set_clears_its_suspicion_once(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    clears: list[int] = []
    world, w, emitted, hooked = watch_at_home(catalogue, tmp_path, 2)
    w.on_clear = lambda: clears.append(len(emitted))
    world.at = BERLIN
    for _ in range(8):
        w.round()
    (suspected,) = [e for e in emitted if e["type"] == events.SUSPECTED]
    (done,) = cleared(emitted)
    assert done["data"] == {"reason": "moved_inside", "suspected_id": suspected["id"]}
    order = types(emitted)
    assert (
        order.index(events.SUSPECTED) < order.index(events.CONFIRMED) < order.index(events.CLEARED)
    )
    # The policy hears it after the suspicion it answers; the hold was stopped before it.
    assert [e["id"] for e in hooked if e["type"] != events.FIX][-1] == done["id"]
    assert len(clears) == 1 and clears[0] < emitted.index(done) + 1
    assert w.store is not None and done["id"] in [e["id"] for e in w.store.events()]


def test_a_suspicion_back_at_its_baseline_is_cleared(catalogue: Catalogue, tmp_path: Path) -> None:
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 4)
    world.at = MADRID
    w.round()
    assert w.fusion.state == State.SUSPECT
    world.at = FRANKFURT
    for _ in range(6):
        w.round()
    assert w.fusion.state == State.NORMAL
    (suspected,) = [e for e in emitted if e["type"] == events.SUSPECTED]
    (done,) = cleared(emitted)
    assert done["data"] == {"reason": "suspicion_cleared", "suspected_id": suspected["id"]}
    assert not [e for e in emitted if e["type"] == events.CONFIRMED]


def test_a_crossing_clears_nothing(catalogue: Catalogue, tmp_path: Path) -> None:
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 6)
    world.at = MADRID
    for _ in range(6):
        w.round()
    assert [e["data"]["crossing"] for e in emitted if e["type"] == events.CONFIRMED] == [True]
    assert cleared(emitted) == []


def test_back_inside_after_a_crossing_is_a_cleared_move_of_no_suspicion(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    world, w, emitted, _ = watch_at_home(catalogue, tmp_path, 6)
    world.at = MADRID
    for _ in range(3):
        w.round()
    world.at = BERLIN
    for _ in range(2):
        w.round()
    (done,) = cleared(emitted)
    assert done["data"] == {"reason": "moved_inside", "suspected_id": None}


def test_the_cleared_event_is_built_in_one_place() -> None:
    ev = events.cleared_event("suspicion_cleared", "abc")
    assert ev["type"] == events.CLEARED and ev["data"]["suspected_id"] == "abc"
    with pytest.raises(ValueError, match="reason must be one of"):
        events.cleared_data("gone", None)


def test_a_watch_started_outside_raises_no_cleared(catalogue: Catalogue, tmp_path: Path) -> None:
    world = World(MADRID, seed=1)
    w, emitted, _ = make_watcher(catalogue, world, tmp_path)
    for _ in range(5):
        w.round()
    assert cleared(emitted) == []
