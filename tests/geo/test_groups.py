"""Country groups: memberships and how codes are parsed."""

from __future__ import annotations

import pytest

from geoprobe.errors import InputError
from geoprobe.geo.countries import default_index
from geoprobe.geo.groups import EU_MEMBERS, GROUPS, expand, known_codes


def test_eu_has_27_members_and_not_the_uk() -> None:
    eu = expand(["EU"])
    assert len(EU_MEMBERS) == 27 and EU_MEMBERS <= eu
    assert {"DE", "FR", "HR", "CY", "MT", "IE"} <= eu
    assert {"GF", "RE", "AX", "MF"} <= eu  # EU territory with codes of its own
    assert not eu & {"GB", "CH", "NO", "IS", "LI", "GL", "FO", "XC", "BL", "NC", "SJ", "BQ"}


def test_eea_and_efta() -> None:
    assert expand(["EEA"]) == expand(["EU"]) | {"IS", "LI", "NO"}
    assert expand(["EFTA"]) == {"IS", "LI", "NO", "CH"}
    assert "CH" not in expand(["EEA"]) and "SJ" not in expand(["EEA"])


def test_schengen() -> None:
    schengen = expand(["schengen"])
    assert len(schengen - {"AX"}) == 29
    assert {"BG", "RO", "CH", "NO", "IS", "LI", "AX"} <= schengen
    assert not schengen & {"IE", "CY", "GB", "GF", "RE", "SJ"}


def test_mixing_codes_and_groups_case_insensitively() -> None:
    assert expand(["de", " At ", "eea"]) == expand(["EEA"])
    assert expand(["uk", "Five-Eyes"]) == {"GB", "US", "CA", "AU", "NZ"}
    assert expand(["EL"]) == {"GR"}
    assert expand(["XK", ""]) == {"XK"}
    assert expand([]) == set()


@pytest.mark.parametrize("bad", ["XX", "Germany", "EUR", "D"])
def test_unknown_code_names_it(bad: str) -> None:
    with pytest.raises(InputError, match=repr(bad)):
        expand(["DE", bad])


def test_groups_follow_the_split_territories() -> None:
    """The point of the splits: an address in Cayenne is EU but not Schengen, Longyearbyen
    neither."""
    index = default_index()
    assert index.code_at(4.93, -52.33) == "GF" and index.code_at(78.22, 15.65) == "SJ"
    assert "GF" in expand(["EU"]) and "GF" not in expand(["SCHENGEN"])
    assert "SJ" not in expand(["EEA"]) and index.code_at(59.91, 10.75) in expand(["EEA"])


def test_every_group_member_is_a_known_code_with_land() -> None:
    index = default_index()
    for name, members in GROUPS.items():
        assert members <= known_codes(), name
        for code in members:
            assert not index.polygon(code).is_empty, (name, code)
