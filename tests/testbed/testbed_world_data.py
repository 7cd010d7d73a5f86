"""A small generic world for testbed tests: six servers, symmetric physically possible RTTs (ms)."""

from __future__ import annotations

# id, lat, lon, country; RTTs (ms) below are symmetric and physically possible.
SERVERS = [
    ("Frankfurt", 50.11, 8.68, "DE"),
    ("Paris", 48.86, 2.35, "FR"),
    ("Madrid", 40.42, -3.70, "ES"),
    ("Warsaw", 52.23, 21.01, "PL"),
    ("NewYork", 40.71, -74.01, "US"),
    ("Tokyo", 35.68, 139.65, "JP"),
]
RTTS = {
    ("Frankfurt", "Paris"): 9.0,
    ("Frankfurt", "Madrid"): 25.0,
    ("Frankfurt", "Warsaw"): 18.0,
    ("Frankfurt", "NewYork"): 85.0,
    ("Frankfurt", "Tokyo"): 230.0,
    ("Paris", "Madrid"): 18.0,
    ("Paris", "Warsaw"): 28.0,
    ("Paris", "NewYork"): 78.0,
    ("Paris", "Tokyo"): 225.0,
    ("Madrid", "Warsaw"): 45.0,
    ("Madrid", "NewYork"): 90.0,
    ("Madrid", "Tokyo"): 250.0,
    ("Warsaw", "NewYork"): 100.0,
    ("Warsaw", "Tokyo"): 240.0,
    ("NewYork", "Tokyo"): 160.0,
}
