"""Inside the lab guest: a LUKS2 volume that opens only through the key server, then geoprobe watch.

Runs as the guest's boot program (`python3 /lab/luks_guest.py /lab/luks.json`), with the Debian
guest's Python and nothing but the standard library besides geoprobe itself. It

1. loads dm_crypt and loop, asks the key server for the secret a few times (the release round
   trips), formats a LUKS2 volume on a loop file with the released secret as its passphrase
   (`geoprobe unlock NAME | cryptsetup luksFormat --key-file=-`), opens it the same way, makes
   ext4 on it, mounts it, writes and reads back data; optionally binds it with the clevis pin;
2. runs `geoprobe watch` under the scenario's policy (`on.suspected` suspends the volume,
   `on.cleared` resumes it), passing its output through to the console;
3. follows the volume's state in sysfs and, once it is suspended, starts a reader of the data
   that can only finish after a resume; after a crossing it also tries to resume the volume
   itself (as a fooled or hostile operator would) and asks the key server once more.

Each step is one `LAB-LUKS {json}` line; the host stamps when it read each line, so every figure
is on the host's clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RELEASED = re.compile(r"released at ([0-9.]+) ms")


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def say(step: str, **fields: Any) -> None:
    print("LAB-LUKS " + json.dumps({"step": step, "uptime": uptime(), **fields}), flush=True)


def tail(text: str | bytes, n: int = 400) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(text.split())[-n:]


class Volume:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.secret: str = cfg["secret"]
        self.client: str = cfg["client_config"]
        self.mapping: str = cfg["mapping"]
        self.image: str = cfg["image"]
        self.mount: str = cfg["mount"]
        self.data = Path(self.mount) / "data.bin"
        self.digest = ""

    def unlock_argv(self, verbose: bool = True) -> list[str]:
        argv = [sys.executable, "-m", "geoprobe", "unlock", self.secret, "--config", self.client]
        return [*argv, "-v"] if verbose else argv

    def piped(self, argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
        """`geoprobe unlock NAME | argv`: the secret only ever travels through the pipe."""
        t0 = time.monotonic()
        unlock = subprocess.Popen(
            self.unlock_argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert unlock.stdout is not None
        done = subprocess.run(
            argv, stdin=unlock.stdout, capture_output=True, timeout=timeout, check=False
        )
        unlock.stdout.close()
        err = unlock.stderr.read() if unlock.stderr else b""
        rc = unlock.wait(timeout)
        if rc != 0:
            return rc, f"unlock: {tail(err)}"
        return (
            done.returncode,
            f"{tail(err, 200)} | {tail(done.stderr)} ({time.monotonic() - t0:.2f} s)",
        )

    def releases(self, n: int) -> None:
        rtts: list[float] = []
        errors: list[str] = []
        for _ in range(n):
            done = subprocess.run(self.unlock_argv(), capture_output=True, timeout=60, check=False)
            m = RELEASED.search(done.stderr.decode("utf-8", "replace"))
            if done.returncode == 0 and m:
                rtts.append(float(m.group(1)))
            else:
                errors.append(tail(done.stderr))
        say("release", rtts_ms=rtts, errors=errors)

    def create(self) -> bool:
        subprocess.run(["modprobe", "-a", "dm_mod", "dm_crypt", "loop"], check=False)
        if not os.path.lexists("/dev/fd"):  # udev makes it on a full system; clevis's bash needs it
            os.symlink("/proc/self/fd", "/dev/fd")
        say("modules", dm_control=Path("/dev/mapper/control").exists())
        with open(self.image, "wb") as f:
            f.truncate(int(self.cfg["size_mb"]) << 20)
        # The passphrase is 256 random bits from the key server: the KDF's work factor protects
        # guessable passphrases only, and under TCG argon2 would cost seconds per unlock.
        fmt = ["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode"]
        fmt += ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-"]
        for step, argv in (
            ("format", [*fmt, self.image]),
            (
                "open",
                ["cryptsetup", "open", "--type", "luks2", "--key-file=-", self.image, self.mapping],
            ),
        ):
            for tries in range(1, 4):  # a loaded TCG host can miss the bound 20 times in a row
                rc, detail = self.piped(argv)
                if not detail.startswith("unlock:"):
                    break
            say(step, rc=rc, detail=detail, tries=tries)
            if rc:
                return False
        dev = f"/dev/mapper/{self.mapping}"
        for argv in (["mkfs.ext4", "-q", dev], ["mount", "-o", "noatime", dev, self.mount]):
            done = subprocess.run(argv, capture_output=True, check=False, timeout=120)
            if done.returncode:
                say("mount", rc=done.returncode, argv=argv, detail=tail(done.stderr))
                return False
        payload = os.urandom(1 << 20)
        with self.data.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        self.digest = hashlib.sha256(payload).hexdigest()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        ok = hashlib.sha256(self.data.read_bytes()).hexdigest() == self.digest
        say("mounted", device=dev, sysfs=self.sysfs(), sha256=self.digest[:16], read_back=ok)
        return ok

    def clevis(self) -> None:
        """Bind with the geoprobe clevis pin, then check that what the pin recovers opens it."""
        t0 = time.monotonic()
        pin = json.dumps({"name": self.secret, "config": self.client})
        rc, detail = self.piped(
            ["clevis", "luks", "bind", "-y", "-k", "-", "-d", self.image, "geoprobe", pin], 300
        )
        bound = time.monotonic() - t0
        if rc:
            say("clevis", bound=False, rc=rc, detail=detail)
            return
        t1 = time.monotonic()
        listed = subprocess.run(
            ["clevis", "luks", "list", "-d", self.image], capture_output=True, check=False
        )
        slot = (listed.stdout.decode().split(":", 1)[0] or "1").strip()
        pas = subprocess.Popen(
            ["clevis", "luks", "pass", "-d", self.image, "-s", slot], stdout=subprocess.PIPE
        )
        assert pas.stdout is not None
        test = subprocess.run(
            ["cryptsetup", "open", "--test-passphrase", "--key-slot", slot, "--key-file=-"]
            + [self.image],
            stdin=pas.stdout,
            capture_output=True,
            check=False,
            timeout=300,
        )
        pas.stdout.close()
        say(
            "clevis",
            bound=True,
            slot=slot,
            bind_s=round(bound, 2),
            pass_opens=pas.wait(60) == 0 and test.returncode == 0,
            pass_s=round(time.monotonic() - t1, 2),
            detail=tail(test.stderr),
        )

    def sysfs(self) -> str | None:
        for d in Path("/sys/block").glob("dm-*"):
            if (d / "dm" / "name").read_text().strip() == self.mapping:
                return str(d / "dm" / "suspended")
        return None

    def read_back(self, since: float) -> None:
        """Blocks while the volume is suspended: it returns only once the key is back."""
        try:
            ok = hashlib.sha256(self.data.read_bytes()).hexdigest() == self.digest
        except OSError as exc:
            say("readable", ok=False, error=str(exc))
            return
        say("readable", ok=ok, waited_s=round(time.monotonic() - since, 2))


def fire_resume(kind: str) -> None:
    """luks_resume through `geoprobe policy fire`, exactly as a policy stage would run it."""
    event = {
        "specversion": "1.0",
        "id": f"lab-{kind}-resume-{time.time_ns()}",
        "source": "lab",
        "type": "io.geoprobe.lab.resume",
        "data": {"verdict": "unknown"},
    }
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "geoprobe", "policy", "fire", "/lab/resume.toml", "--event", "-"]
        + ["--state", "/tmp/geoprobe-fire", "--json"],
        input=json.dumps(event).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    say(
        "resume_attempt",
        kind=kind,
        rc=done.returncode,
        seconds=round(time.monotonic() - t0, 2),
        result=tail(done.stdout, 600),
        log=tail(done.stderr, 600),
    )


def follow(
    cfg: dict[str, Any], vol: Volume, state_file: str | None, events: queue.Queue[dict[str, Any]]
) -> None:
    """Follow the volume's state while the watch runs, until the scenario has its outcome.

    Resumes and the attempts after a crossing run in a thread of their own, so every change of
    state is seen (and stamped) as it happens.
    """
    state = "0"
    suspended_at: float | None = None
    reader: threading.Thread | None = None
    forced_at: float | None = None
    finish_at: float | None = None
    resumed = False
    give_up = float(cfg.get("give_up_s", 120))

    def abroad() -> None:
        # What an operator abroad would try once the move is done: the policy's own resume
        # action, then the bare client.
        nonlocal finish_at
        fire_resume("forced")
        done = subprocess.run(vol.unlock_argv(), capture_output=True, timeout=120, check=False)
        say("unlock_after_move", rc=done.returncode, stderr=tail(done.stderr, 600))
        finish_at = time.monotonic() + 5.0

    def start(target: Any, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        return t

    while True:
        now = time.monotonic()
        new = Path(state_file).read_text().strip() if state_file else "?"
        if new != state:
            state = new
            say("state", suspended=state == "1")
            if state == "1":
                suspended_at = now
                if reader is None:  # the first suspension: this read can end only after a resume
                    reader = start(vol.read_back, now)
            elif suspended_at is not None:
                resumed, suspended_at = True, None
        while not events.empty():
            ev = events.get()
            etype = str(ev.get("type", ""))
            if etype.endswith("migration.confirmed"):
                data = ev.get("data") or {}
                say("watch_confirmed", crossing=data.get("crossing"))
                if data.get("crossing") is True:
                    forced_at = now + 30.0  # or as soon as the suspension is seen
            elif etype.endswith("migration.cleared"):
                say("watch_cleared", data=ev.get("data"))
        if forced_at is not None and (state == "1" or now > forced_at):
            forced_at = None
            start(abroad)
        if resumed and reader is not None and not reader.is_alive():
            say("done", outcome="resumed", data_readable=True)
            return
        if finish_at is not None and now > finish_at:
            blocked = reader is not None and reader.is_alive()
            outcome = "stays suspended" if state == "1" else "active"
            say("done", outcome=outcome, reader_blocked=blocked)
            return
        if suspended_at is not None and now - suspended_at > give_up:
            say("done", outcome=f"still suspended after {give_up:g} s")
            return
        time.sleep(0.1)


def main() -> int:
    cfg: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    vol = Volume(cfg)
    vol.releases(int(cfg.get("releases", 5)))
    if not vol.create():
        say("done", outcome="setup failed")
        return 1
    if cfg.get("clevis"):
        try:
            vol.clevis()
        except subprocess.TimeoutExpired as exc:
            say("clevis", bound=False, detail=f"timed out: {exc}")
    state_file = vol.sysfs()
    watch = subprocess.Popen(
        shlex.split(cfg["watch"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def relay() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    events.put(ev)

    threading.Thread(target=relay, daemon=True).start()
    follow(cfg, vol, state_file, events)
    # keep the watch running (the host stops the guest); its output still reaches the console
    watch.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
