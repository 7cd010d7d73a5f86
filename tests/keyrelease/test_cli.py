"""`geoprobe keyserver keygen|split|check`: files made private, entries printed, errors one line."""

from __future__ import annotations

import io
import itertools
import stat
from pathlib import Path

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.keyrelease import config, keys, shares
from tests.keyrelease.world import add_server, make_world


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, Environment(stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def test_keygen_writes_private_keys_and_prints_the_config_lines(tmp_path: Path) -> None:
    code, out, _ = _run(["keyserver", "keygen", "--out", str(tmp_path / "srv")])
    assert code == 0
    key = tmp_path / "srv" / keys.SERVER_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = out.split('pubkey = "')[1].split('"')[0]
    assert keys.parse_public(pub, "Ed25519") == keys.ed25519_raw(keys.load_sign_key(key))

    code, out, _ = _run(["keyserver", "keygen", "--client", "--out", str(tmp_path / "cli")])
    assert code == 0
    box = keys.load_box_key(tmp_path / "cli" / keys.CLIENT_BOX_KEY)
    assert f'box_pubkey = "{keys.b64(keys.x25519_raw(box))}"' in out
    code, _, err = _run(["keyserver", "keygen", "--out", str(tmp_path / "srv")])
    assert code == 3 and "refusing to overwrite" in err and err.count("\n") == 1


def test_split_writes_shares_that_rebuild_the_secret(tmp_path: Path) -> None:
    secret = tmp_path / "luks.pass"
    secret.write_bytes(b"correct horse battery staple")
    code, out, _ = _run(
        ["keyserver", "split", "--k", "2", "--n", "3", "--in", str(secret), "--out", str(tmp_path)]
    )
    assert code == 0 and len(out.splitlines()) == 3
    parts = [(tmp_path / f"share-{i}").read_bytes() for i in (1, 2, 3)]
    assert all(stat.S_IMODE((tmp_path / f"share-{i}").stat().st_mode) == 0o600 for i in (1, 2, 3))
    for pair in itertools.combinations(parts, 2):
        assert shares.combine(list(pair)) == secret.read_bytes()
    code, _, _ = _run(
        ["keyserver", "split", "--k", "3", "--n", "2", "--in", str(secret), "--out", str(tmp_path)]
    )
    assert code == 2  # click's usage error
    secret.write_bytes(b"")
    code, _, err = _run(
        ["keyserver", "split", "--k", "2", "--n", "2", "--in", str(secret), "--out", str(tmp_path)]
    )
    assert code == 3 and "got 0" in err and err.count("\n") == 1


def test_check_prints_each_client_with_its_bound(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    spec = add_server(w, "ks-a", b"s", bound="bound_km = 300")
    code, out, _ = _run(["keyserver", "check", "--config", str(spec.config_path)])
    assert code == 0
    assert "client vm-1: vault within 3 ms (3 ms (300 km))" not in out
    assert "client vm-1: vault within 3 ms (300 km)" in out
    assert config.load_server(spec.config_path).clients["vm-1"].bound_ns == 3_000_000
