"""The watch loop as a library: probe, test the fingerprint, read signals, fuse, emit, record.

One :class:`Watcher` owns the baseline and the state machine. ``round()`` does one cycle and is what
tests and the replay drive; ``run()`` repeats it until told to stop, probing every ``interval_s``
while all is quiet and every ``fast_interval_s`` while a suspicion is open.

Everything the loop touches from outside comes in as a parameter (the probe, the solver, the signal
sources, the event sink and the policy hook), so the daemon runs without a policy (``--allow``
only) and the policy's response plugs in through ``on_event``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from geoprobe import events
from geoprobe.errors import GeoprobeError
from geoprobe.geo import selection
from geoprobe.geo.fix import Fix
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement, min_rtts
from geoprobe.metrics import FixMetrics, RoundMetrics, WatchMetrics
from geoprobe.migration import Migration
from geoprobe.watch.fusion import (
    Anomaly,
    Fusion,
    Observation,
    State,
    Transition,
    raises_suspicion,
)
from geoprobe.watch.jurisdiction import Jurisdiction
from geoprobe.watch.sentinel import SentinelConfig, Trigger, select_sentinels
from geoprobe.watch.shift import Baseline, ShiftResult, ShiftTest
from geoprobe.watch.state import WatchStore

log = logging.getLogger("geoprobe.watch")
# During warm-up the baseline may hold a single round, whose noise is unknown: a change must be
# larger to count as a move, and two-sided (see ``_two_sided``).
WARMUP_TEST = ShiftTest(min_rounds=1, z=8.0, z_rise=8.0)
WARMUP_MIN_SIDE = 0.2  # share of the changed landmarks each direction needs during warm-up
# ... and the fix must have moved this far: against a baseline of a round or two, a far landmark's
# heavy-tailed jitter can change many RTTs at once while the place stays the same.
WARMUP_MIN_MOVE_KM = 100.0


def _two_sided(shift: ShiftResult) -> bool:
    """A move brings some landmarks closer and takes others away. A first round slowed by a cold
    start only makes the next ones look faster, and load only makes them slower: one-sided changes
    against a baseline of one or two rounds are not taken for a move."""
    need = max(2, WARMUP_MIN_SIDE * len(shift.changed))
    return len(shift.decreased) >= need and len(shift.increased) >= need


Event = dict[str, Any]
MeasureFn = Callable[[Sequence[Landmark]], list[Measurement]]
SolveFn = Callable[[Mapping[str, float]], Fix]


class RoundJournal(Protocol):
    """Where each round's measurements and each event go for attestation (geoprobe.attest)."""

    def round(self, t: float, measurements: Sequence[Measurement]) -> None: ...

    def event(self, event: Mapping[str, Any]) -> None: ...


def _last_migration(store: WatchStore) -> Migration | None:
    """The last confirmed migration the store recorded (by this watch or a cron-mode check)."""
    confirmed = store.events(events.CONFIRMED)
    if not confirmed:
        return None
    data = confirmed[-1].get("data")
    return Migration.from_data(data if isinstance(data, Mapping) else {})


class SentinelProbe(Protocol):
    """The continuous sensing between full rounds (``geoprobe.watch.sentinel.Sentinel``)."""

    config: SentinelConfig

    def watch(self, landmarks: Sequence[Landmark]) -> None: ...

    def hold(self, held: bool) -> None: ...


class AnomalySource(Protocol):
    """A timing, fingerprint or cloud signal, polled once per round with its measurements."""

    name: str

    def poll(self, measurements: Sequence[Measurement], now: float) -> Sequence[Anomaly]: ...


class SignalAdapter:
    """Wraps a timing signal (``sample() -> Reading``, see ``geoprobe.watch.signals``) as an
    AnomalySource.

    Signals fed by the prober (clock offsets against landmark time) get each round's measurements
    through their ``update``; the last reading is kept so the daemon can store it as a baseline.
    """

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.name: str = str(getattr(signal, "name", type(signal).__name__))
        self.last: Any = None

    def poll(self, measurements: Sequence[Measurement], now: float) -> Sequence[Anomaly]:
        update = getattr(self.signal, "update", None)
        if callable(update):
            update(measurements)
        r = self.signal.sample()
        self.last = r
        if r.available and r.anomalous:
            decisive = bool(r.decisive)
            step = r.detail.get("step_ms") if isinstance(r.detail, dict) else None
            if decisive and isinstance(step, (int, float)) and step < 0:
                # A migration's pause leaves the guest clock *behind* (the offset steps up). A step
                # down is our clock jumping ahead: NTP correcting the last step, or an admin.
                # Recorded, but it must not open a new suspicion.
                decisive = False
            precopy = bool(getattr(r, "precopy", False))
            return [Anomaly(r.name, float(r.score), r.reason, decisive, float(r.time), precopy)]
        return []


@dataclass(frozen=True, slots=True)
class WatchConfig:
    interval_s: float = 60.0
    fast_interval_s: float | None = None  # default: a quarter of interval_s, at least 0.2 s
    # Between warm-up rounds (default: the fast interval). The baseline is what every later test
    # needs, so the service builds it in seconds rather than minutes.
    warmup_interval_s: float | None = None
    warmup_rounds: int = (
        5  # rounds that build the baseline (at start and after a move) before testing
    )
    # After a confirmed move the new place's noise is unknown (a congested site can jitter by tens
    # of ms), so its baseline takes at least this many fresh rounds, none from the move itself.
    post_move_warmup_rounds: int = 6
    fix_every: int = 10  # emit a location.fix event every N quiet rounds
    min_landmarks: int = 3
    # Right after a moved fingerprint, re-measure at once instead of after fast_interval_s: the
    # agreeing re-measurement is what confirms, and every second until then is exposure.
    remeasure_at_once: bool = True
    # Per-sample probe timeout once a baseline exists: timeout_factor x the slowest landmark's
    # baseline RTT (at least min_timeout_s, never above the caller's timeout). A landmark that
    # falls silent (the new host's own server, one the move put out of reach) then costs a
    # fraction of a second per round instead of the full timeout.
    adaptive_timeout: bool = True
    # Full rounds the sentinels may start at rest: a bucket of trigger_burst, one more every
    # trigger_refill_s, and the token back when the round found something (a transition). A
    # sentinel fooled again and again (a loaded host, a flapping route) must not turn the watch
    # into a full-rate prober; a right one costs nothing.
    trigger_burst: int = 3
    trigger_refill_s: float = 180.0
    trigger_agree_s: float = 3.0  # two sentinels firing this close need no token
    # A signal's event starts a round at once at most this often: a signal that fires again and
    # again (a dirty-sync probe on a loaded host) must not make the watch probe back to back. The
    # events stay recorded; the next round hears them first.
    signal_wake_s: float = 2.0
    # Rounds probe at most this many landmarks (None: all): the ones nearest the home fix and
    # ``spread_landmarks`` spread over the rest of the catalogue, chosen again at every new
    # place. A round costs 3 probes per landmark every interval, and a synced RIPE Atlas
    # catalogue has ~800; but fewer landmarks near a new place can leave a crossing unproven
    # (docs/watch.md), so the whole catalogue is the default.
    max_landmarks: int | None = None
    spread_landmarks: int = 50
    timeout_factor: float = 2.0
    min_timeout_s: float = 0.5

    @property
    def fast(self) -> float:
        return (
            self.fast_interval_s
            if self.fast_interval_s is not None
            else max(0.2, self.interval_s / 4)
        )


@dataclass(slots=True)
class RoundResult:
    rtts: dict[str, float]
    shift: ShiftResult | None
    transitions: list[Transition]
    events: list[Event]
    fix: Fix | None
    duration_s: float


@dataclass
class Counters:
    rounds: int = 0
    failed_rounds: int = 0
    suspected: int = 0
    confirmed: dict[str, int] = field(default_factory=lambda: {"true": 0, "false": 0, "unknown": 0})
    events: int = 0
    hook_errors: int = 0
    sentinel_triggers: int = 0  # full rounds the sentinels asked for


class EventSink:
    """Writes each event as one JSON line (stdout or --events FILE), and records it when given a
    store of its own (the watcher records its events in its store itself)."""

    def __init__(self, stream: Any, store: WatchStore | None) -> None:
        self.stream = stream
        self.store = store
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            if self.store is not None:
                self.store.record_event(event)
            events.write_event(self.stream, event)


class HookRunner:
    """Runs the policy response on its own thread, in event order.

    Actions can take their full timeout (or, for ``delay``, keep running); the probing loop must
    not wait for them, or a slow webhook would blind the watch exactly when it matters.
    ``cleared()`` queues the end of a suspicion behind the events before it.
    """

    def __init__(
        self,
        respond: Callable[[Event], None],
        clear: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.respond = respond
        self.clear = clear
        self.on_error = on_error
        self.q: queue.Queue[tuple[str, Event | None] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="geoprobe-hook", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            kind, ev = item
            try:
                if kind == "event" and ev is not None:
                    self.respond(ev)
                elif kind == "clear" and self.clear is not None:
                    self.clear()
            except Exception as exc:  # noqa: BLE001  (a failing action must not stop the watch)
                if self.on_error is not None:
                    self.on_error(exc)

    def event(self, event: Event) -> None:
        self.q.put(("event", event))

    def cleared(self) -> None:
        self.q.put(("clear", None))

    def close(self, timeout: float = 30.0) -> None:
        """Let queued responses finish (up to ``timeout``), then stop the thread."""
        self.q.put(None)
        self.thread.join(timeout)


class Watcher:
    def __init__(
        self,
        catalogue: Catalogue,
        jurisdiction: Jurisdiction,
        *,
        measure: MeasureFn,
        solve: SolveFn,
        emit: Callable[[Event], None],
        store: WatchStore | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_clear: Callable[[], None] | None = None,
        signals: Sequence[AnomalySource] = (),
        metrics_path: str | Path | None = None,
        metrics_listen: tuple[str, int] | None = None,
        config: WatchConfig | None = None,
        shift_test: ShiftTest | None = None,
        clock: Callable[[], float] = time.time,
        journal: RoundJournal | None = None,
        sentinel: SentinelProbe | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.jurisdiction = jurisdiction
        self.measure = measure
        self.solve = solve
        self.emit = emit
        self.store = store
        self.on_event = on_event
        self.on_clear = on_clear
        self.signals = list(signals)
        # The textfile and/or the scrape endpoint (a port in use fails here, before any round).
        self.metrics = (
            WatchMetrics(
                textfile=Path(metrics_path) if metrics_path is not None else None,
                listen=metrics_listen,
            )
            if metrics_path is not None or metrics_listen is not None
            else None
        )
        self.config = config or WatchConfig()
        self.test = shift_test or ShiftTest()
        self.clock = clock
        self.journal = journal  # every round and event, for signed attestations
        self._landmark_timed: list[str] = []
        self.fusion = Fusion(jurisdiction)
        self.baseline = Baseline()
        self.counters = Counters()
        self.last_fix: Fix | None = None
        self.last_shift: ShiftResult | None = None
        self.last_round_s = 0.0
        self._quiet_since_fix = 0
        self._at_once = False  # the last round asks for an immediate re-measurement
        self._warmup_target = self.config.warmup_rounds  # more after a confirmed move
        self.sentinel = sentinel
        self._sentinels: list[str] | None = None  # chosen set; None: choose after the next round
        self._wake = threading.Event()  # a sentinel asks for a full round now
        self._tokens = float(self.config.trigger_burst)
        self._tokens_at = time.monotonic()
        self._spent = False  # the next round was started with a token
        self._recent_triggers: dict[str, float] = {}  # landmark -> when it last fired
        self._refused: set[str] = set()  # sentinels refused since the last round (logged once)
        self._signal_event = False  # a signal reported an event: hear it before probing
        self._signal_woke_at = -math.inf  # when a signal's event last started a round
        self._probed: list[Landmark] | None = None  # what rounds probe; None: the whole catalogue
        self._trigger_lock = threading.Lock()
        self._restore()

    # -- persistence ---------------------------------------------------------------------------
    def _restore(self) -> None:
        """Pick up where a previous run left off, so a move while we were down shows.

        A home is never taken outside the allowed set: after a crossing (the last migration event
        in the store ended outside) the watch resumes in the ``outside`` state, and a stored
        baseline whose fix is now judged outside is dropped (warm-up judges every round anew).
        """
        if self.store is None:
            return
        last = _last_migration(self.store)
        if last is not None and last.jurisdiction.get("verdict") == "outside":
            log.info("resuming outside the allowed set (in %s at the last migration)", last.to)
            self.fusion.enter_outside(None, self.clock())
            self.baseline = Baseline()
            return
        raw = self.store.load_baseline("rtt")
        if raw is None:
            return
        self.baseline = Baseline.from_json(raw)
        # The home is where the baseline was taken, solved from its medians: not the last stored
        # fix, which may be a moved one recorded mid-suspicion (killed before it was confirmed).
        rtts = {
            lid: r for lid in self.baseline.history if (r := self.baseline.rtt(lid)) is not None
        }
        try:
            if len(rtts) < self.config.min_landmarks:
                raise GeoprobeError(f"only {len(rtts)} landmarks in the stored baseline")
            fix = self.solve(rtts)
        except GeoprobeError as exc:
            log.warning("cannot re-solve the stored fix: %s; starting a new baseline", exc)
            self.baseline = Baseline()
            return
        if self.jurisdiction.judge(fix).verdict == "outside":
            log.warning("the stored baseline lies outside the allowed set; starting a new one")
            self.baseline = Baseline()
            return
        self.baseline.fix = fix
        self.fusion.rebaseline(fix)
        self.last_fix = fix
        self._choose_probed(fix)

    def _choose_probed(self, at: Fix | None) -> bool:
        """Choose what rounds probe around ``at`` (see ``WatchConfig.max_landmarks``); True when
        that is a subset of the catalogue."""
        lms = self.catalogue.landmarks
        cap = self.config.max_landmarks
        if cap is None or len(lms) <= cap or at is None:
            self._probed = None
            return False
        lat = np.array([lm.lat for lm in lms], dtype=float)
        lon = np.array([lm.lon for lm in lms], dtype=float)
        chosen = selection.spread(lat, lon, min(self.config.spread_landmarks, cap))
        chosen += selection.nearest(lat, lon, (at.lat, at.lon), set(chosen), cap - len(chosen))
        self._probed = [lms[i] for i in sorted(chosen)]
        log.info(
            "probing %d of %d landmarks: the nearest to %.2f, %.2f and %d spread over the rest",
            len(self._probed),
            len(lms),
            at.lat,
            at.lon,
            min(self.config.spread_landmarks, cap),
        )
        return True

    def _save_baseline(self) -> None:
        if self.store is not None:
            self.store.save_baseline("rtt", self.baseline.to_json())

    # -- one round -----------------------------------------------------------------------------
    def _publish(self, type_: str, data: dict[str, Any], out: list[Event]) -> None:
        ev = events.make_event(type_, data)
        if self.store is not None:
            self.store.record_event(ev)  # first: a restart reads what it last confirmed here
        self.emit(ev)
        if self.journal is not None:
            self.journal.event(ev)
        self.counters.events += 1
        out.append(ev)
        if self.on_event is not None and type_ != events.FIX:
            self.on_event(ev)

    def _record_fix(
        self, fix: Fix, rtts: Mapping[str, float], now: float, out: list[Event]
    ) -> None:
        self.last_fix = fix
        if self.store is not None:
            self.store.record_fix(fix, rtts, source="watch", time=now)
        data = fix.to_json()
        data["allowed"] = sorted(self.jurisdiction.allowed)
        data["jurisdiction"] = self.jurisdiction.judge(fix).to_json()
        # The fix rests on RTTs this VM timed; these landmarks also signed RTTs they timed.
        data["timing"] = {"fix_rtts": "vm", "landmark_timed": self._landmark_timed}
        self._publish(events.FIX, data, out)
        self._quiet_since_fix = 0

    def _anomalies(self, ms: Sequence[Measurement], now: float) -> list[Anomaly]:
        out: list[Anomaly] = []
        for s in self.signals:
            try:
                out.extend(s.poll(ms, now))
            except Exception as exc:  # noqa: BLE001  (a broken signal degrades to silence)
                log.warning("signal %s failed: %s", getattr(s, "name", s), exc)
                continue
            last = getattr(s, "last", None)
            if self.store is not None and last is not None and hasattr(last, "to_json"):
                self.store.save_baseline(f"signal:{s.name}", last.to_json())
        return out

    def _hear_signals(self, now: float, out: list[Event]) -> None:
        """At rest, let the signals that report events as they happen (a free-page hint, a
        failover unplug, a link announce, a dirty sync) raise the suspicion now, before the round
        probes: during pre-copy a round takes longer than what is left of the migration, and the
        policy's ``on.suspected`` actions are worth something only before the switchover. Signals
        fed by the round's measurements wait for it."""
        if self.fusion.state not in (State.NORMAL, State.SETTLED, State.CONFIRMED):
            return
        heard: list[Anomaly] = []
        for s, _changed in self._reporting():
            if callable(getattr(getattr(s, "signal", None), "update", None)):
                continue
            try:
                heard.extend(s.poll((), now))
            except Exception as exc:  # noqa: BLE001  (a broken signal degrades to silence)
                log.warning("signal %s failed: %s", getattr(s, "name", s), exc)
        if any(raises_suspicion(a) for a in heard):
            self._announce(self.fusion.step(Observation(None, None, heard, now)), out)

    def _reporting(self) -> list[tuple[AnomalySource, threading.Event]]:
        """The signals that report events as they happen, with their ``changed`` Event."""
        return [
            (s, e)
            for s in self.signals
            if isinstance(
                e := getattr(getattr(s, "signal", None), "changed", None), threading.Event
            )
        ]

    def _after_clock_step(self, ms: Sequence[Measurement]) -> dict[str, float] | None:
        """This round's RTTs from after a clock step inside it, when a signal can split it.

        A round that spans the switchover mixes both places and could only raise a suspicion;
        its part after the step is a whole measurement of the new place, so the move can be
        confirmed in this round instead of after a re-measurement (see ``ClockSignal.after_step``).
        """
        for s in self.signals:
            split = getattr(getattr(s, "signal", s), "after_step", None)
            if not callable(split):
                continue
            after: dict[str, float] | None = split(ms)
            if after is not None and len(after) >= self.config.min_landmarks:
                log.info(
                    "%s stepped inside this round: using the %d landmarks measured after the step",
                    s.name,
                    len(after),
                )
                return after
        return None

    def round(self) -> RoundResult:
        """Probe once, test, fuse, tell, record."""
        t0 = time.monotonic()
        now = self.clock()
        out: list[Event] = []
        fix_before = self.last_fix
        with self._trigger_lock:
            self._wake.clear()  # this round measures whatever the sentinels saw
            self._refused.clear()
        if self._signal_event:
            self._signal_event = False
            self._hear_signals(now, out)
        if self.sentinel is not None:
            self.sentinel.hold(True)
        try:
            ms = self.measure(self._probed or self.catalogue.landmarks)
        finally:
            if self.sentinel is not None:
                self.sentinel.hold(False)
        self.counters.rounds += 1
        self._landmark_timed = sorted(m.landmark_id for m in ms if m.landmark_timed_rtts_ms)
        if self.journal is not None:
            self.journal.round(now, ms)
        anomalies = self._anomalies(ms, now)
        rtts = self._after_clock_step(ms) or min_rtts(ms)
        shift, transitions = self._fuse(rtts, anomalies, now, out)
        self._announce(transitions, out)
        self._record(transitions, shift, rtts, now, out)
        self._save_baseline()
        self.last_shift = shift
        # Never twice in a row: a fingerprint that keeps moving without agreeing must not turn the
        # watch into a back-to-back prober; every other round waits the fast interval.
        # Likewise after a first round judged outside (or, outside, not): the next one decides.
        self._at_once = (
            self.config.remeasure_at_once
            and not self._at_once
            and (
                (
                    shift is not None
                    and shift.outcome == "moved"
                    and self.fusion.state in (State.SUSPECT, State.CONFIRMING)
                )
                or self.fusion.judging
            )
        )
        self._update_sentinels(rtts)
        with self._trigger_lock:
            if self._spent and transitions:  # the sentinel was right: its token comes back
                self._tokens = min(float(self.config.trigger_burst), self._tokens + 1.0)
            self._spent = False
        self.last_round_s = time.monotonic() - t0
        log.info(
            "round %d: %d of %d landmarks answered in %.2f s (%s)",
            self.counters.rounds,
            len(rtts),
            len(ms),
            self.last_round_s,
            shift.outcome if shift is not None else "no test",
        )
        self.write_metrics(
            ms, rtts, now, self.last_fix if self.last_fix is not fix_before else None
        )
        return RoundResult(
            rtts, shift, transitions, out, shift.fix if shift else None, self.last_round_s
        )

    def _fuse(
        self, rtts: dict[str, float], anomalies: list[Anomaly], now: float, out: list[Event]
    ) -> tuple[ShiftResult | None, list[Transition]]:
        """Test this round against the baseline and judge its fix; every round's verdict counts.

        The baseline only grows with rounds that neither moved nor are judged outside, so a home
        is never taken outside the allowed set, at start, during warm-up or later.
        """
        if len(rtts) < self.config.min_landmarks:
            self.counters.failed_rounds += 1
            log.warning(
                "only %d landmarks answered (need %d)", len(rtts), self.config.min_landmarks
            )
            return None, self.fusion.step(Observation(None, None, anomalies, now))
        if self.fusion.outside:
            return None, self.fusion.step(Observation(None, self._judged(rtts), anomalies, now))
        if self.warming_up:
            return self._warm_up(rtts, anomalies, now, out)
        shift = self.test.assess(self.baseline, rtts, solve=self.solve)
        fix = shift.fix or self._judged(rtts)
        transitions = self.fusion.step(Observation(shift, fix, anomalies, now))
        if (
            shift.outcome == "not_moved"
            and self.fusion.state not in (State.SUSPECT, State.CONFIRMING, State.OUTSIDE)
            and not self._outside_now()
        ):
            self.baseline.add(rtts)
            self._quiet_since_fix += 1
        return shift, transitions

    def _warm_up(
        self, rtts: dict[str, float], anomalies: list[Anomaly], now: float, out: list[Event]
    ) -> tuple[ShiftResult | None, list[Transition]]:
        """Build the baseline (at start, or at the new place after a move), probing fast.

        A move during warm-up is a move: from its second round on, each round is tested against
        what the baseline holds so far (stricter thresholds, and RTT must both fall and rise), and
        a round that moved or is judged outside is kept out of it.
        """
        fix = self.solve(rtts)
        shift: ShiftResult | None = None
        if self.baseline.rounds > 0:
            tested = WARMUP_TEST.assess(self.baseline, rtts, solve=lambda _rtts: fix)
            moved = tested.outcome == "moved" and _two_sided(tested)
            if moved and tested.distance_km is not None and tested.distance_km < WARMUP_MIN_MOVE_KM:
                moved = False
            shift = tested if moved else None
        transitions = self.fusion.step(Observation(shift, fix, anomalies, now))
        if shift is None and not self._outside_now() and not self.fusion.outside:
            self.baseline.add(rtts)
            if self.last_fix is None:
                self._record_fix(fix, rtts, now, out)  # the first fix, as soon as there is one
            if self.baseline.fix is None:
                self.baseline.fix = fix  # what the next warm-up rounds' moves are measured from
            if self.fusion.home_fix is None and self._home_here():
                self.baseline.fix = fix
                self.fusion.rebaseline(fix)
                if self._choose_probed(fix):
                    # This round placed the VM; the baseline is built from what is probed now.
                    self.baseline.reset([], fix=fix)
        return shift, transitions

    def _home_here(self) -> bool:
        """May this warm-up round's fix become the home?

        At once when it is judged inside the allowed set. A round that straddles the border may
        instead span a move (its fix then lies between both places, which is no place to call
        home), so such a round becomes the home only once a second round agrees with it.
        """
        v = self.fusion.verdict
        return (
            (v is not None and v.verdict == "inside")
            or self.baseline.rounds >= 2
            or self._warmup_target <= 1
        )

    def _judged(self, rtts: Mapping[str, float]) -> Fix | None:
        """This round's fix for its verdict; a round the engine cannot solve still counts for the
        shift test (its verdict is then neither for nor against)."""
        try:
            return self.solve(rtts)
        except GeoprobeError as exc:
            log.warning("cannot solve this round's fix: %s", exc)
            return None

    def _outside_now(self) -> bool:
        v = self.fusion.verdict
        return v is not None and v.verdict == "outside"

    def _announce(self, transitions: list[Transition], out: list[Event]) -> None:
        """Record every transition; publish the ones that carry an event; tell the policy hook."""
        for t in transitions:
            if self.store is not None:
                self.store.record_transition(t.frm.value, t.to.value, t.reasons, t.time)
            log.info("%s -> %s: %s", t.frm.value, t.to.value, "; ".join(t.reasons))
            if t.event_type is None:
                continue
            data = (
                t.migration.to_data()
                if t.migration is not None
                else {**t.data, "state": t.to.value, "reasons": t.reasons}
            )
            if t.event_type == events.SUSPECTED:
                self.counters.suspected += 1
            elif t.event_type == events.CONFIRMED:
                crossing = data.get("crossing")
                key = "unknown" if crossing is None else str(bool(crossing)).lower()
                self.counters.confirmed[key] += 1
            self._publish(t.event_type, data, out)
        self._end_of_suspicion(transitions, out)

    _suspected_id: str | None = None  # the suspected event of the episode still open

    def _end_of_suspicion(self, transitions: list[Transition], out: list[Event]) -> None:
        """Stop what a suspicion started once it is over, and give back what it took.

        Any end but a crossing stops the hold (``on_clear``). An end without a crossing (back at
        the baseline, or a move that crossed nothing and ends judged inside) also publishes one
        ``io.geoprobe.migration.cleared`` naming the suspected event it answers, on which the
        policy runs ``on.cleared``; a crossing, or one that cannot be told, publishes none.
        """
        announced = [t for t in transitions if t.event_type is not None]
        published = dict(zip(map(id, announced), out[len(out) - len(announced) :], strict=True))
        stop, reason, answered = False, None, None
        for t in transitions:
            crossing = t.data.get("crossing") if t.to == State.CONFIRMED else None
            if (ev := published.get(id(t))) is not None and ev["type"] == events.SUSPECTED:
                self._suspected_id = str(ev["id"])
            elif t.to == State.NORMAL or (t.to == State.CONFIRMED and crossing is not True):
                stop = True
                reason = "suspicion_cleared" if t.to == State.NORMAL else None
                judged = t.data.get("jurisdiction") or {}
                inside = crossing is False and judged.get("verdict") == "inside"
                reason = "moved_inside" if inside else reason
                answered, self._suspected_id = self._suspected_id, None
            elif t.to == State.CONFIRMED:
                self._suspected_id = None  # a crossing: nothing is given back
        if any(t.to == State.NORMAL for t in transitions):
            # Judged no move: what the signals see now is this place (a same-site migration's
            # clock step stays in their windows and would raise the same suspicion again).
            self._rebaseline_signals()
        if stop and self.on_clear is not None:
            self.on_clear()  # the suspicion is over: stop what it started (e.g. a delay)
        if reason is not None:
            self._publish(events.CLEARED, events.cleared_data(reason, answered), out)

    def _record(
        self,
        transitions: list[Transition],
        shift: ShiftResult | None,
        rtts: dict[str, float],
        now: float,
        out: list[Event],
    ) -> None:
        """Re-baseline after a confirmed move; keep fixes (and emit one now and then)."""
        if (
            any(t.to == State.CONFIRMED for t in transitions)
            and self.fusion.confirmed_fix is not None
        ):
            new = self.fusion.confirmed_fix
            self._rebaseline_signals()
            self._sentinels = None  # chosen again at the new place
            self._choose_probed(new)  # and so are the landmarks rounds probe
            if self.fusion.outside:
                # No home outside the allowed set: no baseline, every round judged instead.
                self.baseline.reset([], fix=None)
                self._record_fix(new, rtts, now, out)
                return
            # Not seeded with this round: it may straddle the switchover or the new site's warm-up.
            self.baseline.reset([], fix=new)
            self._warmup_target = max(
                self.config.warmup_rounds, self.config.post_move_warmup_rounds
            )
            self.fusion.rebaseline(new)
            self._record_fix(new, rtts, now, out)
        elif shift is not None and shift.fix is not None:
            self.last_fix = shift.fix
            if self.store is not None:
                self.store.record_fix(shift.fix, rtts, source="watch", time=now)
        elif self.fusion.outside and rtts:
            self._quiet_since_fix += 1
            if self._quiet_since_fix >= self.config.fix_every:
                self._record_fix(self.solve(rtts), rtts, now, out)
        elif self._quiet_since_fix >= self.config.fix_every and rtts:
            self._record_fix(self.solve(rtts), rtts, now, out)

    def _rebaseline_signals(self) -> None:
        """After a confirmed move, or a suspicion judged no move, signals compare with the place
        as it is now (the clock step and the new host's fingerprint must not raise the next
        suspicion)."""
        for s in self.signals:
            sig = getattr(s, "signal", s)
            for name in ("rebaseline", "reset"):
                fn = getattr(sig, name, None)
                if callable(fn):
                    try:
                        fn()
                    except Exception as exc:  # noqa: BLE001  (a broken signal degrades to silence)
                        log.warning("signal %s: cannot rebaseline: %s", getattr(s, "name", s), exc)
                    break

    # -- sentinels ---------------------------------------------------------------------------
    def trigger(self, why: Trigger) -> bool:
        """A sentinel saw a change: start the next full round now (called from its thread).

        At rest it takes a token from the bucket, given back if the round finds something;
        while a suspicion is open, or outside the allowed set, rounds are what is needed. A
        clock step (several sentinels at once, by construction) or two sentinels firing within
        ``trigger_agree_s`` need no token. False when refused: the sentinel then keeps its floor
        and asks again with its next sample, so a move seen while the bucket is empty still
        starts a round as soon as a second sentinel sees it too, instead of waiting for the
        interval.
        """
        c = self.config
        with self._trigger_lock:
            now = time.monotonic()
            refill = (now - self._tokens_at) / c.trigger_refill_s if c.trigger_refill_s > 0 else 1
            self._tokens = min(float(c.trigger_burst), self._tokens + refill)
            self._tokens_at = now
            self._recent_triggers[why.landmark] = now
            # Two sentinels within a few seconds: a move changes several paths at once; what
            # fools one sentinel (a route, one path's queue) seldom fools another just then.
            agreed = why.kind == "clock" or (
                sum(1 for t in self._recent_triggers.values() if now - t <= c.trigger_agree_s) >= 2
            )
            at_rest = self.fusion.state in (State.NORMAL, State.SETTLED, State.CONFIRMED)
            at_rest = at_rest and not agreed
            if self._wake.is_set():
                log.info("%s: a full round is due already", why.describe())
                return True
            if at_rest and self._tokens < 1.0:
                if why.landmark not in self._refused:
                    self._refused.add(why.landmark)
                    log.info("%s: the trigger budget is spent", why.describe())
                return False
            if at_rest:
                self._tokens -= 1.0
                self._spent = True
            self.counters.sentinel_triggers += 1
            self._refused.discard(why.landmark)
        log.info("%s: full round now", why.describe())
        self._wake.set()
        return True

    def _update_sentinels(self, rtts: Mapping[str, float]) -> None:
        """Pause the sentinels while the baseline is built (rounds come fast then anyway); once
        it is, choose them from its floors and noise, around the home fix. Outside the allowed
        set there is no baseline: they are chosen from the round's RTTs."""
        if self.sentinel is None:
            return
        if self.warming_up or len(rtts) < self.config.min_landmarks:
            if self._sentinels:
                self.sentinel.watch([])
            self._sentinels = None
            return
        if self._sentinels is not None:
            return
        floors: dict[str, float] = dict(rtts)
        noise: dict[str, float] = {}
        if self.baseline.rounds > 0:
            for lid in self.baseline.history:
                r = self.baseline.rtt(lid)
                sc = self.baseline.scale(lid, floor_ms=0.0, rel_floor=0.0)
                if r is not None and sc is not None:
                    floors[lid], noise[lid] = r, sc
        home = self.baseline.fix or self.last_fix
        ids = select_sentinels(
            floors,
            self.catalogue.landmarks,
            (home.lat, home.lon) if home is not None else None,
            self.sentinel.config,
            noise=noise,
        )
        by_id = {lm.id: lm for lm in self.catalogue.landmarks}
        self._sentinels = ids
        self.sentinel.watch([by_id[i] for i in ids])

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        """Sleep until the next round is due, a sentinel asks for one, a signal reports an event
        as it happens (its ``changed`` Event: a dirty sync, a platform notice), or ``stop``: a
        pre-copy suspicion is worth something only before the switchover."""
        wakers = [e for _s, e in self._reporting()]
        if self.sentinel is None and not wakers:
            stop.wait(seconds)
            return
        end = time.monotonic() + seconds
        while not stop.is_set() and not self._wake.is_set():
            if any(e.is_set() for e in wakers):
                for e in wakers:
                    e.clear()
                self._signal_event = True
                now = time.monotonic()
                if now - self._signal_woke_at >= self.config.signal_wake_s:
                    self._signal_woke_at = now
                    log.info("a signal reported an event: full round now")
                    return
            left = end - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(left, 0.1 if wakers else 0.25))

    def probe_timeout(self, limit: float) -> float:
        """The per-sample timeout for the next round (see ``WatchConfig.adaptive_timeout``)."""
        if not self.config.adaptive_timeout or self.baseline.rounds == 0:
            return limit
        worst = max(
            (r for r in (self.baseline.rtt(lid) for lid in self.baseline.history) if r), default=0.0
        )
        if worst <= 0:
            return limit
        return min(
            limit, max(self.config.min_timeout_s, self.config.timeout_factor * worst / 1000.0)
        )

    # -- the loop ------------------------------------------------------------------------------
    @property
    def warming_up(self) -> bool:
        return self.baseline.rounds < self._warmup_target and self.fusion.state in (
            State.NORMAL,
            State.CONFIRMED,
            State.SETTLED,
        )

    @property
    def interval(self) -> float:
        if self._at_once:
            return 0.0
        if self.warming_up and self.config.warmup_interval_s is not None:
            return self.config.warmup_interval_s
        return self.config.fast if self.fusion.fast or self.warming_up else self.config.interval_s

    def run(self, stop: threading.Event, *, max_rounds: int | None = None) -> None:
        """Round after round until ``stop`` is set (SIGTERM/SIGINT in the CLI); sleeps are
        interruptible. However it ends, the metrics then say the watch is no longer up."""
        try:
            self._run(stop, max_rounds)
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _run(self, stop: threading.Event, max_rounds: int | None) -> None:
        n = 0
        while not stop.is_set():
            start = time.monotonic()
            try:
                self.round()
            except GeoprobeError as exc:
                self.counters.failed_rounds += 1
                log.warning("round failed: %s", exc)
            n += 1
            if max_rounds is not None and n >= max_rounds:
                return
            self._wait(stop, max(0.0, self.interval - (time.monotonic() - start)))

    def write_metrics(
        self,
        ms: Sequence[Measurement],
        rtts: Mapping[str, float],
        now: float,
        fix: Fix | None,
    ) -> None:
        """The round's values; a round that solved no fix is solved here, so the fix gauges
        describe this round and never an older one."""
        if self.metrics is None:
            return
        if fix is None and len(rtts) >= self.config.min_landmarks:
            try:
                fix = self.solve(rtts)
            except GeoprobeError:
                fix = None
        c = self.counters
        r = RoundMetrics(
            timestamp_s=now,
            duration_s=self.last_round_s,
            interval_s=self.interval,
            landmarks_answered=len(rtts),
            warming_up=self.warming_up,
            state=self.fusion.state.value,
            states=[s.value for s in State],
            changed_landmarks=len(self.last_shift.changed) if self.last_shift else None,
            fix=None
            if fix is None
            else FixMetrics(
                lat=fix.lat,
                lon=fix.lon,
                error_radius_m=fix.error_radius_km * 1000,
                allowed_probability=fix.probability_in(set(self.jurisdiction.allowed)),
                certified=fix.certified,
            ),
            rounds=c.rounds,
            failed_rounds=c.failed_rounds,
            suspected=c.suspected,
            confirmed=dict(c.confirmed),
            events=c.events,
            hook_errors=c.hook_errors,
            rejected=self.metrics.count_rejected(m.rejected for m in ms),
        )
        try:
            self.metrics.observe(r)
        except OSError as exc:  # a full disk or a vanished directory must not stop the watch
            log.warning("cannot write metrics to %s: %s", self.metrics.textfile, exc)
