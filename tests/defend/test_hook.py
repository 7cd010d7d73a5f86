"""hook: real child processes get the CloudEvent on stdin; run-parts directories; timeouts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from geoprobe.defend import hook
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout

from .conftest import spec


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_hook_gets_event_json_on_stdin_and_env(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    got = tmp_path / "got.json"
    env_out = tmp_path / "env.txt"
    h = script(
        tmp_path / "hook.sh",
        f'cat > {got}\necho "$GEOPROBE_VERDICT $GEOPROBE_TO $1 $EXTRA" > {env_out}\n',
    )
    c = ctx()
    out = hook.run(spec("hook", command=[str(h), "arg1"], env={"EXTRA": "x"}), c)
    assert json.loads(got.read_text()) == dict(c.event)
    assert env_out.read_text().split() == ["confirmed_crossing", "PL", "arg1", "x"]
    assert out.data["runs"][0]["returncode"] == 0


def test_run_parts_directory_in_lexical_order_with_skips(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    d = tmp_path / "hooks.d"
    d.mkdir()
    order = tmp_path / "order"
    for name in ("20-second", "10-first", "30_third"):
        script(d / name, f"cat > /dev/null; echo {name} >> {order}\n")
    script(d / "15-skipped.sh", f"echo dot >> {order}\n")  # run-parts ignores names with dots
    (d / "12-not-exec").write_text("#!/bin/sh\necho no\n")
    out = hook.run(spec("hook", command=[str(d)]), ctx())
    assert order.read_text().split() == ["10-first", "20-second", "30_third"]
    assert any("15-skipped.sh" in w for w in out.warnings)
    assert any("12-not-exec" in w for w in out.warnings)
    assert "skipping" in hook.plan(spec("hook", command=[str(d)]), ctx())


def test_failing_part_reported_and_later_parts_still_run(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    d = tmp_path / "hooks.d"
    d.mkdir()
    marker = tmp_path / "ran"
    script(d / "a", "echo oops >&2; exit 4\n")
    script(d / "b", f"touch {marker}\n")
    with pytest.raises(ActionFailed, match="exited 4") as exc:
        hook.run(spec("hook", command=[str(d)]), ctx())
    assert marker.exists()
    assert exc.value.data["runs"][0]["stderr"].strip() == "oops"


def test_missing_executable_fails_cleanly(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    with pytest.raises(ActionFailed, match="cannot run"):
        hook.run(spec("hook", command=[str(tmp_path / "absent")]), ctx())


def test_timeout_kills_the_hooks_whole_process_group(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    pidfile = tmp_path / "child.pid"
    h = script(tmp_path / "slow.sh", f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    with pytest.raises(ActionTimeout):
        hook.run(spec("hook", command=[str(h)]), ctx(timeout=1.0))
    child = int(pidfile.read_text())
    for _ in range(100):  # reaped by init shortly after SIGKILL
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the hook's background child survived the timeout")
