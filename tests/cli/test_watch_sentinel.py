"""`geoprobe watch` at its default interval (60 s) on a real loopback testbed: the sentinels see a
move and start a full round long before the interval is up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from geoprobe import events

from .test_watch import geoprobe, move, read_events, running_testbed, stop, wait_for


def gauge(prom: Path, name: str) -> float | None:
    try:
        text = prom.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
def test_a_move_triggers_a_full_round_well_before_the_interval(tmp_path: Path) -> None:
    with running_testbed(tmp_path, "Frankfurt") as (cat, env):
        ev, prom = tmp_path / "events.jsonl", tmp_path / "m.prom"
        args = ["watch", "--landmarks", str(cat), "--allow", "DE", "--events", str(ev)]
        args += ["--state", str(tmp_path / "state"), "--metrics", str(prom), "-v"]
        watch = geoprobe(*args, env=env)  # the default interval: 60 s
        try:
            wait_for(lambda: gauge(prom, "geoprobe_watch_warming_up") == 0, 90, "the baseline")
            time.sleep(5)  # the sentinels learn their floors
            last_round = gauge(prom, "geoprobe_last_round_timestamp_seconds")
            assert last_round is not None
            moved = time.time()
            move(env, "Madrid")
            wait_for(
                lambda: any(e["type"] == events.CONFIRMED for e in read_events(ev)),
                40,
                "the confirmed crossing",
            )
            took = time.time() - moved
        finally:
            code, err = stop(watch)
    assert code == 0 and "Traceback" not in err, err
    # Without the sentinels the next round would start 60 s after the last one.
    assert took < 30 and moved + took < last_round + 60
    assert "full round now" in err and "sentinels: " in err
    (c,) = [e["data"] for e in read_events(ev) if e["type"] == events.CONFIRMED]
    assert c["crossing"] is True and c["to"] == "ES"
    kinds = [e["type"] for e in read_events(ev)]
    assert kinds.count(events.SUSPECTED) <= 1  # one migration, one suspicion
