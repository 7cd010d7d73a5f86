"""The reversible stage: on.cleared, its restore actions, the run order and what `policy check`
warns about.

systemd and device-mapper do not run here: ``systemctl`` and ``cryptsetup`` are recording fakes
first in PATH, and the volumes' states come from a fake ``/sys/block`` tree.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe import defend, events
from geoprobe.defend import luks, runner, system
from geoprobe.defend.base import ActionContext, ActionFailed
from geoprobe.defend.reversible import open_suspicion
from geoprobe.errors import InputError
from geoprobe.policy import parse_policy

from .conftest import spec

UNIT = "vault.service"


@pytest.fixture
def shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("systemctl", "cryptsetup"):
        fake = bin_dir / tool
        fake.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
            'if [ -n "$FAKE_FAIL" ]; then echo "Failed: $FAKE_FAIL" >&2; exit 1; fi\n'
        )
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- the policy ------------------------------------------------------------------------------


def test_cleared_is_a_verdict_and_the_cleared_event_calls_for_it() -> None:
    pol = parse_policy({"on": {"cleared": [{"action": "start_units", "units": [UNIT]}]}})
    ev = events.cleared_event("moved_inside", "s-1")
    assert defend.verdict_of(ev, pol) == "cleared"
    assert [s.action for s in pol.actions_for("cleared")] == ["start_units"]


def test_the_hold_starts_first_then_the_order_field_then_as_written() -> None:
    pol = parse_policy(
        {
            "on": {
                "suspected": [
                    {"action": "syslog"},
                    {"action": "luks_suspend", "luks": ["data"]},
                    {"action": "delay", "memory": "64M"},
                    {"action": "signal_units", "units": [UNIT], "signal": "USR1", "order": 0},
                    {"action": "hook", "command": ["/bin/true"], "order": 5},
                ]
            }
        }
    )
    ran = [(s.index, s.action) for s in pol.actions_for("suspected")]
    assert ran == [
        (2, "delay"),
        (3, "signal_units"),
        (0, "syslog"),
        (1, "luks_suspend"),
        (4, "hook"),
    ]
    summary = pol.summary()["actions"]["suspected"]
    assert [(a["index"], a["order"]) for a in summary] == [(2, 0), (3, 0), (0, 1), (1, 1), (4, 5)]


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"action": "signal_units", "units": [UNIT], "signal": "KILL"}, "signal", "stop_units"),
        ({"action": "signal_units", "units": [UNIT], "signal": 10}, "signal", "signal name"),
        ({"action": "signal_units", "units": [UNIT]}, "signal", "missing"),
        ({"action": "signal_units", "units": [UNIT], "signal": "USR1", "whom": "x"}, "whom", ""),
        ({"action": "start_units", "units": ["-x"]}, "units", "not a systemd unit"),
        ({"action": "start_units", "units": [UNIT], "order": 101}, "order", "0 to 100"),
        ({"action": "syslog", "order": True}, "order", "integer"),
    ],
)
def test_bad_fields_are_one_line_naming_entry_and_field(
    entry: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InputError) as exc:
        parse_policy({"on": {"cleared": [entry]}}, file="p.toml")
    assert exc.value.field == field and exc.value.entry == "on.cleared[0]"
    assert message in str(exc.value) and "\n" not in str(exc.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_any_signal_or_order_value_is_accepted_or_refused_in_one_line(value: Any) -> None:
    for key in ("signal", "order"):
        entry = {"action": "signal_units", "units": [UNIT], "signal": "USR1", key: value}
        try:
            pol = parse_policy({"on": {"suspected": [entry]}})
        except InputError as exc:
            assert exc.field == key and "\n" not in str(exc)
            continue
        (s,) = pol.actions_for("suspected")
        assert s.options["signal"].startswith("SIG") and 0 <= s.order <= 100


def test_policy_check_warns_of_measures_nothing_gives_back() -> None:
    pol = parse_policy(
        {
            "on": {
                "suspected": [
                    {"action": "luks_suspend", "luks": ["data", "logs"]},
                    {"action": "stop_units", "units": [UNIT]},
                    {"action": "wipe", "paths": ["/etc/k.key"]},
                ],
                "cleared": [
                    {"action": "luks_resume", "luks": ["data"], "secret": "s"},
                    {"action": "delay"},
                ],
            }
        }
    )
    w = pol.warnings()
    assert any(
        x.startswith("on.suspected[0] luks_suspend: no luks_resume") and "logs" in x for x in w
    )
    assert not any("data" in x.split(":")[1] for x in w if x.startswith("on.suspected[0]"))
    assert any(x.startswith("on.suspected[1] stop_units: no start_units") for x in w)
    assert any(x.startswith("on.suspected[2] wipe: cannot be undone") for x in w)
    assert any(x.startswith("on.cleared[1] delay:") for x in w)
    assert len(w) == 4
    paired = parse_policy(
        {
            "on": {
                "suspected": [{"action": "stop_units", "units": [UNIT]}],
                "cleared": [{"action": "start_units", "units": [UNIT]}],
            }
        }
    )
    assert paired.warnings() == [] and paired.summary()["warnings"] == []


def test_policy_check_warns_that_unmounting_a_suspended_volume_blocks() -> None:
    pol = parse_policy(
        {
            "on": {
                "suspected": [{"action": "luks_suspend", "luks": ["data"]}],
                "cleared": [{"action": "luks_resume", "luks": ["data"], "secret": "s"}],
                "confirmed_crossing": [
                    {"action": "unmount", "paths": ["/srv/other"], "luks": ["other"]},
                    {"action": "unmount", "paths": ["/srv/data"], "luks": ["data"]},
                ],
            }
        }
    )
    (w,) = pol.warnings()
    assert w.startswith("on.confirmed_crossing[1] unmount: data may be suspended")


# -- the actions -----------------------------------------------------------------------------


def test_start_units_and_signal_units_through_systemctl(
    shims: Path, ctx: Callable[..., ActionContext]
) -> None:
    system.run_start_units(spec("start_units", "cleared", units=[UNIT, "b@1.service"]), ctx())
    out = system.run_signal_units(
        spec("signal_units", "suspected", units=[UNIT], signal="usr1"), ctx()
    )
    assert out.detail == f"sent SIGUSR1 to {UNIT}"
    assert calls(shims) == [
        f"systemctl start -- {UNIT} b@1.service",
        f"systemctl kill --signal=SIGUSR1 --kill-who=main -- {UNIT}",
    ]
    assert system.plan_signal_units(
        spec("signal_units", units=[UNIT], signal="SIGRTMIN+3", whom="all"), ctx()
    ) == (f"systemctl kill --signal=SIGRTMIN+3 --kill-who=all -- {UNIT}")


def test_a_failing_systemctl_is_one_line(
    shims: Path, ctx: Callable[..., ActionContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", f"Unit {UNIT} not loaded.")
    with pytest.raises(ActionFailed, match=f"exited 1: Failed: Unit {UNIT} not loaded.$"):
        system.run_start_units(spec("start_units", units=[UNIT]), ctx())


def fake_dm(root: Path, **volumes: bool) -> Path:
    for n, (name, is_suspended) in enumerate(volumes.items()):
        d = root / f"dm-{n}" / "dm"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "suspended").write_text("1\n" if is_suspended else "0\n")
    return root


def test_luks_actions_leave_alone_what_is_already_as_wanted(
    shims: Path,
    ctx: Callable[..., ActionContext],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(luks, "SYS_BLOCK", fake_dm(tmp_path / "sys", data=True, logs=False))
    monkeypatch.setattr(luks, "DROP_CACHES", tmp_path / "drop_caches")
    assert luks.suspended("data") is True and luks.suspended("logs") is False
    assert luks.suspended("absent") is None
    out = luks.run_suspend(spec("luks_suspend", "suspected", luks=["data", "logs"]), ctx())
    assert calls(shims) == ["cryptsetup luksSuspend logs"]
    assert out.detail == "suspended logs (data already suspended)"

    def no_key_server(*_: Any) -> Any:
        raise AssertionError("a resume with nothing to resume must ask no key server")

    monkeypatch.setattr(luks, "_fetch", no_key_server)
    done = luks.run_resume(spec("luks_resume", "cleared", luks=["logs"], secret="s"), ctx())
    assert done.detail == "nothing to resume: logs not suspended"
    assert calls(shims) == ["cryptsetup luksSuspend logs"]


def test_every_new_action_is_safe_to_repeat_after_a_crash() -> None:
    for action in ("start_units", "signal_units", "luks_suspend", "luks_resume"):
        assert action in runner.RERUN_AFTER_CRASH


# -- the stage through the runner ------------------------------------------------------------


def test_respond_runs_on_cleared_once_with_start_and_end_rows(shims: Path, tmp_path: Path) -> None:
    pol = parse_policy(
        {
            "on": {
                "suspected": [{"action": "stop_units", "units": [UNIT]}],
                "cleared": [{"action": "start_units", "units": [UNIT]}],
            }
        }
    )
    db = tmp_path / "geoprobe.sqlite"
    suspected = events.make_event(events.SUSPECTED, {"state": "suspect"})
    done = events.cleared_event("suspicion_cleared", suspected["id"])
    for ev in (suspected, done, done):  # a second delivery of the same cleared event
        assert defend.accept(ev, pol, store_path=db)
        defend.respond(ev, pol, store_path=db)
    assert calls(shims) == [f"systemctl stop -- {UNIT}", f"systemctl start -- {UNIT}"]
    rows = sqlite3.connect(db).execute(
        "SELECT verdict, action, status FROM defend_audit WHERE event_id = ? ORDER BY id",
        (done["id"],),
    )
    assert list(rows) == [
        ("cleared", "start_units", "started"),
        ("cleared", "start_units", "ok"),
        ("cleared", "start_units", "skipped"),
    ]
    assert defend.pending(db) == []


def test_a_cleared_event_queued_before_a_crash_is_delivered_again(
    shims: Path, tmp_path: Path
) -> None:
    pol = parse_policy({"on": {"cleared": [{"action": "start_units", "units": [UNIT]}]}})
    db = tmp_path / "geoprobe.sqlite"
    done = events.cleared_event("moved_inside", None)
    assert defend.accept(done, pol, store_path=db)  # then the process died
    assert [e["id"] for e in defend.pending(db)] == [done["id"]]
    results = defend.redeliver(pol, store_path=db)
    assert [(r.action, r.status) for r in results] == [("start_units", "ok")]
    assert calls(shims) == [f"systemctl start -- {UNIT}"] and defend.pending(db) == []


_event = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "type": st.sampled_from([events.SUSPECTED, events.CONFIRMED, events.CLEARED, "x"]),
        "data": st.one_of(
            st.none(),
            st.text(max_size=5),
            st.dictionaries(
                st.sampled_from(["crossing", "suspected_id", "reason"]),
                st.one_of(st.booleans(), st.none(), st.text(max_size=5)),
            ),
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=12))
def test_open_suspicion_reads_any_stored_history(history: list[dict[str, Any]]) -> None:
    found = open_suspicion(history)
    suspected = [str(e["id"]) for e in history if e["type"] == events.SUSPECTED]
    assert found is None or found == suspected[-1]
    answered = [*history, {"type": events.CLEARED, "data": {"suspected_id": found}}]
    assert open_suspicion(answered) is None
