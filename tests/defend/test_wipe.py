"""wipe: real files on the real filesystem, checked through names and descriptors kept aside.

The attacks run for real: the ``nobody`` user (tests/defend/racer.py, started with a descriptor
of the one directory it may write) swaps entries of the tree for symlinks into a root-owned tree
of canary files while root wipes; no canary may change.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from geoprobe.defend import runner, wipe
from geoprobe.defend.base import ActionContext, ActionFailed, ActionTimeout, Deadline
from geoprobe.defend.safepath import trusted_owners, unsafe_because
from geoprobe.policy import ActionSpec

from .conftest import spec

RACER = (Path(__file__).parent / "racer.py").read_text()
AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="the attacks pit the nobody user against a wipe run as root"
)

SECRET = b"-----BEGIN PRIVATE KEY-----\n" + bytes(range(256)) * 40


def _mostly_different(a: bytes, b: bytes) -> bool:
    """Random bytes match a fixed pattern at ~1/256 of positions; a failed overwrite at all."""
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b, strict=True)) < len(a) * 0.02


def test_overwrites_before_unlink_seen_through_hard_link_and_open_fd(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(SECRET)
    link = tmp_path / "backup-name"
    os.link(key, link)
    fd = os.open(key, os.O_RDONLY)
    try:
        out = wipe.run(spec("wipe", paths=[str(key)]), ctx())
        assert not key.exists()
        through_fd = os.pread(fd, len(SECRET) + 10, 0)
    finally:
        os.close(fd)
    assert len(through_fd) == len(SECRET)
    assert _mostly_different(through_fd, SECRET)
    assert link.read_bytes() == through_fd  # same inode, other name survives: overwritten content
    assert any("hard link" in w for w in out.warnings)
    (f,) = out.data["files"]
    assert f["removed"] and f["bytes"] == len(SECRET) and f["passes"] == 1


def test_multiple_passes_and_absent_files(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    a = tmp_path / "a.key"
    a.write_bytes(b"x" * 5000)
    out = wipe.run(spec("wipe", paths=[str(a), str(tmp_path / "gone.key")], passes=3), ctx())
    files = {Path(f["path"]).name: f for f in out.data["files"]}
    assert files["a.key"]["passes"] == 3 and files["a.key"]["removed"]
    assert files["gone.key"]["absent"] and "already absent" in out.detail
    assert not a.exists()


def test_expired_deadline_never_unlinks_unwiped_file(tmp_path: Path) -> None:
    key = tmp_path / "big.key"
    key.write_bytes(SECRET)
    with pytest.raises(ActionTimeout):
        wipe.wipe_file(key, Deadline.after(0.0))
    assert key.read_bytes() == SECRET  # still there: better kept than "deleted" unwiped


def test_recursive_wipe_does_not_follow_symlinks_out(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    keys = tmp_path / "keys"
    (keys / "sub").mkdir(parents=True)
    (keys / "one").write_bytes(b"1" * 100)
    (keys / "sub" / "two").write_bytes(b"2" * 100)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    (keys / "escape").symlink_to(outside)
    out = wipe.run(spec("wipe", paths=[str(keys)], recursive=True), ctx())
    assert not keys.exists()
    assert outside.read_bytes() == b"keep me"
    assert out.detail == "wiped 2 file(s), 200 bytes; removed 1 symlink(s) without following them"
    assert out.data["symlinks_removed"] == [str(keys / "escape")]
    assert out.data["skipped"] == []


def test_directory_without_recursive_and_fifo_fail_but_other_paths_are_wiped(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    good = tmp_path / "good.key"
    good.write_bytes(b"k" * 10)
    with pytest.raises(ActionFailed) as exc:
        wipe.run(spec("wipe", paths=[str(d), str(fifo), str(good)]), ctx())
    assert "is a directory" in str(exc.value) and "not a regular file" in str(exc.value)
    assert not good.exists() and fifo.exists() and d.exists()


MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,data=journal
30 22 0:40 / /srv rw,relatime shared:2 - btrfs /dev/sdb1 rw,space_cache
31 22 0:41 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u
32 22 0:42 / /run/keys rw,nosuid - tmpfs tmpfs rw,size=1024k
33 30 0:43 / /srv/with\\040space rw - xfs /dev/sdc rw
"""


def test_caveats_from_mount_table(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    table = wipe.mounts(str(mi))
    assert [m.fstype for m in table] == ["ext4", "btrfs", "overlay", "tmpfs", "xfs"]
    assert table[4].mountpoint == "/srv/with space"
    assert wipe.mount_of("/srv/a/b.key", table).fstype == "btrfs"  # type: ignore[union-attr]
    assert wipe.mount_of("/srv/with space/k", table).fstype == "xfs"  # type: ignore[union-attr]
    assert wipe.mount_of("/srvx/k", table).fstype == "ext4"  # type: ignore[union-attr]

    def joined(path: str, nlink: int = 1) -> str:
        return " | ".join(wipe.caveats(path, nlink, table))

    assert "copy-on-write" in joined("/srv/k")
    assert "overlayfs" in joined("/var/lib/docker/overlay2/x/merged/etc/k")
    assert "data=journal" in joined("/etc/k")
    assert "reflink" in joined("/srv/with space/k")
    assert "copy-on-write" not in joined("/run/keys/k") and "journal" not in joined("/run/keys/k")
    assert "2 other hard link" in joined("/run/keys/k", nlink=3)


# --- named paths: symlinks and spellings -------------------------------------------------------


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh directory whose every ancestor only root or this user can change.

    tmp_path lies under the world-writable /tmp, which a followed symlink must never pass through,
    so the tests that follow a link work under the home directory instead.
    """
    home = Path.home()
    for d in (home, *home.parents):
        why = unsafe_because(os.stat(d), trusted_owners())
        if why:
            pytest.skip(f"no private directory to test in: {d} is {why}")
    d = Path(tempfile.mkdtemp(prefix="geoprobe-wipe-", dir=home))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_named_symlink_through_private_dirs_wipes_target_and_names_it(
    private_dir: Path, ctx: Callable[..., ActionContext]
) -> None:
    (private_dir / "keys").mkdir()
    target = private_dir / "keys" / "real.key"
    target.write_bytes(SECRET)
    link = private_dir / "current.key"
    link.symlink_to("keys/real.key")
    out = wipe.run(spec("wipe", paths=[str(link)]), ctx())
    assert not link.is_symlink() and not target.exists()
    (f,) = out.data["files"]
    assert f["path"] == str(link) and f["target"] == str(target) and f["removed"]
    assert out.data["followed"] == {str(link): str(target)}
    assert f"followed {link} -> {target}" in out.detail
    assert out.data["symlinks_removed"] == [str(link)]


def test_symlink_into_a_directory_others_can_write_is_refused(
    private_dir: Path, ctx: Callable[..., ActionContext]
) -> None:
    drop = private_dir / "drop"
    drop.mkdir()
    drop.chmod(0o777)
    target = drop / "real.key"
    target.write_bytes(SECRET)
    link = private_dir / "current.key"
    link.symlink_to(target)
    with pytest.raises(ActionFailed) as exc:
        wipe.run(spec("wipe", paths=[str(link)]), ctx())
    assert target.read_bytes() == SECRET and link.is_symlink()
    assert f"refusing to follow {link} -> {target}: {drop} is writable by group or others" in str(
        exc.value
    )
    assert exc.value.data["skipped"][0]["path"] == str(link)


def test_symlink_in_sticky_world_writable_dir_is_refused_even_when_ours(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "real.key"
    target.write_bytes(SECRET)
    (shared / "key.pem").symlink_to(target)
    with pytest.raises(ActionFailed, match="sticky does not help") as exc:
        wipe.run(spec("wipe", paths=[str(shared / "key.pem")]), ctx())
    assert target.read_bytes() == SECRET
    assert f"{shared}/key.pem -> {target}" in str(exc.value)


@pytest.mark.parametrize(
    "link_to", ["/", "/.", "..", "../../../../../../../..", "/etc/..", "/proc/self/root"]
)
def test_a_link_to_the_root_is_never_wiped(
    private_dir: Path, ctx: Callable[..., ActionContext], link_to: str
) -> None:
    (private_dir / "keys").symlink_to(link_to)
    with pytest.raises(ActionFailed):
        wipe.run(spec("wipe", paths=[str(private_dir / "keys")], recursive=True), ctx())
    assert Path("/etc/passwd").exists() and (private_dir / "keys").is_symlink()


@pytest.mark.parametrize(
    "path", ["/", "/.", "/tmp/..", "//", "/./..", "///", "/../..", "relative", "/k\x00y", ""]
)
def test_run_time_refuses_what_the_loader_refuses(
    ctx: Callable[..., ActionContext], path: str
) -> None:
    raw = ActionSpec("wipe", "confirmed_crossing", 0, 5.0, {"paths": [path], "recursive": True})
    with pytest.raises(ActionFailed) as exc:
        wipe.run(raw, ctx())
    assert exc.value.data["files"] == [] and exc.value.data["symlinks_removed"] == []
    assert "\n" not in str(exc.value)


def test_planted_hard_link_is_not_overwritten_without_protected_hardlinks(
    tmp_path: Path, ctx: Callable[..., ActionContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = tmp_path / "passwd"
    canary.write_bytes(SECRET)
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    os.link(canary, drop / "key.pem")
    monkeypatch.setattr(wipe, "_protected_hardlinks", lambda: False)
    with pytest.raises(ActionFailed, match="hard link planted"):
        wipe.run(spec("wipe", paths=[str(drop)], recursive=True), ctx())
    assert canary.read_bytes() == SECRET


# --- the unprivileged attacker -----------------------------------------------------------------


def _nobody() -> tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _others_may_run(path: str) -> bool:
    real = Path(os.path.realpath(path))
    if not real.is_file() or not os.stat(real).st_mode & 0o001:
        return False
    return all(os.stat(d).st_mode & 0o001 for d in real.parents)


def _python_for_nobody() -> str:
    """An interpreter nobody may run (this one may live in root's home); the racer needs no more."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin")):
        if candidate and _others_may_run(candidate):
            return candidate
    pytest.skip("no Python interpreter that the nobody user may run")


class Attacker:
    """tests/defend/racer.py run as nobody, holding a descriptor of ``directory`` only."""

    def __init__(self, directory: Path, mode: str, *args: str) -> None:
        python = _python_for_nobody()
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        uid, gid = _nobody()
        self.proc = subprocess.Popen(
            [python, "-I", "-S", "-c", RACER, mode, str(self.fd), *args],
            user=uid,
            group=gid,
            extra_groups=[],
            pass_fds=(self.fd,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert self.stdout.readline().strip() == "ready"

    def command(self, cmd: str, name: str, target: str | Path) -> str:
        self.stdin.write(f"{cmd}\t{name}\t{target}\n")
        self.stdin.flush()
        return self.stdout.readline().strip()

    def finish(self) -> str:
        try:
            self.stdin.close()
            out = self.stdout.read().strip()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.fd)
        return out


def _canaries(root: Path, n: int, *names: str) -> dict[Path, bytes]:
    """A root-owned tree the attacker can point at but never write.

    It holds ``c000``... and files named as those inside the wiped tree's directories, so that a
    walk that re-resolved a swapped path would find them.
    """
    victim = root / "victim"
    victim.mkdir(mode=0o755)
    out = {}
    for i, name in enumerate([*names, *(f"c{i:03d}" for i in range(n))]):
        p = victim / name
        p.write_bytes(f"canary {i}\n".encode() * 40)
        p.chmod(0o644)
        out[p] = p.read_bytes()
    return out


def _untouched(canaries: dict[Path, bytes]) -> None:
    victim = next(iter(canaries)).parent
    assert sorted(victim.iterdir()) == sorted(canaries)
    for p, data in canaries.items():
        assert p.read_bytes() == data, f"{p} was touched"


def _owned_dir(path: Path, uid: int, gid: int) -> Path:
    path.mkdir()
    os.chown(path, uid, gid)
    return path


def _root_file(path: Path, size: int = 100) -> None:
    path.write_bytes(SECRET[:size])
    path.chmod(0o600)


@AS_ROOT
def test_swaps_at_every_step_of_the_walk_never_reach_outside(
    tmp_path: Path, ctx: Callable[..., ActionContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: nobody swaps each entry for a symlink right before root opens it.

    ``a*`` directories and ``f*`` files are swapped between the walk's lstat and its open;
    each ``b*`` directory is swapped while the walk is inside it (at its second file).
    """
    uid, gid = _nobody()
    canaries = _canaries(tmp_path, 100, "k", "x0", "x1", "x2")
    victim = tmp_path / "victim"
    tree = _owned_dir(tmp_path / "app", uid, gid)
    for i in range(100):
        _root_file(_owned_dir(tree / f"a{i:03d}", uid, gid) / "k")
        _root_file(tree / f"f{i:03d}")
    b_dirs = {}
    for i in range(50):
        d = _owned_dir(tree / f"b{i:03d}", uid, gid)
        for x in ("x0", "x1", "x2"):
            _root_file(d / x)
        b_dirs[(d.stat().st_dev, d.stat().st_ino)] = d.name
    tree_id = (tree.stat().st_dev, tree.stat().st_ino)
    attacker = Attacker(tree, "serve")
    answers: list[str] = []
    real_open = os.open

    def racing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and isinstance(path, str):
            where = os.fstat(dir_fd)
            ino = (where.st_dev, where.st_ino)
            if ino == tree_id and path[0] in "af":
                target = victim if path[0] == "a" else victim / f"c{int(path[1:]):03d}"
                answers.append(attacker.command("swap", path, target))
            elif ino in b_dirs and path == "x1":
                answers.append(attacker.command("swap", b_dirs[ino], victim))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)
    try:
        with pytest.raises(ActionFailed) as exc:
            wipe.run(spec("wipe", paths=[str(tree)], recursive=True), ctx(timeout=120))
    finally:
        monkeypatch.undo()
        attacker.finish()

    assert answers == ["ok"] * 250  # every swap happened, done by nobody
    assert os.readlink(tree / "a000") == str(victim) and (tree / "a000.moved" / "k").exists()
    _untouched(canaries)
    data = exc.value.data
    skipped = {s["path"]: s["reason"] for s in data["skipped"]}
    expected = {str(tree / f"{c}{i:03d}") for c in "af" for i in range(100)}
    expected |= {str(tree / f"b{i:03d}") for i in range(50)}
    assert set(skipped) == expected
    assert all("replaced during the wipe" in r for r in skipped.values())
    # the b* files were wiped through the descriptor of their real directory, then renamed
    wiped = {f["path"] for f in data["files"] if f["removed"]}
    assert wiped == {str(tree / f"b{i:03d}" / x) for i in range(50) for x in ("x0", "x1", "x2")}
    assert not list((tree / "b000.moved").iterdir())
    assert "SKIPPED 250" in str(exc.value)


@AS_ROOT
def test_a_concurrent_racer_never_reaches_outside_and_the_result_is_honest(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    """Free-running: nobody flips every entry between itself and a symlink out, round after round.

    Whatever it hits, no canary changes; a result of ``ok`` means the tree is gone, and anything
    left behind is listed as skipped in a ``failed`` result.
    """
    uid, gid = _nobody()
    canaries = _canaries(tmp_path, 40, "k0", "k1", "k2", "k3")
    victim = tmp_path / "victim"
    interfered = swaps = 0
    for r in range(8):
        tree = _owned_dir(tmp_path / f"app{r}", uid, gid)
        pairs = []
        for i in range(40):
            d = _owned_dir(tree / f"d{i:02d}", uid, gid)
            for x in range(4):
                _root_file(d / f"k{x}")
            _root_file(tree / f"f{i:02d}")
            pairs += [f"d{i:02d}={victim}", f"f{i:02d}={victim / f'c{i:03d}'}"]
        attacker = Attacker(tree, "race", *pairs)
        try:
            res = runner.execute(
                spec("wipe", paths=[str(tree)], recursive=True, timeout=120), ctx(timeout=120)
            )
        finally:
            swaps += int(attacker.finish())
        _untouched(canaries)
        assert res.status in ("ok", "failed"), res.detail
        assert (res.status == "ok") == (not res.data["skipped"]), res.detail
        if res.status == "ok":
            assert not tree.exists()
        interfered += bool(res.data["skipped"] or res.data["symlinks_removed"])
    assert swaps > 0 and interfered > 0


@AS_ROOT
def test_symlink_planted_by_another_user_is_not_followed(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    canaries = _canaries(tmp_path, 1)
    (canary,) = canaries
    shared = tmp_path / "shared"  # as /tmp: root's, sticky, world-writable
    shared.mkdir()
    shared.chmod(0o1777)
    attacker = Attacker(shared, "serve")
    try:
        assert attacker.command("symlink", "key.pem", canary) == "ok"
        assert attacker.command("hardlink", "hard.pem", canary).startswith("err")
    finally:
        attacker.finish()
    link = shared / "key.pem"
    assert link.lstat().st_uid == _nobody()[0]
    with pytest.raises(ActionFailed) as exc:
        wipe.run(spec("wipe", paths=[str(link)]), ctx())
    _untouched(canaries)
    assert link.is_symlink()
    assert f"refusing to follow {link} -> {canary}: the link is owned by uid" in str(exc.value)


@AS_ROOT
def test_root_link_in_a_directory_another_user_owns_is_not_followed(
    private_dir: Path, ctx: Callable[..., ActionContext]
) -> None:
    uid, gid = _nobody()
    target = private_dir / "real.key"
    target.write_bytes(SECRET)
    app = _owned_dir(private_dir / "app", uid, gid)
    (app / "current.key").symlink_to(target)
    with pytest.raises(ActionFailed, match=f"{app} is owned by uid {uid}"):
        wipe.run(spec("wipe", paths=[str(app / "current.key")]), ctx())
    assert target.read_bytes() == SECRET


@AS_ROOT
def test_mount_points_below_the_tree_are_not_crossed(tmp_path: Path) -> None:
    """In a private mount namespace: a tmpfs, a bind-mounted directory and a bind-mounted file."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8) for a private mount namespace")
    tree = tmp_path / "keys"
    for d in ("fs", "bind", "plain"):
        (tree / d).mkdir(parents=True)
    (tree / "plain" / "k").write_bytes(b"k" * 10)
    (tree / "file").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_bytes(b"keep")
    (tmp_path / "canary.file").write_bytes(b"keep too")
    script = (
        "import json, sys\n"
        "from geoprobe.defend import wipe\n"
        "from geoprobe.defend.base import Deadline\n"
        "w = wipe.Wiper(Deadline.after(60))\n"
        "w.wipe_path(sys.argv[1], recursive=True)\n"
        "print(json.dumps(w.data()))\n"
    )
    shell = (
        'mount -t tmpfs t "$1/keys/fs" && echo x > "$1/keys/fs/inner" && '
        'mount --bind "$1/outside" "$1/keys/bind" && '
        'mount --bind "$1/canary.file" "$1/keys/file" && '
        'exec "$2" -c "$3" "$1/keys"'
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh"]
        + [str(tmp_path), sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert set(skipped) == {"fs", "bind", "file"}
    assert "another filesystem" in skipped["fs"] and "bind mount" in skipped["bind"]
    assert "bind-mounted file" in skipped["file"]
    assert [Path(f["path"]).name for f in data["files"] if f["removed"]] == ["k"]
    assert (outside / "canary").read_bytes() == b"keep"
    assert (tmp_path / "canary.file").read_bytes() == b"keep too"


@AS_ROOT
def test_a_file_that_cannot_be_unlinked_is_reported_kept_not_wiped(
    tmp_path: Path, ctx: Callable[..., ActionContext]
) -> None:
    """An immutable directory (chattr +i): the overwrite happens, the unlink cannot."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k").write_bytes(SECRET)
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr(1)")
    made = subprocess.run(["chattr", "+i", str(keys)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {made.stderr.decode().strip()}")
    try:
        with pytest.raises(ActionFailed) as exc:
            wipe.run(spec("wipe", paths=[str(keys / "k")]), ctx())
    finally:
        subprocess.run(["chattr", "-i", str(keys)], check=True)
    assert "overwritten but not unlinked" in str(exc.value)
    (f,) = exc.value.data["files"]
    assert f["passes"] == 1 and not f["removed"]
    assert _mostly_different((keys / "k").read_bytes(), SECRET)
