"""Country groups: memberships and how codes are parsed."""

from __future__ import annotations

import pytest

from geoprobe.errors import InputError
from geoprobe.geo.countries import default_index
from geoprobe.geo.groups import GROUPS, expand, known_codes


def test_eu_has_27_members_and_not_the_uk() -> None:
    eu = expand(["EU"])
    assert len(eu) == 27
    assert {"DE", "FR", "HR", "CY", "MT", "IE"} <= eu
    assert not eu & {"GB", "CH", "NO", "IS", "LI", "GL", "FO", "XC"}


def test_eea_and_efta() -> None:
    assert expand(["EEA"]) == expand(["EU"]) | {"IS", "LI", "NO"}
    assert expand(["EFTA"]) == {"IS", "LI", "NO", "CH"}
    assert "CH" not in expand(["EEA"])


def test_schengen() -> None:
    schengen = expand(["schengen"])
    assert len(schengen) == 29
    assert {"BG", "RO", "CH", "NO", "IS", "LI"} <= schengen
    assert not schengen & {"IE", "CY", "GB"}


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


def test_every_group_member_is_a_known_code_with_land() -> None:
    index = default_index()
    for name, members in GROUPS.items():
        assert members <= known_codes(), name
        for code in members:
            assert not index.polygon(code).is_empty, (name, code)
