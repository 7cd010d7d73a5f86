"""The path rule shared by the policy loader and the actions; the descriptor-walking resolver."""

from __future__ import annotations

import io
import os
import posixpath
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.cli import main
from geoprobe.cli.env import Environment
from geoprobe.defend.safepath import (
    NAME_MAX,
    PATH_MAX,
    PathRefused,
    checked_path,
    resolve,
)
from geoprobe.errors import InputError
from geoprobe.policy import parse_policy

ROOT_SPELLINGS = [
    "/",
    "//",
    "///",
    "/.",
    "/./",
    "/./..",
    "/..",
    "/../..",
    "/tmp/..",
    "/tmp/../",
    "/etc/ssl/../..",
    "//tmp//..//",
    "/a/./b/../../.",
]


@pytest.mark.parametrize("path", ROOT_SPELLINGS)
def test_every_spelling_of_the_root_is_refused(path: str) -> None:
    with pytest.raises(PathRefused, match="root directory"):
        checked_path(path)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "absolute"),
        ("relative.key", "absolute"),
        ("./k", "absolute"),
        ("~/k", "absolute"),
        ("/etc/k\0", "NUL"),
        ("\0/etc/k", "NUL"),
        ("/etc/\0/..", "NUL"),
        ("/" + "a" * (NAME_MAX + 1), "longer than"),
        ("/a" * (PATH_MAX // 2 + 1), "longer than"),
        ("/\ud800", "encoded"),
    ],
)
def test_malformed_paths_are_refused_in_one_line(path: str, why: str) -> None:
    with pytest.raises(PathRefused, match=why) as exc:
        checked_path(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/etc/k", "/etc/k"),
        ("//etc//k/", "/etc/k"),
        ("/etc/./k", "/etc/k"),
        ("/etc/ssl/../k", "/etc/k"),
        ("/../etc/k", "/etc/k"),
        ("/var/lib/app keys/k", "/var/lib/app keys/k"),
        ("/" + "a" * NAME_MAX, "/" + "a" * NAME_MAX),
    ],
)
def test_paths_are_normalised_before_they_are_checked(path: str, normal: str) -> None:
    assert checked_path(path) == normal


@pytest.mark.parametrize("path", [*ROOT_SPELLINGS, "/k\0x", "k"])
@pytest.mark.parametrize("action", ["wipe", "unmount"])
def test_the_policy_loader_applies_the_same_rule(path: str, action: str) -> None:
    entry: dict[str, object] = {"action": action, "paths": ["/ok", path]}
    if action == "wipe":
        entry["recursive"] = True
    with pytest.raises(InputError) as exc:
        parse_policy({"on": {"confirmed_crossing": [entry]}}, file="p.toml")
    assert "field 'paths'" in str(exc.value) and "\n" not in str(exc.value)


def test_the_loader_keeps_the_normal_form() -> None:
    pol = parse_policy(
        {"on": {"unknown": [{"action": "wipe", "paths": ["//etc/app/../app/k"]}]}}, file="p"
    )
    assert pol.actions_for("unknown")[0].options["paths"] == ["/etc/app/k"]


@pytest.mark.parametrize(
    ("written", "shown"),
    [("/k\\u0000x", "NUL byte"), ("/tmp/..", "root directory"), ("/.", "root directory")],
)
def test_policy_check_rejects_nul_and_root_with_one_line(
    tmp_path: Path, written: str, shown: str
) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text(
        f'[[on.confirmed_crossing]]\naction = "wipe"\npaths = ["{written}"]\nrecursive = true\n'
    )
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, state_dir=tmp_path / "state")
    assert main(["policy", "check", str(pol)], env=env) == 3
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and str(pol) in lines[0] and shown in lines[0]
    assert "field 'paths'" in lines[0]


# --- fuzz ---------------------------------------------------------------------------------------

COMPONENTS = st.sampled_from(["", ".", "..", "a", "bb", "\0", "é", " ", "...", "a\0b"])
PATHS = st.one_of(
    st.lists(COMPONENTS, max_size=8).map("/".join),
    st.lists(COMPONENTS, max_size=8).map(lambda c: "/" + "/".join(c)),
    st.text(max_size=40),
)


@settings(max_examples=600, deadline=None)
@given(PATHS)
def test_fuzz_checked_path_matches_posix_normalisation(path: str) -> None:
    """Accepted exactly when absolute, NUL-free and not the root; the result is the normal form."""
    reference = posixpath.normpath("/" + path.lstrip("/"))
    try:
        result = checked_path(path)
    except PathRefused as exc:
        assert "\n" not in str(exc)
        assert not path.startswith("/") or "\0" in path or reference == "/" or _too_long(path)
        return
    assert path.startswith("/") and "\0" not in path and reference != "/"
    assert result == reference
    assert checked_path(result) == result
    assert not result.startswith("//") and all(
        c not in ("", ".", "..") for c in result.split("/")[1:]
    )


def _too_long(path: str) -> bool:
    try:
        raw = os.fsencode(path)
    except UnicodeError:
        return True
    return len(raw) > PATH_MAX or any(len(c) > NAME_MAX for c in raw.split(b"/"))


@settings(max_examples=300, deadline=None)
@given(st.lists(PATHS, min_size=1, max_size=3), st.booleans())
def test_fuzz_policy_paths_load_or_fail_in_one_line(paths: list[str], recursive: bool) -> None:
    raw = {"on": {"suspected": [{"action": "wipe", "paths": paths, "recursive": recursive}]}}
    try:
        pol = parse_policy(raw, file="fuzz.toml")
    except InputError as exc:
        assert "\n" not in str(exc) and "fuzz.toml" in str(exc)
        return
    for p in pol.actions_for("suspected")[0].options["paths"]:
        assert checked_path(p) == p and p != "/"


# --- the resolver -------------------------------------------------------------------------------


def test_resolve_reports_a_missing_path_as_absent(tmp_path: Path) -> None:
    res = resolve(str(tmp_path / "no" / "such" / "key"))
    try:
        assert res.st is None and res.path == str(tmp_path / "no" / "such" / "key")
    finally:
        res.close()


def test_resolve_refuses_a_file_used_as_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(PathRefused, match="not a directory"):
        resolve(str(tmp_path / "f" / "k"))


def test_resolve_refuses_a_symlink_loop_without_hanging(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(PathRefused):
        resolve(str(tmp_path / "a"))


def test_resolve_holds_no_descriptor_after_it_returns_or_raises(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        resolve(str(tmp_path / "d" / "k")).close()
        with pytest.raises(PathRefused):
            resolve(str(tmp_path / "loop" / "k"))
    assert len(os.listdir("/proc/self/fd")) == before
