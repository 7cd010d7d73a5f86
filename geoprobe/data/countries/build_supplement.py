"""Regenerate ``supplement.geojson``: areas that world-atlas 1:50m drops but 1:10m keeps.

Run from the unpacked npm package ``world-atlas@2.0.2`` (``npm pack world-atlas@2.0.2``)::

    python geoprobe/data/countries/build_supplement.py /path/to/package > supplement.geojson

The small territories that the 50m generalisation drops (Gibraltar, Tuvalu, the UK Sovereign
Base Areas, disputed reefs, ...) would otherwise read as sea or, worse, as part of a neighbour.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import shapely

from geoprobe.geo.topojson import decode


def main(package: Path) -> None:
    t50 = json.loads((package / "countries-50m.json").read_text())
    t10 = json.loads((package / "countries-10m.json").read_text())
    have = {g["properties"]["name"] for g in t50["objects"]["countries"]["geometries"]}
    have.add("Macedonia")  # renamed between the two files, present in both
    features = []
    for f in decode(t10, "countries", source="countries-10m.json"):
        if f.properties.get("name") in have:
            continue
        geom = shapely.set_precision(f.geometry, 1e-5)
        features.append(
            {
                "type": "Feature",
                "id": f.id,
                "properties": f.properties,
                "geometry": json.loads(shapely.to_geojson(geom)),
            }
        )
    json.dump(
        {
            "type": "FeatureCollection",
            "source": "world-atlas@2.0.2 countries-10m.json",
            "features": features,
        },
        sys.stdout,
        separators=(",", ":"),
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
