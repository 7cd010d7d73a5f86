"""GeoJSON and PNG renderings of a Fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from shapely.geometry import shape

from geoprobe.errors import GeoprobeError, InputError
from geoprobe.geo.countries import CountryIndex, default_index
from geoprobe.geo.fix import CountryShare, Fix
from geoprobe.geo.regions import SampledRegion, sample_cap
from geoprobe.landmarks import Landmark
from geoprobe.render import draw_map, region_geojson
from geoprobe.render.geojson import rfc7946_polygons, write_geojson
from geoprobe.render.mapplot import CERTIFIED_LAND, LAND, SEA

LANDMARKS = [
    Landmark(id="fra", lat=50.11, lon=8.68, country="DE"),
    Landmark(id="par", lat=48.86, lon=2.35, country="FR"),
    Landmark(id="waw", lat=52.23, lon=21.0, country="PL"),
    Landmark(id="nyc", lat=40.71, lon=-74.0, country="US"),
]
RTTS = {"fra": 1.2, "par": 9.5, "waw": 17.0}  # nyc did not answer


def make_fix(
    lat: float = 50.0,
    lon: float = 8.6,
    *,
    certified: str | None = None,
    calibrated_km: float = 60.0,
    sound_km: float = 150.0,
) -> Fix:
    region = SampledRegion(sample_cap(lat, lon, calibrated_km, points=600))
    sound = SampledRegion(sample_cap(lat, lon, sound_km, points=600))
    return Fix(
        lat=lat,
        lon=lon,
        error_radius_km=30.0,
        bound="calibrated",
        countries=[CountryShare("DE", 0.97, 0.95), CountryShare("FR", 0.03, 0.05)],
        certified=certified,
        region=region,
        sound_region=sound,
        landmarks_used=["fra", "par", "waw"],
        excluded={"nyc": "no reply"},
    )


@pytest.fixture(scope="module")
def index() -> CountryIndex:
    return default_index()


def test_feature_collection_holds_every_part() -> None:
    fix = make_fix()
    fc = region_geojson(fix, LANDMARKS, RTTS)
    json.dumps(fc)  # serialisable as is
    kinds = [f["properties"]["kind"] for f in fc["features"]]
    assert kinds.count("region") == 1 and kinds.count("sound_region") == 1
    assert kinds.count("estimate") == 1 and kinds.count("error_circle") == 1
    assert kinds.count("landmark") == len(LANDMARKS)
    est = next(f for f in fc["features"] if f["properties"]["kind"] == "estimate")
    assert est["geometry"]["coordinates"] == [8.6, 50.0]  # GeoJSON order: lon, lat
    assert est["properties"]["country"] == "DE" and est["properties"]["certified"] is None
    region = next(f for f in fc["features"] if f["properties"]["kind"] == "region")
    assert region["properties"]["countries"][0] == {
        "code": "DE",
        "probability": 0.97,
        "share": 0.95,
    }
    assert shape(region["geometry"]).contains(shapely.Point(8.6, 50.0))
    sound = next(f for f in fc["features"] if f["properties"]["kind"] == "sound_region")
    assert shape(sound["geometry"]).area > shape(region["geometry"]).area


def test_landmarks_carry_rtts_and_exclusions() -> None:
    fc = region_geojson(make_fix(), LANDMARKS, RTTS)
    lms = {
        f["properties"]["id"]: f for f in fc["features"] if f["properties"]["kind"] == "landmark"
    }
    assert lms["fra"]["properties"]["rtt_ms"] == 1.2 and lms["fra"]["properties"]["used"] is True
    assert lms["waw"]["geometry"]["coordinates"] == [21.0, 52.23]
    assert lms["nyc"]["properties"]["rtt_ms"] is None
    assert (
        lms["nyc"]["properties"]["used"] is False
        and lms["nyc"]["properties"]["excluded"] == "no reply"
    )


def test_error_circle_has_the_stated_radius() -> None:
    fc = region_geojson(make_fix(), [], None)
    circle = shape(
        next(f for f in fc["features"] if f["properties"]["kind"] == "error_circle")["geometry"]
    )
    _, miny, _, maxy = circle.bounds
    assert (maxy - miny) * 111.2 / 2 == pytest.approx(30.0, rel=0.02)


def test_error_circle_is_cut_at_the_antimeridian() -> None:
    fc = region_geojson(make_fix(-17.0, 179.9), [], None)
    for f in fc["features"]:
        g = shape(f["geometry"])
        assert -180.0 <= g.bounds[0] and g.bounds[2] <= 180.0, f["properties"]["kind"]
    circle = shape(
        next(f for f in fc["features"] if f["properties"]["kind"] == "error_circle")["geometry"]
    )
    assert circle.geom_type == "MultiPolygon"


def _rings(geometry: dict[str, Any]) -> list[tuple[bool, shapely.LinearRing]]:
    """(is_exterior, ring) for every ring of a GeoJSON (multi)polygon, as written."""
    polys = (
        geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    )
    return [(i == 0, shapely.LinearRing(ring)) for poly in polys for i, ring in enumerate(poly)]


@pytest.mark.parametrize("where", [(50.0, 8.6), (-17.0, 179.9), (64.0, -179.5)])
def test_rings_follow_the_right_hand_rule(where: tuple[float, float]) -> None:
    """RFC 7946 §3.1.6: exterior rings counter-clockwise, holes clockwise, positions [lon, lat]."""
    fc = region_geojson(make_fix(*where), [], None)
    polygons = [f for f in fc["features"] if f["geometry"]["type"] != "Point"]
    assert len(polygons) == 3  # region, sound region, error circle
    for f in polygons:
        rings = _rings(f["geometry"])
        assert rings, f["properties"]["kind"]
        for exterior, ring in rings:
            assert ring.is_ccw == exterior, f["properties"]["kind"]
            lon, lat = np.asarray(ring.coords).T
            assert (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all()


def test_holes_are_wound_clockwise() -> None:
    """A region with a hole (an annulus: near one landmark's cap but outside another's)."""
    outer = shapely.Point(8.6, 50.0).buffer(2.0)
    hole = shapely.Point(8.6, 50.0).buffer(0.5)
    ring = outer.difference(hole)
    assert len(ring.interiors) == 1 and not ring.exterior.is_ccw  # GEOS' own winding
    geometry = rfc7946_polygons(shapely.orient_polygons(ring, exterior_cw=True))
    rings = _rings(geometry)
    assert [e for e, _ in rings] == [True, False]
    assert rings[0][1].is_ccw and not rings[1][1].is_ccw
    assert shape(geometry).equals(ring)


def test_one_region_when_the_bound_is_sound() -> None:
    fix = make_fix()
    fix.region = fix.sound_region
    fix.bound = "sound"
    kinds = [f["properties"]["kind"] for f in region_geojson(fix)["features"]]
    assert kinds.count("region") == 1 and "sound_region" not in kinds
    fix.region = fix.sound_region = None
    assert [f["properties"]["kind"] for f in region_geojson(fix)["features"]] == [
        "error_circle",
        "estimate",
    ]


def test_write_geojson(tmp_path: Path) -> None:
    out = write_geojson(make_fix(), tmp_path / "fix.geojson", LANDMARKS, RTTS)
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    with pytest.raises(InputError, match="no-such-dir"):
        write_geojson(make_fix(), tmp_path / "no-such-dir" / "fix.geojson")


def _pixels_near(img: np.ndarray, colour: str, tol: float = 0.03) -> int:
    rgb = np.asarray(to_rgb(colour))
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).sum())


def test_map_is_a_png_with_the_map_drawn(tmp_path: Path, index: CountryIndex) -> None:
    out = draw_map(
        make_fix(),
        tmp_path / "map.png",
        landmarks=LANDMARKS,
        rtts=RTTS,
        countries=index,
        size_in=(8.0, 6.0),
        dpi=80,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(out)
    assert img.shape[:2] == (480, 640)
    assert _pixels_near(img, "#d62728", 0.05) > 20  # the estimate's star
    assert _pixels_near(img, LAND) > 1000  # borders drawn over land
    assert _pixels_near(img, CERTIFIED_LAND) == 0  # nothing certified, nothing highlighted


def test_map_highlights_the_certified_country(tmp_path: Path, index: CountryIndex) -> None:
    out = draw_map(
        make_fix(certified="DE"), tmp_path / "map.png", countries=index, size_in=(8.0, 6.0), dpi=80
    )
    assert _pixels_near(imread(out), CERTIFIED_LAND) > 1000


def test_map_across_the_antimeridian(tmp_path: Path, index: CountryIndex) -> None:
    fix = make_fix(-17.0, 179.9, calibrated_km=200, sound_km=400)
    out = draw_map(
        fix,
        tmp_path / "fiji.png",
        landmarks=[Landmark(id="suv", lat=-18.1, lon=178.4)],
        rtts={"suv": 3.3},
        countries=index,
        size_in=(8.0, 6.0),
        dpi=80,
    )
    img = imread(out)
    assert _pixels_near(img, "#d62728", 0.05) > 20
    assert _pixels_near(img, SEA) > 1000  # mostly ocean around Fiji


def test_map_to_an_unwritable_path_is_an_input_error(tmp_path: Path, index: CountryIndex) -> None:
    with pytest.raises(InputError, match="nope"):
        draw_map(make_fix(), tmp_path / "nope" / "map.png", countries=index)


def test_map_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(GeoprobeError, match=r"pip install 'geoprobe-vm\[map\]'"):
        draw_map(make_fix(), tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()
