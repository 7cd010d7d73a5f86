"""Sentinel landmarks: a few landmarks probed several times a second between full rounds.

A full round probes every landmark, which is what can place the VM and prove a crossing, but it
costs hundreds of packets; at a 60 s interval a move waits up to a minute for it. The sentinels
are the cheap, continuous part: a handful of landmarks, one signed echo each per period, whose
floor RTT or clock offset changes when the VM moves. A change only *triggers* a full round at
once; it never confirms anything (that stays with the shift test and the jurisdiction verdict of
full rounds), so a false trigger costs one round and nothing else.

Which landmarks: the nearest ones (a move of a few hundred km always raises their RTT by a lot
against their small floor) plus far ones in different directions (a move towards or away from
one of them changes its RTT whichever way the VM went). Quiet ones first: jitter is what a
sentinel must tell a move from.

What counts as a change, per sentinel, against a floor learnt over its first samples:

* a **fall**: two samples in a row below the floor by the margin. Jitter only adds delay, so
  RTT cannot fall without the path getting shorter (two: a floor learnt while the VM was
  loaded sits too high);
* a **rise**: the last three samples above the floor by the margin (a lasting rise, not a
  queueing spike), beyond the rise every other sentinel shares (load on the VM or delay added
  on its own link slows every path alike; a move changes them unequally);
* a **clock step**: the offset against landmark time (signed echo) moved by the step threshold
  on at least three sentinels (all of them when fewer), the same way: a migration's pause
  leaves the guest clock behind.

After an accepted trigger the sentinel that fired learns its floor anew, so a lasting change (a
move, or a route that changed for good) triggers once per sentinel, not again and again; the others
keep watching meanwhile. A refused trigger (the daemon's budget of rounds is spent) keeps the floor:
the sentinel asks again with each sample until a round is granted, and after the next full round
(which measured the place anyway) it learns its floor anew.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from geoprobe.landmarks import Landmark

log = logging.getLogger("geoprobe.watch.sentinel")

Kind = Literal["fall", "rise", "clock"]


@dataclass(frozen=True, slots=True)
class SentinelConfig:
    """How many sentinels, how often, and what counts as a change (defaults by measurement,
    docs/watch.md)."""

    near: int = 2  # the nearest landmarks
    far: int = 2  # far ones, spread in bearing from the home fix
    period_s: float = 0.5  # one signed echo per sentinel per period
    max_rtt_ms: float = 150.0  # farther landmarks are too slow and jittery to watch
    learn: int = 8  # samples per sentinel that set its floor
    fall_ms: float = 1.5  # a fall must exceed max(fall_ms, fall_rel x floor, the learnt spread)
    fall_rel: float = 0.05
    fall_n: int = 2
    rise_ms: float = 5.0  # a rise must exceed max(rise_ms, rise_rel x floor, 3 x spread)
    rise_rel: float = 0.15
    rise_n: int = 3
    step_ms: float = 20.0  # clock step threshold (and at least 4 x the offsets' own spread)
    step_landmarks: int = 3
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.near < 0 or self.far < 0 or self.near + self.far < 1:
            raise ValueError("need at least one sentinel")
        if not self.period_s > 0:
            raise ValueError("period_s must be positive")
        if self.learn < 2 or self.fall_n < 1 or self.rise_n < 1:
            raise ValueError("learn >= 2, fall_n >= 1 and rise_n >= 1")

    @property
    def count(self) -> int:
        return self.near + self.far

    @property
    def probes_per_s(self) -> float:
        return self.count / self.period_s


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why the sentinels asked for a full round now."""

    kind: Kind
    landmark: str
    change_ms: float  # RTT change (fall negative) or clock step, against the learnt floor
    margin_ms: float
    time: float

    def describe(self) -> str:
        what = {"fall": "RTT fell", "rise": "RTT rose", "clock": "clock offset stepped"}[self.kind]
        return (
            f"sentinel {self.landmark}: {what} by {abs(self.change_ms):.1f} ms "
            f"(margin {self.margin_ms:.1f} ms)"
        )


def _bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def _angle(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def select_sentinels(
    rtts: Mapping[str, float],
    landmarks: Sequence[Landmark],
    home: tuple[float, float] | None,
    config: SentinelConfig,
    *,
    noise: Mapping[str, float] | None = None,
) -> list[str]:
    """The sentinels for a VM whose floor RTTs are ``rtts`` (and noise scales ``noise``).

    The ``config.near`` lowest-RTT landmarks, then ``config.far`` of the rest chosen one by one
    to widen the spread of bearings from ``home`` (the farthest in angle from the far ones
    already chosen; ties to the quieter and nearer one). The near ones' own bearings do not
    count: any move of a few hundred km changes their small RTTs, whatever its direction.
    Landmarks noisier than a fifth of their RTT are left out while enough others remain.
    Without a home, the far ones are the next lowest RTTs.
    """
    by_id = {lm.id: lm for lm in landmarks}
    cands = [
        lid
        for lid, r in rtts.items()
        if lid in by_id and math.isfinite(r) and 0 <= r <= config.max_rtt_ms
    ]
    if noise:
        quiet = [lid for lid in cands if noise.get(lid, 0.0) <= 0.2 * max(rtts[lid], 1.0)]
        if len(quiet) >= config.count:
            cands = quiet
    cands.sort(key=lambda lid: (rtts[lid], lid))
    chosen = cands[: config.near]
    rest = cands[config.near :]
    if home is None:
        return chosen + rest[: config.far]
    bearings = {lid: _bearing(home[0], home[1], by_id[lid].lat, by_id[lid].lon) for lid in cands}
    far: list[str] = []
    for _ in range(config.far):
        pool = [lid for lid in rest if lid not in far]
        if not pool:
            break
        taken = list(far)

        def score(lid: str, taken: list[str] = taken) -> tuple[float, float]:
            spread = min((_angle(bearings[lid], bearings[o]) for o in taken), default=180.0)
            # Bearing buckets of 15 degrees, then the quieter, nearer landmark within one.
            return (-round(spread / 15.0), rtts[lid] + (noise or {}).get(lid, 0.0) * 5)

        far.append(min(pool, key=score))
    return chosen + far


@dataclass(slots=True)
class _Track:
    learning: list[float] = field(default_factory=list)
    offsets_learning: list[float] = field(default_factory=list)
    floor: float | None = None
    spread: float = 0.0
    offset: float | None = None
    offset_spread: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    recent_offsets: deque[float] = field(default_factory=lambda: deque(maxlen=2))


class SentinelDetector:
    """The trigger rule (pure: fed samples, returns triggers; no sockets, no clocks)."""

    def __init__(self, config: SentinelConfig | None = None) -> None:
        self.config = config or SentinelConfig()
        self._tracks: dict[str, _Track] = {}

    def reset(self, lid: str | None = None) -> None:
        """Learn one sentinel's floor anew (after it fired), or every one (a new set)."""
        if lid is None:
            self._tracks.clear()
        else:
            self._tracks.pop(lid, None)

    @property
    def ready(self) -> bool:
        return bool(self._tracks) and all(t.floor is not None for t in self._tracks.values())

    def margins(self, lid: str) -> tuple[float, float] | None:
        """(fall, rise) margins of one sentinel once its floor is learnt."""
        t = self._tracks.get(lid)
        if t is None or t.floor is None:
            return None
        c = self.config
        return (
            max(c.fall_ms, c.fall_rel * t.floor, t.spread),
            max(c.rise_ms, c.rise_rel * t.floor, 3.0 * t.spread),
        )

    def add(
        self, lid: str, rtt_ms: float, offset_ms: float | None = None, t: float = 0.0
    ) -> Trigger | None:
        """One sample of one sentinel; a trigger when it (with the ones before) shows a change."""
        if not math.isfinite(rtt_ms) or rtt_ms < 0:
            return None
        c = self.config
        tr = self._tracks.setdefault(lid, _Track())
        if tr.floor is None:
            tr.learning.append(rtt_ms)
            if offset_ms is not None and math.isfinite(offset_ms):
                tr.offsets_learning.append(offset_ms)
            if len(tr.learning) >= c.learn:
                tr.floor = min(tr.learning)
                tr.spread = statistics.median(tr.learning) - tr.floor
                if len(tr.offsets_learning) >= 2:
                    tr.offset = statistics.median(tr.offsets_learning)
                    tr.offset_spread = statistics.median(
                        abs(x - tr.offset) for x in tr.offsets_learning
                    )
            return None
        tr.recent.append(rtt_ms)
        margins = self.margins(lid)
        assert margins is not None
        fall, rise = margins
        last = list(tr.recent)
        if len(last) >= c.fall_n and all(x < tr.floor - fall for x in last[-c.fall_n :]):
            return Trigger("fall", lid, max(last[-c.fall_n :]) - tr.floor, fall, t)
        up = self._rise(tr)
        if up is not None:
            common = self._common_rise(lid)
            if up - common > rise:
                return Trigger("rise", lid, up - common, rise, t)
        if offset_ms is not None and math.isfinite(offset_ms) and tr.offset is not None:
            tr.recent_offsets.append(offset_ms)
            return self._clock_step(t)
        return None

    def _rise(self, tr: _Track, n: int | None = None) -> float | None:
        """How far the last ``n`` (``rise_n``) samples all sit above the floor (None: too few)."""
        n = self.config.rise_n if n is None else n
        if tr.floor is None or len(tr.recent) < n:
            return None
        return min(list(tr.recent)[-n:]) - tr.floor

    def _common_rise(self, lid: str) -> float:
        """The rise every other sentinel shares: load on this VM or delay added on its own link
        slows every path alike, a move changes them unequally (and brings some closer). The
        others' latest sample counts: theirs of this tick may not have come back yet."""
        others = [
            r for k, t in self._tracks.items() if k != lid and (r := self._rise(t, 1)) is not None
        ]
        return max(0.0, min(others)) if others else 0.0

    def _clock_step(self, t: float) -> Trigger | None:
        """The offsets of at least ``step_landmarks`` sentinels moved the same way, each by the
        threshold (a step is common to every landmark; one path's asymmetry is not)."""
        c = self.config
        steps: list[tuple[float, float, str]] = []
        for lid, tr in self._tracks.items():
            if tr.offset is None or len(tr.recent_offsets) < 2:
                continue
            need = max(c.step_ms, 4.0 * tr.offset_spread)
            moved = [x - tr.offset for x in tr.recent_offsets]
            if all(m >= need for m in moved) or all(m <= -need for m in moved):
                steps.append((statistics.median(moved), need, lid))
        need_n = min(c.step_landmarks, len(self._tracks))
        for sign in (1.0, -1.0):
            same = [s for s in steps if s[0] * sign > 0]
            if len(same) >= need_n:
                step, margin, lid = min(same, key=lambda s: abs(s[0]))
                return Trigger("clock", lid, step, margin, t)
        return None


class Sentinel:
    """Probes the sentinels on a thread of its own and calls ``on_trigger`` on a change
    (which returns whether a round was granted).

    ``watch(landmarks)`` sets (or, with an empty list, pauses) what it probes; each change of set
    and each trigger starts a new learning period. ``probes`` counts every packet sent.
    """

    def __init__(
        self,
        method: str,
        on_trigger: Callable[[Trigger], bool],
        config: SentinelConfig | None = None,
    ) -> None:
        self.method = method
        self.on_trigger = on_trigger
        self.config = config or SentinelConfig()
        self.detector = SentinelDetector(self.config)
        self.probes = 0
        self.triggers = 0
        self._landmarks: list[Landmark] = []
        self._generation = 0
        self._held = False
        self._refused: set[str] = set()  # fired, no round granted: the floor is kept
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def landmarks(self) -> list[Landmark]:
        with self._lock:
            return list(self._landmarks)

    def watch(self, landmarks: Sequence[Landmark]) -> None:
        with self._lock:
            self._landmarks = list(landmarks)
            self._generation += 1
            self.detector.reset()
        if landmarks:
            log.info("sentinels: %s", ", ".join(lm.id for lm in landmarks))

    def hold(self, held: bool) -> None:
        """No sentinel probes while a full round runs: its burst of packets loads this VM and
        the path, and would show as a rise; the round measures the place itself anyway."""
        with self._lock:
            self._held = held
            self._generation += 1  # replies to probes sent before or during it are not used
            if not held:  # the round measured the place: what was refused is learnt anew
                for lid in self._refused:
                    self.detector.reset(lid)
                self._refused.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="geoprobe-sentinel", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _main(self) -> None:
        try:
            asyncio.run(self._loop())
        except Exception as exc:  # noqa: BLE001  (the full rounds go on without sentinels)
            log.warning("sentinels stopped: %s", exc)

    async def _loop(self) -> None:
        from geoprobe.probe.base import ProbeFailure
        from geoprobe.probe.scheduler import open_prober, resolve

        prober = await open_prober(self.method)
        addrs: dict[str, str] = {}
        pending: set[asyncio.Task[None]] = set()

        async def one(lm: Landmark, addr: str, generation: int) -> None:
            try:
                s = await asyncio.wait_for(prober.send(lm, addr), self.config.timeout_s)
            except (TimeoutError, ProbeFailure, OSError):
                return
            with self._lock:
                if generation != self._generation:
                    return  # probed for a set (or a floor) that is no longer current
                trig = self.detector.add(lm.id, s.rtt_ms, s.clock_offset_ms, time.time())
            if trig is None:
                return
            granted = self.on_trigger(trig)
            with self._lock:
                if generation != self._generation:
                    return
                if granted:
                    self.triggers += 1
                    self._refused.discard(lm.id)
                    if trig.kind == "clock":
                        self.detector.reset()  # every sentinel's offset stepped with it
                    else:
                        self.detector.reset(lm.id)
                else:
                    self._refused.add(lm.id)

        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                with self._lock:
                    lms, gen = ([] if self._held else list(self._landmarks)), self._generation
                for lm in lms:
                    if prober.supports(lm) is not None:
                        continue
                    addr = addrs.get(lm.id)
                    if addr is None:
                        try:
                            addr = addrs[lm.id] = await resolve(lm, self.config.timeout_s)
                        except ProbeFailure:
                            continue
                    self.probes += 1
                    task = asyncio.ensure_future(one(lm, addr, gen))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                next_at = max(next_at + self.config.period_s, time.monotonic())
                await asyncio.sleep(next_at - time.monotonic())
        finally:
            for task in list(pending):
                task.cancel()
            prober.close()
