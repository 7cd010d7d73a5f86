"""``geoprobe locate`` and ``geoprobe verify`` end to end, against signed responders on loopback.

The emulated VM sits in Frankfurt; each landmark holds its reply for a delay consistent with
its distance (1.5x the speed-of-light-in-fibre minimum), as a real path would.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.probe import keys
from geoprobe.probe.responder import EchoResponder

VM = (50.11, 8.68)  # Frankfurt
PLACES = {
    "ams": (52.37, 4.90, "NL"),
    "par": (48.86, 2.35, "FR"),
    "zrh": (47.37, 8.54, "CH"),
    "vie": (48.21, 16.37, "AT"),
    "prg": (50.08, 14.44, "CZ"),
    "ber": (52.52, 13.40, "DE"),
    "muc": (48.14, 11.58, "DE"),
    "ham": (53.55, 9.99, "DE"),
    "cgn": (50.94, 6.96, "DE"),
    "bru": (50.85, 4.35, "BE"),
}


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.out = io.StringIO()
        self.err = io.StringIO()

    def __call__(self, *argv: str) -> int:
        self.out, self.err = io.StringIO(), io.StringIO()
        env = Environment(
            stdout=self.out,
            stderr=self.err,
            state_dir=self.tmp / "state",
            cache_dir=self.tmp / "cache",
            runtime_dir=self.tmp / "run",
        )
        return main(list(argv), env=env)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Signed responders for PLACES on 127.0.0.x (three of them silent), and their catalogue."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    transports: list[Any] = []
    silent: list[socket.socket] = []
    landmarks: list[Landmark] = []
    quiet = {"bru", "ham", "prg"}  # 30% never answer
    for i, (lid, (lat, lon, cc)) in enumerate(PLACES.items()):
        key = keys.generate()
        pub = keys.public_raw(key)
        host = f"127.0.0.{150 + i}"
        if lid in quiet:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            silent.append(s)
            port = s.getsockname()[1]
        else:
            delay = 1.5 * _km(VM, (lat, lon)) / 100.0 / 1e3 + 0.0002

            async def start(
                key: Any = key,
                lid: str = lid,
                lat: float = lat,
                lon: float = lon,
                delay: float = delay,
                host: str = host,
            ) -> Any:
                tr, _ = await loop.create_datagram_endpoint(
                    lambda: EchoResponder(key, lid, lat, lon, delay=lambda: delay),
                    local_addr=(host, 0),
                )
                return tr

            tr = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
            transports.append(tr)
            port = tr.get_extra_info("sockname")[1]
        landmarks.append(
            Landmark(
                id=lid,
                lat=lat,
                lon=lon,
                country=cc,
                address=host,
                udp_port=port,
                pubkey=pub,
                key_id=keys.key_id(pub),
            )
        )
    path = tmp_path / "catalogue.json"
    Catalogue(landmarks=landmarks, name="test").save(path)
    try:
        yield path, {"quiet": quiet}
    finally:
        for tr in transports:
            loop.call_soon_threadsafe(tr.close)
        for s in silent:
            s.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _error_lines(run: Run, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """GeoprobeError lines go to the injected stderr; click's usage errors to the process's."""
    return (run.err.getvalue() + capsys.readouterr().err).splitlines()


def test_no_catalogue_is_one_line_exit_3(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default catalogue is looked for in the injected cache dir, not the process's."""
    assert run("locate") == 3
    lines = _error_lines(run, capsys)
    assert len(lines) == 1 and "geoprobe landmarks sync" in lines[0] and "--landmarks" in lines[0]
    assert lines[0].startswith(f"geoprobe: error: {tmp_path / 'cache' / 'anchors.json'}: ")


def test_nothing_answers_is_one_line_exit_3(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.149", 0))
    pub = keys.public_raw(keys.generate())
    cat = tmp_path / "c.json"
    Catalogue(
        landmarks=[
            Landmark(
                id="mute",
                lat=1.0,
                lon=2.0,
                address="127.0.0.149",
                udp_port=s.getsockname()[1],
                pubkey=pub,
            )
        ]
    ).save(cat)
    try:
        assert run("locate", "--landmarks", str(cat), "--samples", "1", "--timeout", "0.3") == 3
    finally:
        s.close()
    lines = _error_lines(run, capsys)
    assert len(lines) == 1 and "no landmark answered" in lines[0] and "timeout: 1" in lines[0]


def test_locate_json_with_silent_landmarks_then_replay_and_verify(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cat, info = world
    saved, geojson = tmp_path / "m.json", tmp_path / "region.geojson"
    rc = run(
        "locate",
        "--landmarks",
        str(cat),
        "--format",
        "json",
        "--timeout",
        "0.5",
        "--save",
        str(saved),
        "--geojson",
        str(geojson),
    )
    assert rc == 0, run.err.getvalue()
    rec = json.loads(run.out.getvalue())
    assert set(rec["failures"]) == info["quiet"]
    assert set(rec["rtts_ms"]) == set(PLACES) - info["quiet"]
    assert {"lat", "lon"} <= set(rec["position"]) and rec["error_radius_km"] > 0
    assert rec["bound"] == "sound"  # the catalogue carries no calibration RTTs
    probs = [c["probability"] for c in rec["countries"]]
    assert probs == sorted(probs, reverse=True) and rec["countries"][0]["code"] == "DE"
    assert _km(VM, (rec["position"]["lat"], rec["position"]["lon"])) < 300
    evidence = [e for m in rec["measurements"] for e in m.get("evidence", [])]
    assert len(evidence) == 3 * 7
    assert json.loads(geojson.read_text())["type"] == "FeatureCollection"

    # Replay gives the same answer without a packet sent.
    assert run("locate", "--landmarks", str(cat), "--replay", str(saved), "--format", "json") == 0
    again = json.loads(run.out.getvalue())
    assert again["position"] == rec["position"] and again["rtts_ms"] == rec["rtts_ms"]

    # Both the saved file and the JSON record verify.
    record = tmp_path / "record.json"
    record.write_text(json.dumps(rec))
    for f in (saved, record):
        assert run("verify", str(f), "--landmarks", str(cat)) == 0, run.out.getvalue()
        assert run.out.getvalue().startswith("OK: 21 signed replies")


def test_table_lists_failed_landmarks(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cat, info = world
    png = tmp_path / "where.png"
    assert (
        run(
            "locate",
            "--landmarks",
            str(cat),
            "--timeout",
            "0.4",
            "--samples",
            "2",
            "--map",
            str(png),
        )
        == 0
    ), run.err.getvalue()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = run.out.getvalue()
    assert "position" in out and "DE" in out
    for lid in info["quiet"]:
        assert f"{lid}" in out
    assert "timeout" in out


def test_verify_tampered_evidence_exits_3_with_one_line_per_record(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from geoprobe.landmarks import load_catalogue
    from geoprobe.measurement import load_measurements, save_measurements
    from geoprobe.probe import measure

    cat, _ = world
    c = load_catalogue(cat)
    ms = measure(c.landmarks[:2], "udp", samples=2)
    good = tmp_path / "good.json"
    save_measurements(good, ms)
    assert run("verify", str(good), "--landmarks", str(cat)) == 0
    loaded, _ = load_measurements(good)
    loaded[0].evidence[0]["rtt_ms"] = 0.0
    loaded[1].evidence[1]["landmark_id"] = "someone-else"
    bad = tmp_path / "bad.json"
    save_measurements(bad, loaded)
    assert run("verify", str(bad), "--landmarks", str(cat)) == 3
    lines = run.out.getvalue().splitlines()
    bad_lines = [ln for ln in lines if ln.startswith("BAD ")]
    assert any(f"{loaded[0].landmark_id}: evidence #0: rtt_ms" in ln for ln in bad_lines)
    assert any(f"{loaded[1].landmark_id}: evidence #1: filed under" in ln for ln in bad_lines)
    assert lines[-1].endswith("problem(s) in 4 signed replies")


def test_verify_file_without_evidence_is_an_error(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoprobe.measurement import Measurement, save_measurements

    cat, _ = world
    f = tmp_path / "plain.json"
    save_measurements(f, [Measurement(landmark_id="ams", method="tcp", rtts_ms=[5.0], sent=1)])
    assert run("verify", str(f), "--landmarks", str(cat)) == 3
    assert "no signed evidence" in _error_lines(run, capsys)[0]


def test_progress_on_a_terminal_stderr(tmp_path: Path, world: tuple[Path, dict[str, Any]]) -> None:
    cat, _ = world
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdout=out,
        stderr=err,
        stderr_isatty=True,
        state_dir=tmp_path,
        cache_dir=tmp_path,
        runtime_dir=tmp_path,
    )
    assert (
        main(
            [
                "locate",
                "--landmarks",
                str(cat),
                "--timeout",
                "0.3",
                "--samples",
                "1",
                "--format",
                "json",
            ],
            env=env,
        )
        == 0
    )
    assert "probing (udp)" in err.getvalue()
    json.loads(out.getvalue())  # progress never leaks into the machine-readable output


def test_mmdb_cross_check_goes_into_the_record(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    db = tmp_path / "city.mmdb"
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-City")
    w.insert_network(
        IPSet(["81.2.69.0/24"]),
        {"country": {"iso_code": "DE"}, "location": {"latitude": 50.11, "longitude": 8.68}},
    )
    w.to_db_file(str(db))
    cat, _ = world
    assert (
        run(
            "locate",
            "--landmarks",
            str(cat),
            "--timeout",
            "0.3",
            "--samples",
            "1",
            "--format",
            "json",
            "--mmdb",
            str(db),
        )
        == 0
    ), run.err.getvalue()
    rec = json.loads(run.out.getvalue())
    assert rec["ipgeo"]["database"] == str(db)
    # Loopback has no public address: nothing to compare, and the record says so.
    assert rec["ipgeo"]["vm"] is None and any("not public" in n for n in rec["ipgeo"]["notes"])
    assert [m["landmark_id"] for m in rec["measurements"]] == list(PLACES)  # catalogue order kept


def test_verify_refuses_borrowed_replies_with_the_method_relabelled(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """One landmark's signed replies under another's RTTs, ``method`` edited: exit 3, not OK."""
    from geoprobe.landmarks import load_catalogue
    from geoprobe.measurement import save_measurements
    from geoprobe.probe import measure

    cat, _ = world
    c = load_catalogue(cat)
    near, far = measure([c.by_id()["cgn"], c.by_id()["vie"]], "udp", samples=3)
    assert near.ok and far.ok and min(far.rtts_ms) > max(near.rtts_ms)
    near.rtts_ms = list(far.rtts_ms)
    near.sent_at = []
    near.method = "tcp"
    f = tmp_path / "borrowed.json"
    save_measurements(f, [near])
    assert run("verify", str(f), "--landmarks", str(cat)) == 3
    bad = [ln for ln in run.out.getvalue().splitlines() if ln.startswith("BAD ")]
    assert len(bad) == 3 and all("not backed by a signed reply" in ln for ln in bad)


def test_verify_catches_a_re_dated_file_unless_told_the_clock_was_off(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from geoprobe.landmarks import load_catalogue
    from geoprobe.measurement import save_measurements
    from geoprobe.probe import measure

    cat, _ = world
    ms = measure(load_catalogue(cat).landmarks[:2], "udp", samples=2)
    year = 365 * 86400
    for m in ms:
        m.timestamp -= year
        m.sent_at = [t - year for t in m.sent_at]
        for rec in m.evidence:
            rec["t0_ns"] -= year * 10**9
            rec["t1_ns"] -= year * 10**9
    f = tmp_path / "last-year.json"
    save_measurements(f, ms)
    assert run("verify", str(f), "--landmarks", str(cat)) == 3
    assert "365 days after the file's t0_ns/t1_ns" in run.out.getvalue()
    assert run("verify", str(f), "--landmarks", str(cat), "--max-clock-offset", "4e7") == 0


def test_replaying_a_file_claiming_a_hundred_million_packets_is_one_line(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat, _ = world
    rec = {"landmark_id": "ams", "method": "udp", "result": [{"rtt": 5.0}] * 2500}
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"results": [dict(rec, sent=100_000_000)]}))
    assert 30_000 < f.stat().st_size < 60_000
    assert run("locate", "--landmarks", str(cat), "--replay", str(f)) == 3
    [line] = _error_lines(run, capsys)
    assert str(f) in line and "'sent'" in line


def test_replies_refused_while_probing_are_in_the_fix(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Forged and replayed replies leave a trace in the record of the fix they were refused for."""
    from geoprobe.landmarks import load_catalogue
    from geoprobe.measurement import save_measurements
    from geoprobe.probe import measure

    cat, _ = world
    ms = [m for m in measure(load_catalogue(cat).landmarks, "udp", samples=1) if m.ok]
    ms[0].rejected = {"bad signature": 3}
    ms[1].rejected = {"bad signature": 1, "replayed": 2}
    f = tmp_path / "m.json"
    save_measurements(f, ms)
    assert run("locate", "--landmarks", str(cat), "--replay", str(f), "--format", "json") == 0
    rec = json.loads(run.out.getvalue())
    assert rec["rejected_replies"] == {"bad signature": 4, "replayed": 2}


def test_a_corrupt_mmdb_named_with_the_option_is_one_line_exit_3(
    run: Run, world: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any probing; no traceback, whatever the file holds."""
    cat, _ = world
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"\xab\xcd\xefMaxMind.com" + b"\xff" * 300)
    assert run("locate", "--landmarks", str(cat), "--mmdb", str(junk)) == 3
    lines = _error_lines(run, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"geoprobe: error: {junk}: not a valid MaxMind")
    assert run.out.getvalue() == ""


def test_a_corrupt_mmdb_found_by_default_is_a_note(
    run: Run,
    world: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cat, _ = world
    junk = tmp_path / "GeoLite2-City.mmdb"
    junk.write_bytes(b"not a database" * 20)
    monkeypatch.setenv("GEOPROBE_MMDB", str(junk))
    args = ["--timeout", "0.3", "--samples", "1", "--format", "json"]
    assert run("locate", "--landmarks", str(cat), *args) == 0, run.err.getvalue()
    rec = json.loads(run.out.getvalue())
    (note,) = rec["ipgeo"]["notes"]
    assert note.startswith(f"database not used: {junk}: not a valid MaxMind DB")


def test_a_large_catalogue_is_selected_and_fitted_in_the_environments_cache(
    run: Run, world: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the selection limit, locate probes coarse to fine; the calibration it selects with
    and solves with is cached in the Environment's cache dir, not the process environment's."""
    from geoprobe import locate
    from geoprobe.geo import selection

    seen: list[Path | None] = []
    real = locate.fit_catalogue

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw.get("cache_dir"))
        return real(*args, **kw)

    monkeypatch.setattr(locate, "fit_catalogue", spy)
    monkeypatch.setattr(selection, "DEFAULT_LIMIT", 4)  # the ten landmarks go through selection
    monkeypatch.setenv("GEOPROBE_CACHE_DIR", str(run.tmp / "process-env-cache"))
    cat, _ = world
    args = ["--timeout", "0.3", "--samples", "1", "--format", "json"]
    assert run("locate", "--landmarks", str(cat), *args) == 0, run.err.getvalue()
    assert len(seen) >= 2 and set(seen) == {run.tmp / "cache"}


@pytest.mark.parametrize("hostile", ["amplification", "pointer_loop"])
def test_a_hostile_mmdb_named_with_the_option_is_one_line_exit_3(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    """Valid metadata over a data section a naive decoder follows into gigabytes or forever: the
    first lookup refuses it, in one line, in bounded time. Replayed, so the public addresses the
    landmarks claim are looked up in the file only, never contacted."""
    import time

    from geoprobe.measurement import Measurement, save_measurements
    from tests import mmdb_files

    db = tmp_path / "hostile.mmdb"
    db.write_bytes(getattr(mmdb_files, hostile)())
    cat = tmp_path / "cat.json"
    lms = [("a", 59.3, 18.1, "200.1.2.3"), ("b", 50.1, 8.7, "200.1.2.4")]
    Catalogue(
        landmarks=[
            Landmark(id=i, lat=la, lon=lo, address=ad, udp_port=7207) for i, la, lo, ad in lms
        ],
        name="t",
    ).save(cat)
    replay = tmp_path / "m.json"
    save_measurements(
        replay,
        [Measurement(i, "udp", dst_addr=ad, rtts_ms=[9.0], sent=1) for i, _, _, ad in lms],
    )
    start = time.monotonic()
    code = run("locate", "--landmarks", str(cat), "--replay", str(replay), "--mmdb", str(db))
    assert code == 3 and time.monotonic() - start < 30
    lines = _error_lines(run, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"geoprobe: error: {db}: not a valid MaxMind")
    assert "Traceback" not in run.err.getvalue() and run.out.getvalue() == ""
