"""Is a fix inside the allowed set of countries, outside it, or straddling its border?

Shared by ``geoprobe check`` and the watch fusion, so both read a fix the same way. The rule, in
order (the first that applies wins):

1. ``certified``: the sound region lies wholly inside one country. In the allowed set -> inside,
   else -> outside (a proof).
2. ``sound``: the sound (speed-of-light) region is disjoint from the allowed countries, widened by
   ``margin_km`` for polygon generalisation -> outside. Added delay only grows the sound region, so
   an adversary cannot produce this answer for a VM that is really inside: it is safe to act on.
3. ``sound``: the sound region lies within the allowed countries -> inside.
4. ``probability``: the probability mass inside the allowed set is at least ``min_probability`` ->
   inside. The mass outside it being at least ``min_probability`` counts as outside only when the
   rule's ``basis`` is ``"calibrated"`` (opt-in): calibrated bounds are tighter but not sound, so an
   adversary adding delay could push the estimate across a border.
5. Otherwise -> straddles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from geoprobe.geo.fix import Fix, Region

Verdict = Literal["inside", "outside", "straddles"]
Basis = Literal["sound", "calibrated"]
KM_PER_DEG = 111.2


@dataclass(slots=True)
class JurisdictionVerdict:
    verdict: Verdict
    rule: str  # "certified", "sound" or "probability": which step of the rule decided
    p_allowed: float
    country: str | None  # the fix's country as reported: certified, else the most probable one
    certified: str | None
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.rule,
            "p_allowed": round(self.p_allowed, 4),
            "country": self.country,
            "certified": self.certified,
            "reasons": self.reasons,
        }


@lru_cache(maxsize=16)
def _allowed_union(codes: frozenset[str], margin_km: float) -> Any:
    from shapely.ops import unary_union

    from geoprobe.geo.countries import default_index

    idx = default_index()
    polys = []
    for c in sorted(codes):
        try:
            g = idx.polygon(c)
        except (KeyError, LookupError):
            continue
        if g is not None and not g.is_empty:
            polys.append(g)
    if not polys:
        return None
    u = unary_union(polys)
    return u.buffer(margin_km / KM_PER_DEG) if margin_km > 0 else u


def region_geometry(region: Region) -> Any:
    """A shapely geometry (lon/lat) for any Region: its own if it has one, else from its GeoJSON."""
    from shapely.geometry import shape
    from shapely.geometry.base import BaseGeometry

    for attr in ("geometry", "geom", "polygon"):
        g = getattr(region, attr, None)
        if isinstance(g, BaseGeometry):
            return g
    return shape(region.to_geojson())


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    """The allowed set (ISO codes, groups already expanded) and how sure a verdict must be."""

    allowed: frozenset[str]
    min_probability: float = 0.95
    basis: Basis = "sound"
    margin_km: float = 10.0

    @classmethod
    def of(cls, codes: Iterable[str], **kw: Any) -> Jurisdiction:
        return cls(allowed=frozenset(c.upper() for c in codes), **kw)

    def label(self, fix: Fix | None) -> str | None:
        """The country a fix is reported in: certified, else the most probable one.

        Events carry how sure that is next to it (``probability``, ``jurisdiction``); a null here
        only means there was no fix, so a pipeline can always say "from DE to ES".
        """
        if fix is None:
            return None
        return fix.certified or fix.country

    def judge(self, fix: Fix) -> JurisdictionVerdict:
        p_in = fix.probability_in(set(self.allowed))
        country = fix.certified or fix.country

        def v(verdict: Verdict, rule: str, why: str) -> JurisdictionVerdict:
            return JurisdictionVerdict(verdict, rule, p_in, country, fix.certified, [why])

        allowed = ",".join(sorted(self.allowed))
        if fix.certified:
            if fix.certified in self.allowed:
                return v("inside", "certified", f"sound region certified in {fix.certified}")
            return v(
                "outside",
                "certified",
                f"sound region certified in {fix.certified}, not in {allowed}",
            )
        if fix.sound_region is not None:
            union = _allowed_union(self.allowed, self.margin_km)
            region = region_geometry(fix.sound_region)
            if union is None or not region.intersects(union):
                return v(
                    "outside",
                    "sound",
                    f"sound region does not reach {allowed} (margin {self.margin_km:g} km)",
                )
            if region.within(_allowed_union(self.allowed, 0.0)):
                return v("inside", "sound", f"sound region lies within {allowed}")
        if p_in >= self.min_probability:
            return v(
                "inside",
                "probability",
                f"p({allowed})={p_in:.3f} >= {self.min_probability:g} ({fix.bound} bound)",
            )
        if self.basis == "calibrated" and 1.0 - p_in >= self.min_probability:
            return v(
                "outside",
                "probability",
                f"p(outside {allowed})={1 - p_in:.3f} >= {self.min_probability:g} ({fix.bound} bound)",
            )
        return v(
            "straddles",
            "probability",
            f"p({allowed})={p_in:.3f}; the sound region overlaps the border",
        )
