"""The guest's serial stream rebuilt from the source's and the destination's files."""

from __future__ import annotations

from pathlib import Path

from benchmarks.lab.console import ConsoleLine, GuestConsole


def test_a_line_cut_by_the_switchover_is_rebuilt_and_events_parse(tmp_path: Path) -> None:
    src, dst = tmp_path / "serial-src.log", tmp_path / "serial-dst.log"
    src.write_bytes(b'LAB-READY uptime=3.1\r\n{"type": "io.geoprobe.location.fix", "n"')
    c = GuestConsole()
    c.add(src)
    assert [x.text for x in c.read()] == ["LAB-READY uptime=3.1"]
    c.add(dst)  # the destination's file does not exist yet: that is not an error
    assert c.read() == []
    dst.write_bytes(b": 1}\nnot json {\n")
    lines = c.read()
    assert [x.text for x in lines] == ['{"type": "io.geoprobe.location.fix", "n": 1}', "not json {"]
    assert [ev for _, ev in c.events()] == [{"type": "io.geoprobe.location.fix", "n": 1}]
    assert c.read() == []  # nothing new: nothing returned twice


def test_event_is_found_after_a_kernel_prefix_and_wait_for_searches_old_lines() -> None:
    assert ConsoleLine(0.0, '[   5.1] x {"a": 1}').event() == {"a": 1}
    assert ConsoleLine(0.0, "[1, 2]").event() is None
    c = GuestConsole(lines=[ConsoleLine(1.0, "LAB-HOOK 12.0 {}")])
    hit = c.wait_for(lambda line: line.text.startswith("LAB-HOOK"), timeout=0.0)
    assert hit is not None and hit.received == 1.0
    assert c.wait_for(lambda line: False, timeout=0.05) is None
