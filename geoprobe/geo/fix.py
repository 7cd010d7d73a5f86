"""The answer to "where am I?": a position, a region, and a jurisdiction verdict.

Every consumer (CLI, check, watch, defend, reports) reads this type; the solver fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Bound = Literal["sound", "calibrated"]


class Region(Protocol):
    """A feasible region on the sphere."""

    @property
    def area_km2(self) -> float: ...

    def contains(self, lat: float, lon: float) -> bool: ...

    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON geometry (Polygon/MultiPolygon, [lon, lat]) of the region."""
        ...


@dataclass(frozen=True, slots=True)
class CountryShare:
    code: str  # ISO 3166-1 alpha-2
    probability: float  # posterior probability that the VM is in this country
    share: float  # share of the (land part of the) feasible region's area in this country


@dataclass(slots=True)
class Fix:
    lat: float
    lon: float
    error_radius_km: float
    bound: Bound  # what the region and verdict rest on
    countries: list[CountryShare]  # sorted by probability, highest first
    certified: str | None  # set only when the sound region lies wholly inside one country
    region: Region | None  # the region the verdict rests on (calibrated if bound == "calibrated")
    sound_region: Region | None  # the speed-of-light region (always sound)
    landmarks_used: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # landmark id -> why it was left out
    inconsistent: list[str] = field(default_factory=list)  # culprits of an empty intersection
    method: str = "geoprobe"
    notes: list[str] = field(default_factory=list)
    # Replies the prober refused in the round behind this fix, by reason (forged, replayed, ...):
    # an attack on the probes leaves a trace in every report of the fix.
    rejected_replies: dict[str, int] = field(default_factory=dict)

    @property
    def country(self) -> str | None:
        return self.countries[0].code if self.countries else None

    @property
    def probability(self) -> float:
        return self.countries[0].probability if self.countries else 0.0

    def probability_in(self, codes: set[str]) -> float:
        """Probability mass inside an allowed set of ISO codes (groups already expanded)."""
        return sum(c.probability for c in self.countries if c.code in codes)

    def to_json(self) -> dict[str, Any]:
        return {
            "position": {"lat": round(self.lat, 5), "lon": round(self.lon, 5)},
            "error_radius_km": round(self.error_radius_km, 1),
            "bound": self.bound,
            "countries": [
                {"code": c.code, "probability": round(c.probability, 4), "share": round(c.share, 4)}
                for c in self.countries
            ],
            "certified": self.certified,
            "region_km2": round(self.region.area_km2, 0) if self.region is not None else None,
            "sound_region_km2": round(self.sound_region.area_km2, 0)
            if self.sound_region is not None
            else None,
            "landmarks_used": self.landmarks_used,
            "excluded": self.excluded,
            "inconsistent": self.inconsistent,
            "method": self.method,
            "notes": self.notes,
            "rejected_replies": self.rejected_replies,
        }
