"""luks_suspend and luks_resume through the policy runner, with the key servers in the loop.

`cryptsetup luksSuspend/luksResume` need an active device-mapper volume, which this kernel cannot
make. Here a `cryptsetup` first in PATH records each call and, for luksResume, checks the key it
was handed on stdin against a real LUKS2 header with the real `cryptsetup open --test-passphrase`.
So what is tested is the plumbing (which commands, in which order, with which key, exactly once)
and that the key came from a release; the real suspend and resume of a mounted volume run in the
QEMU lab guest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from benchmarks.keyserver import start_relay, start_server
from geoprobe.defend import luks as luks_actions
from geoprobe.defend import respond, runner
from geoprobe.defend.base import ActionContext, Deadline
from geoprobe.errors import InputError
from geoprobe.events import SUSPECTED
from geoprobe.policy import parse_policy
from tests.keyrelease.world import add_server, make_world

REAL = shutil.which("cryptsetup")
needs_cryptsetup = pytest.mark.skipif(REAL is None, reason="needs Debian's cryptsetup")


def _policy(tmp_path: Path, header: Path, client_cfg: Path) -> Any:
    return parse_policy(
        {
            "jurisdiction": {"allow": ["DE"]},
            "on": {
                "suspected": [{"action": "luks_suspend", "luks": ["data"], "header": str(header)}],
                # the stage that runs once a move is judged harmless; listed here to be parsed
                "unknown": [
                    {
                        "action": "luks_resume",
                        "luks": ["data"],
                        "secret": "vault",
                        "config": str(client_cfg),
                        "header": str(header),
                    }
                ],
            },
        },
        file=tmp_path / "policy.toml",
    )


def _fake_cryptsetup(bin_dir: Path, calls: Path) -> None:
    bin_dir.mkdir()
    script = bin_dir / "cryptsetup"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            # records the call; luksResume checks its stdin key against the --header file
            key="$(mktemp)"; cat > "$key"
            header=""
            for a in "$@"; do case "$a" in --header=*) header="${{a#--header=}}";; esac; done
            rc=0
            if [ "$2" = "luksResume" ] || [ "$1" = "luksResume" ]; then
                {REAL} open --test-passphrase --key-file="$key" "$header" >/dev/null 2>&1 || rc=2
            fi
            n=$(wc -c < "$key")
            printf '%s\\n' "{{\\"argv\\": \\"$*\\", \\"key_bytes\\": $n, \\"rc\\": $rc}}" >> {calls}
            rm -f "$key"
            [ $rc -eq 0 ] || echo "No key available with this passphrase." >&2
            exit $rc
            """
        )
    )
    script.chmod(0o755)


def _format(header: Path, passphrase: bytes) -> None:
    assert REAL is not None
    with header.open("wb") as f:
        f.truncate(20 << 20)
    subprocess.run(
        [REAL, "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2"]
        + ["--pbkdf-force-iterations", "1000", "--key-file=-", str(header)],
        input=passphrase,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def plumbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    calls = tmp_path / "calls.jsonl"
    _fake_cryptsetup(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    drop = tmp_path / "drop_caches"
    drop.write_text("")
    monkeypatch.setattr(luks_actions, "DROP_CACHES", drop)
    return calls


def _ctx(spec: Any, tmp_path: Path) -> ActionContext:
    return ActionContext(
        event={"id": "e2", "type": "io.geoprobe.migration.confirmed"},
        verdict=spec.verdict,
        deadline=Deadline.after(spec.timeout),
        store_path=tmp_path / "state.db",
    )


@needs_cryptsetup
def test_suspect_suspend_harmless_move_resume_far_move_stays_suspended(
    tmp_path: Path, plumbing: Path
) -> None:
    passphrase = os.urandom(32)
    header = tmp_path / "volume.luks"
    _format(header, passphrase)
    w = make_world(tmp_path / "world")
    spec = add_server(w, "ks-a", passphrase, bound="bound_ms = 50", extra='log = "r.jsonl"\n')
    with start_server(spec.config_path) as srv:
        near = w.client_config({"ks-a": srv.address}, attempts=3)
        policy = _policy(tmp_path, header, near)

        # suspicion: sync, drop caches, luksSuspend, once per event
        event = {"id": "e1", "type": SUSPECTED, "source": "test", "data": {}}
        (res,) = respond(event, policy, store_path=tmp_path / "state.db")
        assert res.status == "ok", res.detail
        assert (tmp_path / "drop_caches").read_text() == "3\n"
        (again,) = respond(event, policy, store_path=tmp_path / "state.db")
        assert again.status == "skipped"
        calls = _calls(plumbing)
        assert [c["argv"] for c in calls] == [f"luksSuspend --header={header} data"]

        # a harmless move: the servers release, and the released key opens the header
        resume = policy.actions_for("unknown")[0]
        done = runner.execute(resume, _ctx(resume, tmp_path))
        assert done.status == "ok", done.detail
        last = _calls(plumbing)[-1]
        assert last["argv"] == f"luksResume --header={header} --key-file=- data"
        assert last["rc"] == 0 and last["key_bytes"] == 32
        assert done.data["releases"][0]["server"] == "ks-a"

        # a cross-border move: 20 ms of path against a 5 ms bound; no luksResume runs at all
        far_spec = add_server(w, "ks-b", passphrase, bound="bound_ms = 5")
        with (
            start_server(far_spec.config_path) as far_srv,
            start_relay("127.0.0.1:0", far_srv.address, rtt_ms=20.0) as rly,
        ):
            far = w.client_config({"ks-b": rly.address}, timeout_ms=1000, attempts=2)
            policy = _policy(tmp_path, header, far)
            resume = policy.actions_for("unknown")[0]
            before = len(_calls(plumbing))
            refused = runner.execute(resume, _ctx(resume, tmp_path))
    assert refused.status == "failed"
    assert refused.detail.startswith("key release refused, volumes stay suspended:")
    assert "exceeds the bound 5 ms" in refused.detail
    assert len(_calls(plumbing)) == before


@needs_cryptsetup
def test_a_released_key_that_does_not_open_the_volume_fails_the_resume(
    tmp_path: Path, plumbing: Path
) -> None:
    header = tmp_path / "volume.luks"
    _format(header, b"the real passphrase")
    w = make_world(tmp_path / "world")
    spec = add_server(w, "ks-a", b"another secret", bound="bound_ms = 50")
    with start_server(spec.config_path) as srv:
        policy = _policy(tmp_path, header, w.client_config({"ks-a": srv.address}, attempts=3))
        resume = policy.actions_for("unknown")[0]
        done = runner.execute(resume, _ctx(resume, tmp_path))
    assert done.status == "failed"
    assert "No key available" in done.detail
    assert _calls(plumbing)[-1]["rc"] == 2


def test_dry_run_plans_without_touching_anything(tmp_path: Path, plumbing: Path) -> None:
    header = tmp_path / "h"
    policy = _policy(tmp_path, header, tmp_path / "unlock.toml")
    spec = policy.actions_for("suspected")[0]
    text = luks_actions.plan_suspend(spec, _ctx(spec, tmp_path))
    assert text.endswith(f"cryptsetup luksSuspend --header={header} data")
    resume = policy.actions_for("unknown")[0]
    text = luks_actions.plan_resume(resume, _ctx(resume, tmp_path))
    assert text.startswith("geoprobe unlock vault")
    assert _calls(plumbing) == [] and (tmp_path / "drop_caches").read_text() == ""


@pytest.mark.parametrize(
    ("action", "fields", "field"),
    [
        ("luks_suspend", {}, "luks"),
        ("luks_suspend", {"luks": ["a/b"]}, "luks"),
        ("luks_suspend", {"luks": ["a"], "header": "rel/path"}, "header"),
        ("luks_resume", {"luks": ["a"]}, "secret"),
        ("luks_resume", {"luks": ["a"], "secret": "v", "config": 5}, "config"),
        ("luks_resume", {"luks": ["a"], "secret": "v", "keyfile": "/k"}, "keyfile"),
    ],
)
def test_bad_luks_actions_are_named_when_the_policy_loads(
    action: str, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InputError) as exc:
        parse_policy({"on": {"suspected": [{"action": action, **fields}]}}, file="p.toml")
    assert exc.value.field == field and exc.value.entry == "on.suspected[0]"
