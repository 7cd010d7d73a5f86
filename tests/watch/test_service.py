"""The watch put together without click: store, event file, policy thread, closed at any end."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from watch_world import LANDMARKS

from geoprobe.geo.countries import default_index
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.settings import resolve_settings
from geoprobe.store import default_path
from geoprobe.watch.service import WatchOptions, serve
from geoprobe.watch.state import WatchStore


def test_serve_runs_rounds_and_closes_what_it_opened(tmp_path: Path) -> None:
    """Loopback answers every TCP connect (with a reset): two rounds, their events in the file
    and in the store alike, everything closed afterwards."""
    idx = default_index()
    cat = Catalogue(
        landmarks=[
            Landmark(
                id=lid, lat=la, lon=lo, country=idx.code_at(la, lo), address="127.0.0.1", tcp_port=9
            )
            for lid, la, lo in LANDMARKS[:6]
        ],
        rtts=[],
        name="silent",
    )
    options = WatchOptions(
        catalogue=cat,
        settings=resolve_settings("DE", None, "sound"),
        method="tcp",
        state_dir=tmp_path / "state",
        events_path=tmp_path / "events.jsonl",
        metrics_path=tmp_path / "m.prom",
        interval_s=0.05,
        samples=1,
        timeout_s=0.05,
        max_rounds=2,
    )
    w = serve(options, io.StringIO(), logging.getLogger("test"))
    assert w.counters.rounds == 2
    lines = [ln for ln in (tmp_path / "events.jsonl").read_text().splitlines() if ln.strip()]
    assert len(lines) == w.counters.events
    assert "geoprobe_watch_rounds_total 2" in (tmp_path / "m.prom").read_text()
    with WatchStore(default_path(tmp_path / "state")) as st:  # closed: opens again
        assert [e["id"] for e in st.events()] == [json.loads(ln)["id"] for ln in lines]
