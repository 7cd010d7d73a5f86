"""Server and client configs: every mistake is one line naming the file and the field."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.errors import InputError
from geoprobe.keyrelease import config
from tests.keyrelease.world import add_server, make_world


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, Environment(stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def _server_cfg(tmp_path: Path, bound: str) -> Path:
    w = make_world(tmp_path)
    return add_server(w, "ks-a", b"secret", bound=bound).config_path


def test_a_client_without_its_bound_is_a_config_error(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path, bound="")
    with pytest.raises(InputError) as exc:
        config.load_server(cfg)
    msg = str(exc.value)
    assert msg.startswith(f"{cfg}: entry clients[0]: field 'bound_ms': missing")
    code, out, err = _run(["keyserver", "check", "--config", str(cfg)])
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "field 'bound_ms'" in err and str(cfg) in err


def test_the_cli_refuses_to_serve_without_a_bound(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path, bound="")
    code, _, err = _run(["keyserver", "serve", "--config", str(cfg), "--port", "0"])
    assert code == 3 and "field 'bound_ms'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("bound", "field", "message"),
    [
        ("bound_ms = 0", "bound_ms", "positive number"),
        ("bound_ms = -5", "bound_ms", "positive number"),
        ('bound_ms = "5"', "bound_ms", "positive number"),
        ("bound_ms = nan", "bound_ms", "positive number"),
        ("bound_km = inf", "bound_km", "positive number"),
        ("bound_ms = 5\nbound_km = 500", "bound_km", "not both"),
        ("bound_km = 1000000", "bound_km", "at most 1000 ms"),
    ],
)
def test_bad_bounds_are_named(tmp_path: Path, bound: str, field: str, message: str) -> None:
    cfg = _server_cfg(tmp_path, bound=bound)
    with pytest.raises(InputError, match=message) as exc:
        config.load_server(cfg)
    assert exc.value.field == field and exc.value.entry == "clients[0]"


def test_bounds_in_ms_and_km(tmp_path: Path) -> None:
    a = config.load_server(_server_cfg(tmp_path / "a", "bound_ms = 2.5"))
    b = config.load_server(_server_cfg(tmp_path / "b", "bound_km = 500"))
    assert a.clients["vm-1"].bound_ns == 2_500_000
    assert b.clients["vm-1"].bound_ns == 5_000_000
    assert b.clients["vm-1"].bound_written == "5 ms (500 km)"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('sign_pubkey = "', 'sign_pubkey = "!!', "sign_pubkey"),
        ('box_pubkey = "', 'box_pubkey = "AAAA', "box_pubkey"),
        ('secrets = ["vault"]', 'secrets = ["nope"]', "secrets"),
        ('secrets = ["vault"]', "secrets = []", "secrets"),
        ('id = "vm-1"', 'id = "vm 1"', "id"),
        ('id = "vm-1"', 'id = "vm-1"\ncolour = "blue"', "colour"),
    ],
)
def test_bad_client_entries_are_named(tmp_path: Path, old: str, new: str, field: str) -> None:
    cfg = _server_cfg(tmp_path, "bound_ms = 5")
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    with pytest.raises(InputError) as exc:
        config.load_server(cfg)
    assert exc.value.field == field and exc.value.file == str(cfg)


def test_a_secret_others_may_read_is_refused(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path, "bound_ms = 5")
    os.chmod(cfg.parent / "vault.secret", 0o644)
    with pytest.raises(InputError, match="mode 0644") as exc:
        config.load_server(cfg)
    assert exc.value.field == "secrets.vault"


def test_a_secret_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path, "bound_ms = 5")
    secret = cfg.parent / "vault.secret"
    secret.rename(cfg.parent / "real")
    secret.symlink_to(cfg.parent / "real")
    with pytest.raises(InputError, match="cannot read"):
        config.load_server(cfg)


def test_not_toml_and_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "k.toml"
    p.write_text("server_id = [")
    with pytest.raises(InputError, match="not valid TOML"):
        config.load_server(p)
    p.write_bytes(b"server_id = '\xff'")
    with pytest.raises(InputError, match="not UTF-8"):
        config.load_server(p)
    with pytest.raises(InputError, match="cannot read"):
        config.load_server(tmp_path / "absent.toml")


def test_client_config_k_of_n_and_its_errors(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    for sid in ("ks-a", "ks-b", "ks-c"):
        add_server(w, sid, b"x")
    addrs = {"ks-a": "127.0.0.1:7208", "ks-b": "[::1]:7209", "ks-c": "localhost"}
    cfg = config.load_client(w.client_config(addrs, k=2))
    plan = cfg.plan("vault")
    assert plan.k == 2 and plan.servers == ("ks-a", "ks-b", "ks-c")
    assert cfg.servers["ks-b"].host == "::1" and cfg.servers["ks-b"].port == 7209
    assert cfg.servers["ks-c"].port == 7208
    assert cfg.plan("other").k == 1  # not in the config: any one server
    bad = w.client_config(addrs, k=4)
    with pytest.raises(InputError) as exc:
        config.load_client(bad)
    assert exc.value.field == "k" and exc.value.entry == "secrets.vault"
    bad.write_text(bad.read_text().replace('"127.0.0.1:7208"', '"127.0.0.1:99999"'))
    with pytest.raises(InputError) as exc:
        config.load_client(bad)
    assert exc.value.field == "address" and exc.value.entry == "servers[0]"


def test_unlock_with_a_broken_config_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "unlock.toml"
    p.write_text('client_id = "vm-1"\n')
    code, out, err = _run(["unlock", "vault", "--config", str(p)])
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "field 'servers'" in err
