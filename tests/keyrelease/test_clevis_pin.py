"""The clevis pin's own conventions on loopback: JWE shape, malformed configs, tampering."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.keyserver import start_server
from tests.keyrelease.world import add_server, make_world

PIN_DIR = Path(__file__).resolve().parents[2] / "contrib" / "clevis"

pytestmark = pytest.mark.skipif(
    shutil.which("jose") is None or shutil.which("clevis") is None,
    reason="needs Debian's clevis and jose",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{PIN_DIR}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    exe = Path(sys.executable).parent / "geoprobe"
    env["GEOPROBE"] = str(exe) if exe.exists() else "geoprobe"
    return env


def _clevis(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["clevis", *args], input=stdin, env=_env(), capture_output=True, timeout=120, check=False
    )


def _header(jwe: bytes) -> dict[str, object]:
    head = jwe.split(b".")[0]
    return json.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))  # type: ignore[no-any-return]


def test_encrypt_and_decrypt_through_the_key_server(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    spec = add_server(w, "ks-a", os.urandom(32), bound="bound_ms = 50")
    with start_server(spec.config_path) as srv:
        cfg = w.client_config({"ks-a": srv.address}, attempts=3)
        pin_cfg = json.dumps({"name": "vault", "config": str(cfg)})
        enc = _clevis(["encrypt", "geoprobe", pin_cfg], b"luks passphrase")
        assert enc.returncode == 0, enc.stderr.decode()
        jwe = enc.stdout.strip()
        assert jwe.count(b".") == 4  # compact serialization
        head = _header(jwe)
        assert head["alg"] == "A256KW" and head["enc"] == "A256GCM"
        assert head["clevis"] == {
            "pin": "geoprobe",
            "geoprobe": {"name": "vault", "config": str(cfg)},
        }
        dec = _clevis(["decrypt"], jwe)
        assert dec.returncode == 0, dec.stderr.decode()
        assert dec.stdout == b"luks passphrase"

        parts = jwe.split(b".")
        ct = bytearray(base64.urlsafe_b64decode(parts[3] + b"=" * (-len(parts[3]) % 4)))
        ct[0] ^= 1
        parts[3] = base64.urlsafe_b64encode(bytes(ct)).rstrip(b"=")
        tampered = _clevis(["decrypt"], b".".join(parts))
        assert tampered.returncode != 0 and tampered.stdout == b""

        # the same token, but the servers no longer hold the secret it was wrapped with
        (spec.dir / "vault.secret").write_bytes(os.urandom(32))
    with start_server(spec.config_path) as srv2:
        cfg.write_text(cfg.read_text().replace(srv.address, srv2.address))
        rotated = _clevis(["decrypt"], jwe)
    assert rotated.returncode != 0 and rotated.stdout == b""


@pytest.mark.parametrize(
    ("config", "message"),
    [("not json", b"Configuration is malformed!"), ("{}", b"Missing the required 'name'")],
)
def test_bad_pin_configs_fail_before_any_release(config: str, message: bytes) -> None:
    done = _clevis(["encrypt", "geoprobe", config], b"x")
    assert done.returncode == 1 and done.stdout == b"" and message in done.stderr


def test_a_refused_release_encrypts_nothing(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    add_server(w, "ks-a", b"s", bound="bound_ms = 50")
    cfg = w.client_config({"ks-a": "127.0.0.1:9"}, timeout_ms=200)
    done = _clevis(["encrypt", "geoprobe", json.dumps({"name": "vault", "config": str(cfg)})], b"x")
    err = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b""
    assert "geoprobe: error: vault: 0 of 1 release: ks-a: no challenge" in err
    assert "The key servers did not release 'vault'!" in err
