"""`geoprobe unlock` as an ordinary user: its own keys, no privileges, the same release.

As root, a child process loads geoprobe (the interpreter may live under /root, which an ordinary
user cannot read), unlocks once, then drops to uid/gid 65534 and unlocks again with keys that
user owns. As non-root the suite is already unprivileged and the child simply unlocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.keyserver import start_server
from tests.keyrelease.world import add_server, make_world

NOBODY = 65534

CHILD = r"""
import io, json, os, sys
from geoprobe.cli import main
from geoprobe.cli.env import Environment

cfg = sys.argv[1]

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env=Environment(stdout=out, stderr=err))
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "uid": os.geteuid()}

if os.geteuid() == 0:
    run("unlock", "vault", "--config", cfg)  # load every module while /root is readable
    os.setgroups([])
    os.setgid(%(uid)d)
    os.setuid(%(uid)d)
print(json.dumps(run("unlock", "vault", "--config", cfg)))
"""


def test_an_ordinary_user_unlocks_with_its_own_keys() -> None:
    # pytest's tmp_path sits below a directory only root may enter; /tmp is open to everyone
    with tempfile.TemporaryDirectory(prefix="geoprobe-unlock-") as tmp:
        _unlock_as_nobody(Path(tmp))


def _unlock_as_nobody(tmp_path: Path) -> None:
    w = make_world(tmp_path / "w")
    spec = add_server(w, "ks-a", b"user secret", bound="bound_ms = 50")
    with start_server(spec.config_path) as srv:
        cfg = w.client_config({"ks-a": srv.address}, attempts=3)
        if os.geteuid() == 0:
            for p in (tmp_path, tmp_path / "w", w.client_dir, *w.client_dir.iterdir(), cfg):
                os.chown(p, NOBODY, NOBODY)
        done = subprocess.run(
            [sys.executable, "-c", CHILD % {"uid": NOBODY}, str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["uid"] != 0
    assert res["code"] == 0, res["err"]
    assert res["out"] == "user secret" and res["err"] == ""


def test_a_client_key_others_can_read_is_refused_in_one_line(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    add_server(w, "ks-a", b"s")
    cfg = w.client_config({"ks-a": "127.0.0.1:9"})
    key = w.client_dir / "client.key"
    key.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "geoprobe", "unlock", "vault", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert f"{key}: field 'sign_key': mode 0644" in done.stderr
