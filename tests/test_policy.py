"""The policy model: the acceptance policy loads as written; every malformed field is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoprobe.errors import InputError
from geoprobe.geo.groups import expand
from geoprobe.policy import DEFAULT_TIMEOUTS, load_policy, parse_policy, parse_size
from tests.acceptance import acceptance_policy


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_acceptance_policy_loads_as_written(tmp_path: Path) -> None:
    url = "http://127.0.0.1/geoprobe"  # loaded only, never posted to
    pol = load_policy(write(tmp_path, acceptance_policy(tmp_path / "accept", url)))
    assert pol.allow == {"DE"}
    specs = pol.actions_for("confirmed_crossing")
    assert [s.action for s in specs] == ["wipe", "hook", "webhook"]
    assert [s.index for s in specs] == [0, 1, 2]
    assert specs[0].options["paths"] == [str(tmp_path / "accept" / "secret.key")]
    assert specs[1].options["command"] == [str(tmp_path / "accept" / "hook.sh")]
    assert specs[2].options["url"] == url
    assert specs[1].timeout == DEFAULT_TIMEOUTS["hook"]
    assert pol.actions_for("suspected") == [] and pol.actions_for("unknown") == []


def test_groups_expand_and_thresholds_and_timeouts(tmp_path: Path) -> None:
    pol = load_policy(
        write(
            tmp_path,
            """
[jurisdiction]
allow = ["eu", "CH"]
[confidence]
min_probability = 0.99
min_landmarks = 5
[defaults]
timeout = 7
[[on.suspected]]
action = "delay"
memory = "64M"
cpu = 0.25
[[on.suspected]]
action = "syslog"
timeout = 2.5
""",
        )
    )
    assert pol.allow == expand(["EU"]) | {"CH"}
    assert {"DE", "FR", "CH", "IE"} <= pol.allow and "GB" not in pol.allow
    assert pol.allow_as_written == ("EU", "CH")
    assert (pol.min_probability, pol.min_landmarks) == (0.99, 5)
    delay, syslog = pol.actions_for("suspected")
    assert delay.options["memory"] == 64 << 20 and delay.timeout == 7
    assert syslog.timeout == 2.5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            (
                '[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["/k"]\n'
                '[[on.confirmed_crossing]]\naction = "hook"\ncommand = "/bin/true"\n'
            ),
            "on.confirmed_crossing[1]: field 'command': must be a list of strings",
        ),
        (
            '[[on.confirmed_crossing]]\naction = "explode"\n',
            "field 'action': unknown action 'explode'",
        ),
        (
            '[[on.confirmed_crossing]]\naction = "wipe"\n',
            "on.confirmed_crossing[0]: field 'paths': missing",
        ),
        (
            '[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["relative.key"]\n',
            "absolute paths",
        ),
        (
            '[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["/k"]\npath = 3\n',
            "field 'path': not a field",
        ),
        (
            '[[on.confirmed_crossing]]\naction = "hook"\ncommand = ["/x"]\ntimeout = -1\n',
            "field 'timeout'",
        ),
        ('[[on.moved]]\naction = "syslog"\n', "on.moved: unknown verdict 'moved'"),
        ('[[on.suspected]]\naction = "webhook"\nurl = "ftp://x"\n', "field 'url'"),
        ('[[on.suspected]]\naction = "delay"\nmemory = "lots"\n', "field 'memory'"),
        ('[[on.suspected]]\naction = "stop_units"\nunits = ["--now"]\n', "field 'units'"),
        ('[[on.suspected]]\naction = "unmount"\n', "needs 'paths' or 'luks'"),
        ("[confidence]\nmin_probability = 1.5\n", "field 'min_probability'"),
        ('[jurisdiction]\nallow = ["DE", "XX"]\n', "jurisdiction: field 'allow'"),
        ('[jurisdicton]\nallow = ["DE"]\n', "field 'jurisdicton': unknown key"),
        ("on = 3\n", "entry on: must be a table"),
        ("[[on.suspected]\n", "not valid TOML"),
    ],
)
def test_malformed_policy_names_file_entry_and_field(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(InputError) as exc:
        load_policy(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read policy"):
        load_policy(tmp_path / "nope.toml")


def test_parse_policy_accepts_mapping_without_file() -> None:
    pol = parse_policy({"on": {"unknown": [{"action": "poweroff", "force": True}]}})
    assert pol.allow == set() and pol.actions_for("unknown")[0].options == {"force": True}


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("256M", 256 << 20),
        ("1G", 1 << 30),
        ("512MiB", 512 << 20),
        ("4096", 4096),
        (1000, 1000),
        ("1.5K", 1536),
    ],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "12Q", "-1M", 0, True, "M"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_contrib_example_is_valid_and_redacts_tokens() -> None:
    example = Path(__file__).resolve().parents[1] / "contrib" / "policy.example.toml"
    pol = load_policy(example)
    assert {"DE", "NO", "CH"} <= pol.allow
    hook = next(s for s in pol.actions_for("suspected") if s.action == "webhook")
    assert "Bearer" in hook.options["headers"]["Authorization"]
    assert "Bearer" not in hook.describe() and "Bearer" not in str(pol.summary())


_ACTION = "[[on.unknown]]\n"


@pytest.mark.parametrize(
    "text, where",
    [
        (_ACTION + 'action = ["wipe"]\n', "'action': must be the name of an action"),
        (_ACTION + "action = { name = 'wipe' }\n", "'action': must be the name of an action"),
        (_ACTION + 'action = "syslog"\ntimeout = ' + "9" * 400 + "\n", "'timeout'"),
        (_ACTION + 'action = "syslog"\nfacility = ["kern"]\n', "'facility'"),
        (
            _ACTION + 'action = "webhook"\nurl = "http://h"\nretries = ' + "9" * 40 + "\n",
            "'retries'",
        ),
        (_ACTION + 'action = "wipe"\npaths = ["/k"]\npasses = 1000000\n', "'passes'"),
        (_ACTION + 'action = "delay"\nmemory = "' + "9" * 400 + 'G"\n', "'memory'"),
        (_ACTION + 'action = "delay"\nmemory = "' + "9" * 60 + 'G"\n', "'memory'"),
        (_ACTION + 'action = "delay"\nmemory = ' + "9" * 400 + "\n", "'memory'"),
        (_ACTION + 'action = "delay"\nrate = nan\n', "'rate'"),
        (_ACTION + 'action = "delay"\nrate = inf\n', "'rate'"),
        ("[confidence]\nmin_landmarks = " + "9" * 300 + "\n", "'min_landmarks'"),
        ("[confidence]\nmin_probability = " + "9" * 400 + "\n", "'min_probability'"),
        ("[defaults]\ntimeout = " + "9" * 4000 + "\n", "'timeout'"),
        ("x = " + "9" * 5000 + "\n", "not acceptable TOML"),
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deep"),
        ("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested too deep"),
    ],
)
def test_hostile_values_are_one_line_naming_the_field(
    tmp_path: Path, text: str, where: str
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_policy(p)
    line = str(exc.value)
    assert line.startswith(str(p)) and where in line
    assert "\n" not in line and len(line) < 400


def test_non_utf8_and_oversized_policies_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_bytes(b"# \xff\xfe\n[jurisdiction]\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_policy(p)
    p.write_bytes(b"#" * (2 << 20))
    with pytest.raises(InputError, match="refused"):
        load_policy(p)


def test_sizes_stay_within_bounds() -> None:
    assert parse_size("16T") == 16 << 40
    for bad in ("17T", 1 << 45, "9" * 30):
        with pytest.raises(ValueError):
            parse_size(bad)
