"""delay: dirty guest memory at a controlled rate so pre-copy live migration cannot converge.

QEMU's pre-copy sends all RAM, then re-sends what the guest dirtied meanwhile, round after round,
and stops the guest for the final copy only once the rest fits in the allowed downtime
(``downtime-limit``, 300 ms by default) at the measured bandwidth (``max-bandwidth`` defaults to
128 MiB/s, so about 38 MiB). Writing one byte to every 4 KiB page of a buffer larger than that,
faster than the link copies pages, keeps the remainder above the threshold: the migration stays
in pre-copy. Auto-converge counters it by throttling the guest's vCPUs (20 % up to 99 %), which
slows this writer too; post-copy switches over anyway and is not delayed at all. See
docs/defence.md and docs/precopy.md.

What counts is the bytes the migration must send per page dirtied, so pages change
incompressibly. The buffer starts as random bytes, distinct in every page, so multifd's zlib and
zstd compression find nothing to shrink and no page is a zero page. ``content="random"`` (the
default) then rewrites every page with fresh random bytes each time, so XBZRLE, which sends only
the difference from the copy it sent before, finds the whole page changed and sends it in full.
``content="byte"`` changes one byte per page: about a thousand times cheaper per page, as good
against multifd compression, but XBZRLE shrinks such a page to a few bytes.

Memory is allocated once, up front; the cap is on the *process's* peak RSS (VmHWM), so the buffer
is the cap minus what the process already holds minus a small headroom.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoprobe.defend.base import ActionContext, ActionFailed, Outcome
from geoprobe.errors import InputError
from geoprobe.policy import ActionSpec
from geoprobe.status import ExitStatus

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
HEADROOM = 8 << 20  # bytes of RSS kept free for the interpreter's own growth while running
MIN_BUFFER = 4 << 20
CHUNK_PAGES = 16384  # pages per strided write: big enough to amortise Python, small enough to pace
RANDOM_CHUNK_PAGES = 256  # pages per random rewrite: its 1 MiB of fresh bytes fits the headroom
CONTENTS = ("random", "byte")
DEFAULT_CONTENT = "random"
POLL_S = 0.05  # how often stop conditions are checked
DEFAULT_MEMORY = 256 << 20
DEFAULT_CPU = 0.5
DEFAULT_DURATION = 60.0


def proc_status(path: str = "/proc/self/status") -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and friends, in bytes."""
    out: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            if key.startswith("Vm") and rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


@dataclass
class Progress:
    elapsed_s: float
    pages: int
    pages_per_s: float  # page writes per second over the last reporting interval
    dirty_mib_per_s: float  # distinct memory dirtied per second: at most the buffer per second
    passes: int
    rss_bytes: int
    hwm_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class DelaySummary:
    reason: str  # duration | stopped | cleared
    elapsed_s: float
    pages: int
    pages_per_s: float
    dirty_mib_per_s: float
    passes: int
    buffer_bytes: int
    memory_cap: int
    peak_rss_bytes: int
    cpu_cap: float
    cpu_s: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


class Dirtier:
    """Owns the buffer, allocated, filled with random bytes and faulted in once, here; ``run``
    only rewrites it."""

    def __init__(
        self, memory_cap: int, *, headroom: int = HEADROOM, content: str = DEFAULT_CONTENT
    ) -> None:
        if content not in CONTENTS:
            raise InputError(f"must be one of {', '.join(CONTENTS)}", field="content")
        st = proc_status()
        rss, hwm = st.get("VmRSS", 0), st.get("VmHWM", 0)
        budget = memory_cap - rss - headroom
        if budget < MIN_BUFFER or hwm > memory_cap:
            raise InputError(
                f"memory cap {memory_cap >> 20} MiB leaves no room for a buffer: "
                f"this process already holds {rss >> 20} MiB (peak {hwm >> 20} MiB)",
                field="memory",
            )
        self.memory_cap = memory_cap
        self.content = content
        self.pages = budget // PAGE
        self._words_per_page = PAGE // 8
        # SFC64: fresh bytes at over 1 GB/s; unpredictability is not needed, only entropy.
        self._rng = np.random.SFC64(int.from_bytes(os.urandom(16), "little"))
        self.buffer = np.empty(self.pages * PAGE, dtype=np.uint8)
        self._words = self.buffer.view(np.uint64)
        self.view = self.buffer[::PAGE]  # one byte per page: the first byte of each
        # Random from the start (which also faults it all in: the memory is held from the start,
        # not on the way): no page is a zero page, and none compresses.
        for pos in range(0, self.pages, RANDOM_CHUNK_PAGES):
            self.rewrite(pos, min(pos + RANDOM_CHUNK_PAGES, self.pages))

    def rewrite(self, start: int, end: int) -> None:
        """Fresh random bytes in pages ``start`` to ``end``, in place (a bounded temporary)."""
        w = self._words_per_page
        self._words[start * w : end * w] = self._rng.random_raw((end - start) * w)

    def write(self, start: int, end: int) -> None:
        """Change pages ``start`` to ``end`` as ``content`` says: each page surely changes."""
        if self.content == "random":
            self.rewrite(start, end)
        else:
            self.view[start:end] += 1  # wraps modulo 256: always a new value

    @property
    def buffer_bytes(self) -> int:
        return int(self.buffer.nbytes)

    def _dirty_mib(self, pages_per_s: float) -> float:
        """What a migration must re-send per second: a page rewritten within the second counts
        once, as in QEMU's calc-dirty-rate over a 1 s period."""
        return min(pages_per_s, float(self.pages)) * PAGE / 2**20

    def run(
        self,
        *,
        cpu: float = DEFAULT_CPU,
        rate: float | None = None,
        duration: float | None = DEFAULT_DURATION,
        should_stop: Callable[[], str | None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        report_every: float = 1.0,
    ) -> DelaySummary:
        """Write page after page until ``duration`` or ``should_stop`` returns a reason.

        Pacing is a token bucket on both caps: after each chunk the writer sleeps until its
        thread CPU time is within ``cpu`` of wall time and its page count within ``rate``.
        """
        if not 0 < cpu <= 1:
            raise InputError("must be in (0, 1]", field="cpu")
        most = RANDOM_CHUNK_PAGES if self.content == "random" else CHUNK_PAGES
        chunk = most if rate is None else int(max(1, min(most, rate * 0.02)))
        n = len(self.view)
        pos, passes, pages = 0, 0, 0
        t0 = time.perf_counter()
        c0 = time.thread_time()
        last_t, last_pages, next_report, next_poll = t0, 0, t0 + report_every, t0
        reason = "duration"
        while True:
            now = time.perf_counter()
            if duration is not None and now - t0 >= duration:
                break
            if should_stop is not None and now >= next_poll:
                next_poll = now + POLL_S
                why = should_stop()
                if why:
                    reason = why
                    break
            end = min(pos + chunk, n)
            self.write(pos, end)
            pages += end - pos
            pos = end
            if pos >= n:
                pos, passes = 0, passes + 1
            wake = t0
            if cpu < 1:
                wake = max(wake, t0 + (time.thread_time() - c0) / cpu)
            if rate is not None:
                wake = max(wake, t0 + pages / rate)
            if duration is not None:
                wake = min(wake, t0 + duration)
            why = _sleep_until(wake, should_stop)
            if why:
                reason = why
                break
            now = time.perf_counter()
            if progress is not None and now >= next_report:
                st = proc_status()
                pps = (pages - last_pages) / max(now - last_t, 1e-9)
                progress(
                    Progress(
                        now - t0,
                        pages,
                        pps,
                        self._dirty_mib(pps),
                        passes,
                        st.get("VmRSS", 0),
                        st.get("VmHWM", 0),
                    )
                )
                last_t, last_pages, next_report = now, pages, now + report_every
        elapsed = time.perf_counter() - t0
        pps = pages / max(elapsed, 1e-9)
        return DelaySummary(
            reason=reason,
            elapsed_s=elapsed,
            pages=pages,
            pages_per_s=pps,
            dirty_mib_per_s=self._dirty_mib(pps),
            passes=passes,
            buffer_bytes=self.buffer_bytes,
            memory_cap=self.memory_cap,
            peak_rss_bytes=proc_status().get("VmHWM", 0),
            cpu_cap=cpu,
            cpu_s=time.thread_time() - c0,
        )


def xbzrle_size(old: bytes, new: bytes) -> int | None:
    """Bytes XBZRLE would send for ``new`` given the copy ``old`` it sent before, or None when
    the encoding outgrows the page and QEMU sends the page whole instead.

    The encoding (QEMU ``migration/xbzrle.c``) is a list of (unchanged run length, changed run
    length, changed bytes), lengths as ULEB128; a trailing unchanged run is left out.
    """
    a = np.frombuffer(old, dtype=np.uint8)
    b = np.frombuffer(new, dtype=np.uint8)
    if a.shape != b.shape:
        raise ValueError("pages differ in size")
    changed = np.flatnonzero(np.diff(np.concatenate(([0], (a != b).view(np.int8), [0]))))
    size, prev_end = 0, 0
    for start, end in zip(changed[::2].tolist(), changed[1::2].tolist(), strict=True):
        size += _uleb_len(start - prev_end) + _uleb_len(end - start) + (end - start)
        if size > len(a):
            return None
        prev_end = end
    return size


def _uleb_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _sleep_until(wake: float, should_stop: Callable[[], str | None] | None) -> str | None:
    """Sleep in short slices so a stop request is seen within POLL_S."""
    while (now := time.perf_counter()) < wake:
        time.sleep(min(wake - now, POLL_S))
        if should_stop is not None and (why := should_stop()):
            return why
    return None


def flag_stop(path: str | Path | None, parent_pid: int | None = None) -> Callable[[], str | None]:
    """Stop condition for a delay run: the clear-flag file appeared, or the parent died."""
    flag = Path(path) if path is not None else None

    def check() -> str | None:
        if flag is not None and flag.exists():
            return "cleared"
        if parent_pid is not None and os.getppid() != parent_pid:
            return "parent exited"
        return None

    return check


# --- the policy action: run the dirtier in a lean child process --------------------------------

_RUNNING: dict[str, subprocess.Popen[bytes]] = {}


def clear_flag(store_path: str | Path) -> Path:
    """The file whose appearance tells background delays that the verdict cleared."""
    return Path(store_path).parent / "delay.clear"


def child_main(argv: list[str] | None = None) -> int:
    """Entry of the background child: JSON config in argv[1], JSON lines out on stdout."""
    cfg = json.loads((argv or sys.argv)[1])
    try:
        d = Dirtier(int(cfg["memory"]), content=str(cfg.get("content", DEFAULT_CONTENT)))
    except InputError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return int(ExitStatus.ERROR)
    print(
        json.dumps(
            {
                "started": True,
                "pid": os.getpid(),
                "buffer_bytes": d.buffer_bytes,
                "memory_cap": d.memory_cap,
            }
        ),
        flush=True,
    )
    stopped: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append("stopped"))
    flag = flag_stop(cfg.get("until_clear"), cfg.get("parent_pid"))
    summary = d.run(
        cpu=float(cfg["cpu"]),
        rate=cfg.get("rate"),
        duration=float(cfg["duration"]),
        should_stop=lambda: stopped[0] if stopped else flag(),
        progress=lambda p: print(json.dumps(p.to_json()), flush=True),
    )
    print(json.dumps({"summary": summary.to_json()}), flush=True)
    return int(ExitStatus.OK)


def _config(spec: ActionSpec, ctx: ActionContext) -> dict[str, Any]:
    return {
        "memory": int(spec.options.get("memory", DEFAULT_MEMORY)),
        "cpu": float(spec.options.get("cpu", DEFAULT_CPU)),
        "duration": float(spec.options.get("duration", DEFAULT_DURATION)),
        "rate": spec.options.get("rate"),
        "content": str(spec.options.get("content", DEFAULT_CONTENT)),
        "until_clear": str(clear_flag(ctx.store_path)),
        "parent_pid": os.getpid(),
    }


def plan(spec: ActionSpec, ctx: ActionContext) -> str:
    c = _config(spec, ctx)
    rate = f", {c['rate']:g} pages/s" if c["rate"] else ""
    return (
        f"dirty memory ({c['content']} pages) in the background: "
        f"cap {c['memory'] >> 20} MiB, cpu {c['cpu']:g}, "
        f"up to {c['duration']:g} s{rate}, until the verdict clears"
    )


def run(spec: ActionSpec, ctx: ActionContext) -> Outcome:
    """Start the child and wait until it has its buffer; it then runs on its own."""
    for key, proc in list(_RUNNING.items()):
        if proc.poll() is None:
            return Outcome(
                f"delay already running (pid {proc.pid}, event {key})",
                data={"pid": proc.pid, "already_running": True},
            )
        del _RUNNING[key]
    cfg = _config(spec, ctx)
    clear_flag(ctx.store_path).unlink(missing_ok=True)
    log = Path(ctx.store_path).parent / "delay.jsonl"  # one delay at a time: its progress
    log.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; from geoprobe.defend.delay import child_main; sys.exit(child_main())"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _RUNNING[ctx.event_id] = proc
    while not ctx.deadline.expired():
        text = log.read_text()
        first = text.splitlines()[:1] if "\n" in text else []  # a whole line only
        if first:
            try:
                info = json.loads(first[0])
            except json.JSONDecodeError:
                info = {"error": first[0]}
            if "error" in info:
                proc.wait()
                raise ActionFailed(f"delay did not start: {info['error']}", data={"log": str(log)})
            return Outcome(
                f"delay running (pid {proc.pid}, buffer {info['buffer_bytes'] >> 20} MiB, "
                f"up to {cfg['duration']:g} s)",
                data={"pid": proc.pid, "log": str(log), **info, "config": cfg},
            )
        if proc.poll() is not None:
            raise ActionFailed(f"delay exited at once ({proc.returncode})", data={"log": str(log)})
        time.sleep(0.02)
    return Outcome(
        f"delay started (pid {proc.pid}); buffer not yet allocated at the timeout",
        data={"pid": proc.pid, "log": str(log), "config": cfg},
    )


def stop_background(store_path: str | Path | None = None, *, wait_s: float = 5.0) -> int:
    """Stop background delays: raise the clear flag (seen across restarts) and SIGTERM ours."""
    if store_path is not None:
        flag = clear_flag(store_path)
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    stopped = 0
    for key, proc in list(_RUNNING.items()):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopped += 1
        del _RUNNING[key]
    return stopped
