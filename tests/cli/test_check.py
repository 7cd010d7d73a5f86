"""`geoprobe check`: the Nagios plugin's exit codes, status line and cron mode, from replayed
RTTs."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.geo.countries import default_index
from geoprobe.geo.sphere import haversine_km
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement, save_measurements

from .conftest import HookPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "watch"))
from watch_world import LANDMARKS, rtts_at

FRANKFURT = (50.11, 8.68)
MADRID = (40.42, -3.70)
BERLIN = (52.52, 13.40)
STRASBOURG = (48.58, 7.75)
PERF = re.compile(r"^GEOPROBE (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| (\S+=\S+ ?)+)?$")


@pytest.fixture(scope="module")
def catalogue_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    idx = default_index()
    lms = [
        Landmark(
            id=lid, lat=lat, lon=lon, country=idx.code_at(lat, lon), address="127.0.0.1", udp_port=7
        )
        for lid, lat, lon in LANDMARKS
    ]
    rtts = [
        (a, b, 1.5 * float(haversine_km(alat, alon, blat, blon)) / 100 + 0.8)
        for a, alat, alon in LANDMARKS
        for b, blat, blon in LANDMARKS
        if a < b
    ]
    p = tmp_path_factory.mktemp("cat") / "catalogue.json"
    Catalogue(landmarks=lms, rtts=rtts, name="synthetic-europe").save(p)
    return p


def replay(tmp: Path, at: tuple[float, float], seed: int = 0, keep: int | None = None) -> Path:
    r = rtts_at(*at, np.random.default_rng(seed))
    ms = [Measurement(landmark_id=k, method="udp", rtts_ms=[v], sent=1) for k, v in r.items()]
    ms = ms[:keep] if keep is not None else ms
    p = tmp / f"m-{at[0]}-{at[1]}-{seed}-{keep}.json"
    save_measurements(p, ms)
    return p


def check(tmp: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    env = Environment(stdout=out, stderr=io.StringIO(), state_dir=tmp / "default-state")
    code = main(["check", *args], env=env)
    text = out.getvalue()
    assert text.count("\n") == 1 and PERF.match(text.strip()), text
    return code, text.strip()


def test_inside_the_allowed_country_is_ok(catalogue_file: Path, tmp_path: Path) -> None:
    code, line = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--allow",
        "DE",
        "--replay",
        str(replay(tmp_path, FRANKFURT)),
    )
    assert code == 0 and line.startswith("GEOPROBE OK - DE (p=")
    perf = dict(kv.split("=", 1) for kv in line.split(" | ")[1].split())
    # Decided by the probability rule: its threshold is the policy's confidence; no critical
    # range, since with the sound basis a probability alone never makes the state critical.
    assert perf["p_allowed"].endswith(";0.9:;;0;1")
    assert float(perf["p_allowed"].split(";")[0]) >= 0.9
    assert perf["landmarks"].startswith(f"{len(LANDMARKS)};3:")


def test_confidently_outside_is_critical(catalogue_file: Path, tmp_path: Path) -> None:
    code, line = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--allow",
        "DE,AT",
        "--replay",
        str(replay(tmp_path, MADRID)),
    )
    assert code == 2 and line.startswith("GEOPROBE CRITICAL - outside AT,DE")


def test_groups_expand(catalogue_file: Path, tmp_path: Path) -> None:
    code, _ = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--allow",
        "EU",
        "--replay",
        str(replay(tmp_path, MADRID)),
    )
    assert code == 0


def test_straddling_the_border_is_a_warning(catalogue_file: Path, tmp_path: Path) -> None:
    code, line = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--allow",
        "DE",
        "--replay",
        str(replay(tmp_path, STRASBOURG)),
    )
    assert code == 1 and "straddles the border" in line


def test_too_few_landmarks_is_a_warning(catalogue_file: Path, tmp_path: Path) -> None:
    code, line = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--allow",
        "DE",
        "--min-landmarks",
        "5",
        "--replay",
        str(replay(tmp_path, FRANKFURT, keep=4)),
    )
    assert code == 1 and "only 4 landmarks answered (need 5)" in line


def test_policy_gives_the_allowed_set_and_thresholds(catalogue_file: Path, tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text('[jurisdiction]\nallow = ["ES", "PT"]\n\n[confidence]\nmin_probability = 0.8\n')
    code, _ = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--policy",
        str(pol),
        "--replay",
        str(replay(tmp_path, MADRID)),
    )
    assert code == 0
    code, _ = check(
        tmp_path,
        "--landmarks",
        str(catalogue_file),
        "--policy",
        str(pol),
        "--replay",
        str(replay(tmp_path, FRANKFURT)),
    )
    assert code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--allow"],  # option without its value
        ["--allow", "DE", "--no-such-option"],
        ["--allow", "DE", "--samples", "zero"],
    ],
)
def test_usage_errors_are_unknown_not_critical(tmp_path: Path, args: list[str]) -> None:
    code, line = check(tmp_path, *args)
    assert code == 3 and line.startswith("GEOPROBE UNKNOWN - usage:")


def test_bad_input_is_unknown(catalogue_file: Path, tmp_path: Path) -> None:
    m = str(replay(tmp_path, FRANKFURT))
    code, line = check(tmp_path, "--landmarks", str(catalogue_file), "--replay", m)
    assert code == 3 and "--allow" in line
    code, line = check(
        tmp_path, "--landmarks", str(catalogue_file), "--allow", "XX,DE", "--replay", m
    )
    assert code == 3 and "XX" in line
    bad = tmp_path / "bad.toml"
    bad.write_text("[jurisdiction]\nallow = 7\n")
    code, line = check(
        tmp_path, "--landmarks", str(catalogue_file), "--policy", str(bad), "--replay", m
    )
    assert code == 3 and "bad.toml" in line
    code, line = check(
        tmp_path, "--landmarks", str(tmp_path / "missing.json"), "--allow", "DE", "--replay", m
    )
    assert code == 3 and "missing.json" in line
    silent = tmp_path / "silent.json"
    save_measurements(
        silent, [Measurement(landmark_id="lm01", method="udp", sent=3, failure="timeout")]
    )
    code, line = check(
        tmp_path, "--landmarks", str(catalogue_file), "--allow", "DE", "--replay", str(silent)
    )
    assert code == 3 and "no landmark answered" in line


def test_cron_mode_reports_a_migration_since_the_last_run(
    catalogue_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    base = ["--landmarks", str(catalogue_file), "--allow", "DE", "--state", str(state)]
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, 1)))
    assert code == 0 and "moved_km=" not in line  # first run: nothing to compare with
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, 2)))
    assert code == 0 and "migrated" not in line
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, BERLIN, 3)))
    assert code == 1 and re.search(r"migrated \d+ km from DE to DE since .*\(no crossing\)", line)
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 4)))
    assert code == 2 and re.search(r"migrated \d+ km from DE to (ES|unknown) since", line)
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 5)))
    assert code == 2 and "migrated" not in line  # still outside; the move was reported once

    from geoprobe.store import default_path
    from geoprobe.watch.state import WatchStore

    with WatchStore(default_path(state)) as st:
        assert st.count_fixes() == 5
        assert [e["data"]["crossing"] for e in st.events()] == [False, True]


@pytest.mark.slow
def test_cron_mode_against_a_live_testbed(tmp_path: Path) -> None:
    """Real probing: OK at Frankfurt, then CRITICAL with the migration after the testbed moves to
    Madrid."""
    import os
    import signal
    import subprocess
    import time

    env = dict(
        os.environ,
        GEOPROBE_RUNTIME_DIR=str(tmp_path / "run"),
        GEOPROBE_STATE_DIR=str(tmp_path / "st"),
    )
    cat = tmp_path / "catalogue.json"
    tb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoprobe",
            "testbed",
            "run",
            "--at-server",
            "Frankfurt",
            "--catalogue",
            str(cat),
            "--name",
            "check-test",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not cat.exists():
            assert time.monotonic() < deadline and tb.poll() is None, "testbed did not start"
            time.sleep(0.2)

        def run_check() -> tuple[int, str]:
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "geoprobe",
                    "check",
                    "--landmarks",
                    str(cat),
                    "--allow",
                    "DE",
                    "--state",
                    str(tmp_path / "state"),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert p.stderr.count("Traceback") == 0, p.stderr
            return p.returncode, p.stdout.strip()

        code, line = run_check()
        assert code == 0 and line.startswith("GEOPROBE OK - DE"), line
        subprocess.run(
            [
                sys.executable,
                "-m",
                "geoprobe",
                "testbed",
                "move",
                "--to-server",
                "Madrid",
                "--name",
                "check-test",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        code, line = run_check()
        assert code == 2 and re.search(r"migrated \d+ km from DE to (ES|unknown) since", line), line
        assert PERF.match(line)
    finally:
        tb.send_signal(signal.SIGTERM)
        tb.wait(30)


def test_cron_mode_runs_the_policy_once_per_migration(
    catalogue_file: Path, tmp_path: Path, hook_policy: HookPolicy
) -> None:
    import json

    got, policy = hook_policy.got, hook_policy.policy
    state = tmp_path / "state"
    base = ["--landmarks", str(catalogue_file), "--policy", str(policy), "--state", str(state)]
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, FRANKFURT, 1)))[0] == 0
    # A dry run reports the crossing but runs nothing.
    dry_state = tmp_path / "dry"
    dry = ["--landmarks", str(catalogue_file), "--policy", str(policy), "--state", str(dry_state)]
    check(tmp_path, *dry, "--replay", str(replay(tmp_path, FRANKFURT, 1)))
    assert check(tmp_path, *dry, "--dry-run", "--replay", str(replay(tmp_path, MADRID, 2)))[0] == 2
    assert not got.exists()
    # The real run: the hook gets the confirmed crossing's CloudEvent on stdin, once.
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 2)))
    assert code == 2 and "migrated" in line
    (ev,) = [json.loads(x) for x in hook_policy.events()]
    assert ev["type"] == "io.geoprobe.migration.confirmed" and ev["data"]["crossing"] is True
    assert ev["data"]["from"] == "DE"
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 3)))[0] == 2
    assert len(hook_policy.events()) == 1


def test_bad_input_also_says_so_on_stderr(catalogue_file: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, state_dir=tmp_path)
    code = main(["check", "--landmarks", str(tmp_path / "missing.json"), "--allow", "DE"], env=env)
    assert code == 3 and out.getvalue().startswith("GEOPROBE UNKNOWN - ")
    assert err.getvalue().count("\n") == 1 and "missing.json" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def nagios_state_of(perf: str) -> int:
    """The state a monitoring system derives from perfdata thresholds alone ("a:" alerts below
    a)."""
    worst = 0
    for item in perf.split():
        _label, value = item.split("=", 1)
        fields = value.split(";")
        v = float(fields[0])
        for level, rng in (
            (1, fields[1] if len(fields) > 1 else ""),
            (2, fields[2] if len(fields) > 2 else ""),
        ):
            if rng and v < float(rng.rstrip(":")):
                worst = max(worst, level)
    return worst


@pytest.mark.parametrize("basis", ["sound", "calibrated"])
@pytest.mark.parametrize(
    ("at", "allow"),
    [(FRANKFURT, "DE"), (MADRID, "DE"), (STRASBOURG, "DE"), (STRASBOURG, "FR"), (MADRID, "ES")],
)
def test_perfdata_thresholds_never_contradict_the_state(
    catalogue_file: Path, tmp_path: Path, at: tuple[float, float], allow: str, basis: str
) -> None:
    args = ["--landmarks", str(catalogue_file), "--allow", allow, "--basis", basis]
    code, line = check(tmp_path, *args, "--replay", str(replay(tmp_path, at)))
    text, perf = line.split(" | ")
    assert ";" not in text and "|" not in text
    implied = nagios_state_of(perf)
    assert implied <= code, line
    if "p_allowed=" in perf and perf.split("p_allowed=")[1].split()[0].split(";")[1]:
        assert implied == code, line  # decided by the probability rule: the thresholds say it all


def test_a_state_dir_that_cannot_be_created_is_unknown(
    catalogue_file: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, state_dir=tmp_path)
    args = ["--landmarks", str(catalogue_file), "--allow", "DE"]
    m = str(replay(tmp_path, FRANKFURT))
    code = main(["check", *args, "--state", str(blocker / "state"), "--replay", m], env=env)
    line = out.getvalue()
    assert code == 3 and line.count("\n") == 1, line
    assert line.startswith("GEOPROBE UNKNOWN - state store ") and "a-file" in line
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()


def test_a_move_ending_astride_the_border_is_crossing_null_in_cron_mode(
    catalogue_file: Path, tmp_path: Path
) -> None:
    """The same move reads the same in cron mode as in the watch: astride is crossing unknown."""
    import json

    got = tmp_path / "unknown-got.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {got}\necho >> {got}\n")
    hook.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[jurisdiction]\nallow = ["DE"]\n\n[[on.unknown]]\naction = "hook"\ncommand = ["{hook}"]\n'
    )
    state = tmp_path / "state"
    base = ["--landmarks", str(catalogue_file), "--policy", str(policy), "--state", str(state)]
    assert check(tmp_path, *base, "--replay", str(replay(tmp_path, BERLIN, 1)))[0] == 0
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, STRASBOURG, 2)))
    assert code == 1 and "crossing unknown" in line and "straddles the border" in line
    (ev,) = [json.loads(x) for x in got.read_text().splitlines() if x.strip()]
    d = ev["data"]
    assert d["crossing"] is None and d["from"] == "DE" and d["source"] == "check"
    assert d["p_allowed"] == d["jurisdiction"]["p_allowed"] and d["proof"] is False


def test_a_first_run_outside_is_a_crossing_from_nowhere(
    catalogue_file: Path, tmp_path: Path, hook_policy: HookPolicy
) -> None:
    import json

    state = tmp_path / "state"
    base = ["--landmarks", str(catalogue_file), "--policy", str(hook_policy.policy)]
    base += ["--state", str(state)]
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 1)))
    assert code == 2 and "never seen inside" in line
    (ev,) = [json.loads(x) for x in hook_policy.events()]
    assert ev["data"]["crossing"] is True and ev["data"]["from"] is None
    assert ev["data"]["proof"] is True and ev["data"]["signals"] == ["jurisdiction"]
    # Still there at the next run: reported once, not again.
    code, line = check(tmp_path, *base, "--replay", str(replay(tmp_path, MADRID, 2)))
    assert code == 2 and "never seen inside" not in line and len(hook_policy.events()) == 1
