"""``landmarks sync`` against a local HTTP server on loopback that serves pages shaped like RIPE
Atlas's API."""

from __future__ import annotations

import csv
import io
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.landmarks import load_catalogue
from geoprobe.status import ExitStatus
from geoprobe.sync import SyncError, cached_date, sync


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests must go straight to the loopback server, never through a configured proxy."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def anchor(
    i: int,
    probe: int,
    lat: float,
    lon: float,
    country: str,
    ip: str,
    *,
    disabled: bool = False,
    decommissioned: str | None = None,
) -> dict[str, Any]:
    host = f"{country.lower()}-x{i}-as{64500 + i}"
    return {
        "id": i,
        "type": "Anchor",
        "hostname": host,
        "fqdn": f"{host}.anchors.atlas.ripe.net",
        "probe": probe,
        "is_ipv4_only": False,
        "ip_v4": ip,
        "as_v4": 64500 + i,
        "ip_v6": None,
        "city": f"City{i}",
        "country": country,
        "company": "x",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "is_disabled": disabled,
        "date_live": "2020-01-01T00:00:00",
        "date_decommissioned": decommissioned,
        "hardware_version": 99,
    }


class FakeAtlas:
    """Serves /api/v2/anchors/ in pages (``next`` absolute, then relative), the mesh listing and
    results."""

    def __init__(
        self,
        anchors: list[dict[str, Any]],
        page: int,
        mesh: dict[int, list[dict[str, Any]]],
        listing: list[dict[str, Any]],
    ) -> None:
        self.anchors, self.page, self.mesh, self.listing = anchors, page, mesh, listing
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self.loop_pages = False

    def respond(self, path: str, base: str) -> tuple[int, Any]:
        self.requests.append(path)
        if self.fail_with:
            return self.fail_with, {"detail": "boom"}
        url = urllib.parse.urlsplit(path)
        q = urllib.parse.parse_qs(url.query)
        n = int(q.get("page", ["1"])[0])
        if url.path == "/api/v2/anchors/":
            chunk = self.anchors[(n - 1) * self.page : n * self.page]
            nxt = None
            if n * self.page < len(self.anchors) or self.loop_pages:
                target = 1 if self.loop_pages else n + 1
                # The first link is absolute (as the API writes it), later ones relative: both must
                # work.
                nxt = f"{base}/api/v2/anchors/?page={target}" if n == 1 else f"?page={target}"
            return 200, {
                "count": len(self.anchors),
                "next": nxt,
                "previous": None,
                "results": chunk,
            }
        if url.path == "/api/v2/anchor-measurements/":
            return 200, {
                "count": len(self.listing),
                "next": None,
                "previous": None,
                "results": self.listing,
            }
        if url.path.startswith("/api/v2/measurements/") and url.path.endswith("/latest/"):
            msm = int(url.path.split("/")[4])
            return 200, self.mesh.get(msm, [])
        return 404, {"detail": "not found"}


@pytest.fixture()
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeAtlas) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                code, body = fake.respond(self.path, base)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/api/v2"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def small_world() -> FakeAtlas:
    # Documentation addresses (RFC 5737): never contacted, only written into the catalogue.
    anchors = [
        anchor(1, 6001, 50.11, 8.68, "DE", "192.0.2.1"),
        anchor(2, 6002, 48.86, 2.35, "FR", "192.0.2.2"),
        anchor(
            3,
            6003,
            52.37,
            4.90,
            "NL",
            "192.0.2.3",
            disabled=True,
            decommissioned="2021-01-01T00:00:00",
        ),
        anchor(4, 6004, 40.42, -3.70, "ES", "192.0.2.4"),
        anchor(5, 6005, 51.51, -0.13, "GB", "192.0.2.5", disabled=True),
        anchor(6, 6006, 59.33, 18.07, "SE", "192.0.2.6", decommissioned="2022-05-05T00:00:00"),
        anchor(7, 6007, 45.46, 9.19, "IT", "192.0.2.7"),
    ]
    anchors[6]["geometry"] = None  # no location: dropped, not a crash
    listing = [
        {
            "id": 10,
            "is_mesh": True,
            "measurement": "https://atlas.ripe.net/api/v2/measurements/1001/",
            "target": "https://atlas.ripe.net/api/v2/anchors/1/",
            "type": "ping",
        },
        {
            "id": 11,
            "is_mesh": True,
            "measurement": "https://atlas.ripe.net/api/v2/measurements/1002/",
            "target": "https://atlas.ripe.net/api/v2/anchors/1/",
            "type": "traceroute",
        },
        {
            "id": 12,
            "is_mesh": False,
            "measurement": "https://atlas.ripe.net/api/v2/measurements/1003/",
            "target": "https://atlas.ripe.net/api/v2/anchors/2/",
            "type": "ping",
        },
        {"id": 13, "is_mesh": True, "measurement": 1004, "target": 2, "type": "ping"},
        {
            "id": 14,
            "is_mesh": True,
            "measurement": 1005,
            "target": 3,
            "type": "ping",
        },  # dropped anchor
    ]
    mesh = {
        1001: [
            {"af": 4, "prb_id": 6002, "min": 9.5, "avg": 10.0},
            {"af": 4, "prb_id": 6004, "min": -1},
            {"af": 6, "prb_id": 6004, "min": 3.0},
            {"af": 4, "prb_id": 9999, "min": 1.0},
            {"af": 4, "prb_id": 6004, "min": 24.75},
        ],
        1002: [{"af": 4, "prb_id": 6002, "min": 0.1}],
        1003: [{"af": 4, "prb_id": 6001, "min": 0.1}],
        1004: [{"af": 4, "prb_id": 6001, "min": 9.25}, {"af": 4, "prb_id": 6003, "min": 5.0}],
        1005: [{"af": 4, "prb_id": 6001, "min": 5.0}],
    }
    return FakeAtlas(anchors, page=3, mesh=mesh, listing=listing)


def test_pagination_filters_and_geojson_order(serve: Any, tmp_path: Path) -> None:
    fake = small_world()
    api = serve(fake)
    res = sync(api, out=tmp_path / "out.json", cache_dir=tmp_path / "cache")
    assert (
        sum(1 for r in fake.requests if r.startswith("/api/v2/anchors/")) == 3
    )  # 7 anchors, 3 per page
    assert [a.id for a in res.anchors] == [1, 2, 4]
    assert res.dropped == {"disabled": 2, "decommissioned": 1, "no location": 1}
    cat = load_catalogue(tmp_path / "out.json")
    de = cat.by_id()["de-x1-as64501"]
    assert (de.lat, de.lon, de.country, de.address) == (50.11, 8.68, "DE", "192.0.2.1")
    assert de.host == "de-x1-as64501.anchors.atlas.ripe.net"
    assert (
        de.supports("tcp") and de.tcp_port == 80 and de.supports("icmp") and not de.supports("udp")
    )
    assert not cat.rtts and not cat.calibrated  # no --mesh: no calibration


def test_mesh_results_become_calibration_rtts(serve: Any, tmp_path: Path) -> None:
    api = serve(small_world())
    res = sync(api, out=tmp_path / "out.json", mesh=True)
    cat = load_catalogue(tmp_path / "out.json")
    # Only IPv4 ping mesh results from kept anchors to kept anchors, no-reply (-1) left out.
    assert sorted(cat.rtts) == [
        ("de-x1-as64501", "fr-x2-as64502", 9.25),
        ("es-x4-as64504", "de-x1-as64501", 24.75),
        ("fr-x2-as64502", "de-x1-as64501", 9.5),
    ]
    assert res.mesh_measurements == 2


def test_cache_holds_the_catalogue_and_its_date(serve: Any, tmp_path: Path) -> None:
    api = serve(small_world())
    when = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    sync(api, cache_dir=tmp_path / "cache", now=when)
    cached = tmp_path / "cache" / "anchors.json"
    assert cached_date(cached) == "2026-11-26T12:00:00Z"
    raw = json.loads(cached.read_text())
    assert raw["landmarks"][0]["probe_id"] == 6001 and raw["landmarks"][0]["asn"] == 64501
    assert len(load_catalogue(cached)) == 3


def test_cli_writes_cache_and_reports(serve: Any, tmp_path: Path) -> None:
    api = serve(small_world())
    out = io.StringIO()
    env = Environment(stdout=out, stderr=io.StringIO(), cache_dir=tmp_path / "cache")
    code = main(["landmarks", "sync", "--api", api, "--mesh"], env=env)
    assert code == 0
    assert "synced 3 anchors" in out.getvalue() and "disabled: 2" in out.getvalue()
    assert len(load_catalogue(tmp_path / "cache" / "anchors.json").rtts) == 3


def test_http_errors_and_endless_pagination_are_one_line_errors(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = small_world()
    api = serve(fake)
    fake.fail_with = 500
    with pytest.raises(SyncError, match="HTTP 500"):
        sync(api, cache_dir=tmp_path)
    code = main(
        ["landmarks", "sync", "--api", api],
        env=Environment(stdout=io.StringIO(), cache_dir=tmp_path),
    )
    assert code == ExitStatus.ERROR and "HTTP 500" in capsys.readouterr().err
    assert not (tmp_path / "anchors.json").exists()
    fake.fail_with = None
    fake.loop_pages = True
    with pytest.raises(SyncError, match="loops"):
        sync(api, cache_dir=tmp_path)


def test_real_anchor_list_shape(serve: Any, tmp_path: Path, ripe_anchors_csv: Path) -> None:
    """The 2023 anchor list, served as API pages of 100: every anchor survives with its [lon,
    lat]."""
    with ripe_anchors_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    anchors = [
        anchor(
            i,
            int(r["probe_id"]),
            float(r["latitude"]),
            float(r["longitude"]),
            r["country_code"],
            r["ipv4"],
            disabled=(i % 10 == 0),
        )
        for i, r in enumerate(rows, start=1)
    ]
    fake = FakeAtlas(anchors, page=100, mesh={}, listing=[])
    res = sync(serve(fake), out=tmp_path / "a.json")
    assert len(res.anchors) == len(rows) - len(rows) // 10
    assert res.dropped == {"disabled": len(rows) // 10}
    cat = load_catalogue(tmp_path / "a.json")
    first = rows[0]
    lm = cat.by_id()[f"{first['country_code'].lower()}-x1-as64501"]
    assert (lm.lat, lm.lon) == (float(first["latitude"]), float(first["longitude"]))
