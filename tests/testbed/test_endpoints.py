"""Address and port plans, and keys shared through a directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoprobe.errors import InputError
from geoprobe.probe import keys
from geoprobe.testbed import endpoints
from geoprobe.testbed.keystore import landmark_keys


def test_one_address_per_landmark_keyed_by_server_index() -> None:
    eps = endpoints.plan([0, 1, 252, 253])
    assert [e.bind for e in eps] == ["127.0.0.2", "127.0.0.3", "127.0.0.254", "127.0.1.1"]
    assert all(e.port == 0 and e.advertise == e.bind for e in eps)


def test_single_address_uses_deterministic_ports_and_advertises_another() -> None:
    eps = endpoints.plan([3, 7], bind="127.0.0.1", advertise="10.0.2.2", base_port=41000)
    assert [(e.bind, e.port, e.advertise) for e in eps] == [
        ("127.0.0.1", 41003, "10.0.2.2"),
        ("127.0.0.1", 41007, "10.0.2.2"),
    ]


def test_too_few_addresses_and_non_loopback_prefixes_are_refused() -> None:
    with pytest.raises(InputError, match="bind-prefix"):
        endpoints.plan([300], prefixes=["127.0.5.0/24"])
    with pytest.raises(InputError, match="loopback"):
        endpoints.plan([0], prefixes=["10.0.0.0/24"])
    with pytest.raises(InputError, match="base-port"):
        endpoints.plan([10], bind="127.0.0.1", base_port=65530)


def test_keys_dir_gives_two_testbeds_the_same_keys(tmp_path: Path) -> None:
    ids = ["Frankfurt", "Sao Paulo/1"]
    first = landmark_keys(ids, tmp_path / "k")
    second = landmark_keys(ids, tmp_path / "k")
    for lid in ids:
        assert keys.public_raw(first[lid]) == keys.public_raw(second[lid])
    assert keys.public_raw(first[ids[0]]) != keys.public_raw(first[ids[1]])
    assert all((p.stat().st_mode & 0o077) == 0 for p in (tmp_path / "k").iterdir())
    fresh = landmark_keys(ids)
    assert keys.public_raw(fresh[ids[0]]) != keys.public_raw(first[ids[0]])
