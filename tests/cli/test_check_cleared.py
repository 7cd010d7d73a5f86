"""Cron-mode `check` and the reversible stage: it takes nothing on suspicion itself, but ends a
suspicion that a watch on the same state dir left open, once, when it finds the VM inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoprobe import events
from geoprobe.store import default_path
from geoprobe.watch.state import WatchStore

from .test_check import BERLIN, FRANKFURT, MADRID, catalogue_file, check, replay

__all__ = ["catalogue_file"]


@pytest.fixture
def setup(catalogue_file: Path, tmp_path: Path) -> tuple[list[str], Path, Path]:
    rec = tmp_path / "record"
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[jurisdiction]\nallow = ["DE"]\n[[on.cleared]]\naction = "hook"\n'
        f'command = ["sh", "-c", "echo $GEOPROBE_REASON $GEOPROBE_SUSPECTED_ID >> {rec}"]\n'
    )
    state = tmp_path / "state"
    base = ["--landmarks", str(catalogue_file), "--policy", str(policy), "--state", str(state)]
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, 1)))[0] == 0
    return base, state, rec


def left_open(state: Path) -> str:
    """What a watch killed mid-suspicion leaves: a suspected event nothing answered."""
    ev = events.make_event(events.SUSPECTED, {"state": "suspect", "reasons": ["test"]})
    with WatchStore(default_path(state)) as st:
        st.record_event(ev)
    return str(ev["id"])


def recorded(rec: Path) -> list[str]:
    return rec.read_text().splitlines() if rec.exists() else []


def cleared_in_store(state: Path) -> list[dict[str, object]]:
    with WatchStore(default_path(state)) as st:
        return [e["data"] for e in st.events(events.CLEARED)]


def test_an_open_suspicion_found_inside_and_unmoved_is_cleared_once(
    setup: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    base, state, rec = setup
    sid = left_open(state)
    for seed in (2, 3):
        assert check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, seed)))[0] == 0
    assert recorded(rec) == [f"suspicion_cleared {sid}"]
    assert cleared_in_store(state) == [{"reason": "suspicion_cleared", "suspected_id": sid}]


def test_an_open_suspicion_and_a_move_inside_is_moved_inside(
    setup: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    base, state, rec = setup
    sid = left_open(state)
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, BERLIN, 2)))[0] == 1
    assert recorded(rec) == [f"moved_inside {sid}"]


def test_without_an_open_suspicion_a_harmless_move_gives_back_nothing(
    setup: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    base, state, rec = setup
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, BERLIN, 2)))[0] == 1
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, BERLIN, 3)))[0] == 0
    assert recorded(rec) == [] and cleared_in_store(state) == []


def test_an_open_suspicion_that_ended_abroad_is_never_cleared(
    setup: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    base, state, rec = setup
    left_open(state)
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 2)))[0] == 2
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 3)))[0] == 2
    assert recorded(rec) == [] and cleared_in_store(state) == []


def test_a_dry_run_shows_the_answer_but_leaves_the_suspicion_open(
    setup: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    base, state, rec = setup
    sid = left_open(state)
    check(tmp_path, *base, "--dry-run", "--replay", str(replay(tmp_path, FRANKFURT, 2)))
    assert recorded(rec) == [] and cleared_in_store(state) == []
    check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, 3)))
    assert recorded(rec) == [f"suspicion_cleared {sid}"]
