"""Named groups of countries ("EU", "EEA", ...) so a policy can say what the law says.

Memberships as of 2026. They change by treaty, not often, and a wrong membership list means a
wrong compliance verdict, so each group says what it follows. Groups are sets of *areas*, not
only of member states: the country index gives ISO's own codes to territories that Natural Earth
draws inside their state (see data/countries/splits.csv), and each group lists the ones its law
covers. So French Guiana (GF) is in the EU but not in Schengen, and Svalbard (SJ) is Norwegian
but in neither the EEA nor Schengen. The Canaries, Azores, Madeira, Ceuta and Melilla have no
codes of their own and count with ES / PT.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from functools import cache

from geoprobe.errors import InputError

EU_MEMBERS = frozenset(
    {
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    }
)  # the 27 member states (TEU art. 52), since the UK left on 2020-01-31

# EU territory with ISO codes of its own: Åland (TFEU art. 355(4)) and the outermost regions
# (art. 349). Saint-Barthélemy left in 2012; the overseas countries and territories (GL, FO, NC,
# PF, AW, CW, SX, BQ, ...) are not EU territory.
EU_TERRITORIES = frozenset({"AX", "GF", "GP", "MQ", "RE", "YT", "MF"})

EFTA_MEMBERS = frozenset({"IS", "LI", "NO", "CH"})

GROUPS: dict[str, frozenset[str]] = {
    "EU": EU_MEMBERS | EU_TERRITORIES,
    # EU + the EFTA states in the EEA Agreement (not CH); the outermost regions are in, SJ is not.
    "EEA": EU_MEMBERS | EU_TERRITORIES | {"IS", "LI", "NO"},
    "EFTA": EFTA_MEMBERS,
    # All EU states but Ireland and Cyprus (BG and RO in full since 2025-01-01), plus EFTA; only
    # their European territory (Åland included, the outermost regions and Svalbard not).
    "SCHENGEN": (EU_MEMBERS - {"IE", "CY"}) | EFTA_MEMBERS | {"AX"},
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
            raise InputError(
                f"unknown country or group {raw.strip()!r} "
                f"(use ISO 3166-1 alpha-2 codes or {', '.join(sorted(GROUPS))})"
            )
    return out
