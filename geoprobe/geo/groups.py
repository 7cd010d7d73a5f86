"""Named groups of countries ("EU", "EEA", ...) so a policy can say what the law says.

Memberships as of 2026. They change by treaty, not often, and a wrong membership list means a
wrong compliance verdict, so each group cites what it follows. Territories: Natural Earth draws
the EU's outermost regions (French Guiana, Réunion, the Azores, the Canaries, ...) inside their
member state's polygon, so they count as EU here as in law; overseas countries and territories
that are not EU territory (Greenland, the Faroes, New Caledonia, Aruba, ...) have their own codes
and are deliberately left out.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from functools import cache

from geoprobe.errors import InputError

_EU = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})  # the 27 member states (TEU art. 52), since the UK left on 2020-01-31

_EFTA = frozenset({"IS", "LI", "NO", "CH"})

GROUPS: dict[str, frozenset[str]] = {
    "EU": _EU,
    "EEA": _EU | {"IS", "LI", "NO"},  # EU + the EFTA states in the EEA Agreement (not CH)
    "EFTA": _EFTA,
    # Schengen: all EU states but Ireland and Cyprus (BG and RO in full since 2025-01-01), plus EFTA.
    "SCHENGEN": (_EU - {"IE", "CY"}) | _EFTA,
    "FIVE_EYES": frozenset({"AU", "CA", "GB", "NZ", "US"}),
}

# Codes people write that ISO spells differently.
ALIASES = {"UK": "GB", "EL": "GR"}


@cache
def known_codes() -> frozenset[str]:
    """All ISO 3166-1 alpha-2 codes, plus the codes geoprobe gives areas ISO leaves out."""
    from geoprobe.geo.countries import ISO_TABLE, UNASSIGNED_TABLE

    codes: set[str] = set()
    for path, column in ((ISO_TABLE, "alpha2"), (UNASSIGNED_TABLE, "code")):
        with path.open(encoding="utf-8", newline="") as fh:
            codes.update(row[column] for row in csv.DictReader(fh))
    return frozenset(codes)


def expand(codes: Iterable[str]) -> set[str]:
    """ISO codes and group names (any case, e.g. ``["de", "EU"]``) -> a set of ISO codes."""
    out: set[str] = set()
    known = known_codes()
    for raw in codes:
        token = raw.strip().upper().replace("-", "_")
        if not token:
            continue
        token = ALIASES.get(token, token)
        if token in GROUPS:
            out |= GROUPS[token]
        elif token in known:
            out.add(token)
        else:
            raise InputError(f"unknown country or group {raw.strip()!r} "
                             f"(use ISO 3166-1 alpha-2 codes or {', '.join(sorted(GROUPS))})")
    return out
