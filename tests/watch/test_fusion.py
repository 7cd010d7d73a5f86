"""The state machine: crossings need a sound exit from the allowed set plus corroboration."""

from __future__ import annotations

import pytest
from watch_world import make_fix

from geoprobe import events
from geoprobe.geo.fix import Fix
from geoprobe.watch.fusion import Anomaly, Fusion, Observation, State, Transition
from geoprobe.watch.jurisdiction import Jurisdiction
from geoprobe.watch.shift import ShiftResult

FRANKFURT = make_fix(50.11, 8.68, 120, [("DE", 0.99), ("FR", 0.01)])
PARIS = make_fix(48.86, 2.35, 120, [("FR", 0.99), ("BE", 0.01)])
BERLIN = make_fix(52.52, 13.40, 120, [("DE", 0.99), ("PL", 0.01)])
MADRID = make_fix(40.42, -3.70, 120, [("ES", 0.99), ("PT", 0.01)])
# Strasbourg with a large sound region: its calibrated verdict says FR, but the sound region
# reaches DE.
STRASBOURG_WIDE = make_fix(48.58, 7.75, 300, [("FR", 0.97), ("DE", 0.03)])
CHANGED = [f"lm{i:02d}" for i in range(20)]


def moved(
    fix: Fix, changed: list[str] = CHANGED, decreased: list[str] | None = None
) -> ShiftResult:
    dec = decreased if decreased is not None else changed[:5]
    return ShiftResult(
        outcome="moved",
        p_value=1e-12,
        compared=60,
        changed=changed,
        decreased=dec,
        increased=[c for c in changed if c not in dec],
        common_mode_ms=0.1,
        max_move_km=900.0,
        near="lm01",
        distance_km=480.0,
        fix=fix,
        reasons=["20 of 60 landmarks changed"],
    )


def quiet() -> ShiftResult:
    return ShiftResult(
        outcome="not_moved",
        p_value=0.5,
        compared=60,
        changed=[],
        decreased=[],
        increased=[],
        common_mode_ms=0.0,
        max_move_km=90.0,
        near="lm07",
        distance_km=None,
        fix=None,
        reasons=["still near lm07: moved at most 90 km"],
    )


def fusion(allowed: str = "DE", **kw: object) -> Fusion:
    f = Fusion(Jurisdiction.of(allowed.split(","), **kw))  # type: ignore[arg-type]
    f.rebaseline(FRANKFURT)
    return f


def run(f: Fusion, observations: list[Observation]) -> list[Transition]:
    out: list[Transition] = []
    for i, o in enumerate(observations):
        o.time = 1000.0 + i
        out += f.step(o)
    assert all(t.reasons for t in out), "every transition carries its reasons"
    return out


def confirmed(ts: list[Transition]) -> list[Transition]:
    return [t for t in ts if t.event_type == events.CONFIRMED]


def test_quiet_rounds_change_nothing() -> None:
    f = fusion()
    assert run(f, [Observation(quiet()) for _ in range(20)]) == []
    assert f.state == State.NORMAL and not f.fast


def test_cross_border_move_is_confirmed_on_the_agreeing_remeasurement() -> None:
    f = fusion()
    ts = run(f, [Observation(moved(PARIS))])
    assert [t.to for t in ts] == [State.SUSPECT]
    assert ts[0].event_type == events.SUSPECTED and f.fast
    ts = run(f, [Observation(moved(PARIS))])
    # Outside the allowed set no home is taken: the state says so.
    assert [t.to for t in ts] == [State.CONFIRMING, State.CONFIRMED, State.OUTSIDE]
    (c,) = confirmed(ts)
    assert c.data["crossing"] is True
    assert c.data["from"] == "DE" and c.data["to"] == "FR"
    assert c.data["jurisdiction"]["rule"] == "sound"
    assert "rtt_fingerprint" in c.data["signals"]
    assert any("re-measurement" in r for r in c.reasons)
    assert f.confirmed_fix is PARIS


def test_single_outside_measurement_is_not_enough() -> None:
    f = fusion()
    ts = run(
        f,
        [
            Observation(moved(PARIS)),
            Observation(quiet()),
            Observation(quiet()),
            Observation(quiet()),
        ],
    )
    assert confirmed(ts) == []
    assert f.state == State.NORMAL
    assert "still near lm07" in ts[-1].reasons[0]


def test_move_within_the_allowed_country_is_not_a_crossing() -> None:
    f = fusion()
    ts = run(f, [Observation(moved(BERLIN)), Observation(moved(BERLIN))])
    (c,) = confirmed(ts)
    assert c.data["crossing"] is False and c.data["to"] == "DE"
    assert any("within the allowed set" in r for r in c.reasons)


def test_allowed_group_makes_a_move_to_france_no_crossing() -> None:
    f = fusion("DE,FR")
    (c,) = confirmed(run(f, [Observation(moved(PARIS)), Observation(moved(PARIS))]))
    assert c.data["crossing"] is False


def test_region_overlapping_the_allowed_set_is_never_a_confirmed_crossing() -> None:
    f = fusion()
    ts = run(f, [Observation(moved(STRASBOURG_WIDE)) for _ in range(8)])
    cs = confirmed(ts)
    assert len(cs) == 1 and cs[0].data["crossing"] is None  # the policy's "unknown" verdict
    assert any("straddling" in r for r in cs[0].reasons)


def test_calibrated_basis_is_opt_in() -> None:
    f = fusion(basis="calibrated", min_probability=0.95)
    (c,) = confirmed(
        run(f, [Observation(moved(STRASBOURG_WIDE)), Observation(moved(STRASBOURG_WIDE))])
    )
    assert c.data["crossing"] is True and c.data["jurisdiction"]["rule"] == "probability"


def test_disagreeing_remeasurements_do_not_confirm() -> None:
    f = fusion()
    other = [f"lm{i:02d}" for i in range(30, 50)]
    ts = run(f, [Observation(moved(PARIS)), Observation(moved(PARIS, changed=other))])
    assert confirmed(ts) == [] and f.state == State.SUSPECT
    ts = run(f, [Observation(moved(PARIS, changed=other))])
    assert confirmed(ts)[0].data["crossing"] is True


def test_independent_signal_corroborates_a_single_outside_fix() -> None:
    clock = Anomaly("clock_offset", 8.0, "offset stepped +52 ms", decisive=True)
    f = fusion()
    ts = run(f, [Observation(moved(STRASBOURG_WIDE), anomalies=[clock]), Observation(moved(PARIS))])
    (c,) = confirmed(ts)
    assert c.data["crossing"] is True and "clock_offset" in c.data["signals"]
    assert any("corroborated by clock_offset" in r for r in c.reasons)
    # Without the signal the same sequence waits for a second outside fix.
    f = fusion()
    assert confirmed(run(f, [Observation(moved(STRASBOURG_WIDE)), Observation(moved(PARIS))])) == []
    assert f.state == State.CONFIRMING


def test_decisive_signal_alone_raises_then_clears_a_suspicion() -> None:
    f = fusion()
    ts = run(
        f,
        [
            Observation(
                quiet(), anomalies=[Anomaly("gce_maintenance", 1.0, "MIGRATE_ON_HOST_MAINTENANCE")]
            )
        ],
    )
    assert [t.to for t in ts] == [State.SUSPECT] and ts[0].data["signals"] == ["gce_maintenance"]
    ts = run(f, [Observation(quiet()) for _ in range(3)])
    assert [t.to for t in ts] == [State.NORMAL]


def test_weak_signal_never_raises_a_suspicion() -> None:
    f = fusion()
    assert (
        run(
            f,
            [Observation(quiet(), anomalies=[Anomaly("steal", 9.0, "steal 40%", decisive=False)])],
        )
        == []
    )


def test_confirmed_settles_after_quiet_rounds_and_a_second_move_opens_a_new_episode() -> None:
    f = fusion("DE,FR")
    run(f, [Observation(moved(PARIS)), Observation(moved(PARIS))])
    assert f.state == State.CONFIRMED
    f.rebaseline(PARIS)
    ts = run(f, [Observation(quiet()) for _ in range(3)])
    assert [t.to for t in ts] == [State.SETTLED]
    ts = run(f, [Observation(moved(MADRID)), Observation(moved(MADRID))])
    (c,) = confirmed(ts)
    assert c.data["from"] == "FR" and c.data["to"] == "ES" and c.data["crossing"] is True


def test_calibrated_outside_needs_rtt_decreases() -> None:
    f = fusion(basis="calibrated", min_probability=0.95)
    ts = run(f, [Observation(moved(STRASBOURG_WIDE, decreased=[])) for _ in range(8)])
    (c,) = confirmed(ts)
    assert c.data["crossing"] is None  # never a crossing that added delay could have forged
    assert any("could be added delay" in r for r in c.reasons)


def test_a_move_between_two_places_outside_is_no_new_crossing() -> None:
    f = fusion()
    f.rebaseline(PARIS)  # the VM already stood outside DE
    (c,) = confirmed(run(f, [Observation(moved(MADRID)), Observation(moved(MADRID))]))
    assert c.data["crossing"] is False and c.data["from"] == "FR"
    assert any("no new crossing" in r for r in c.reasons)


def unsure(fix: Fix) -> ShiftResult:
    return ShiftResult(
        outcome="unsure",
        p_value=1e-9,
        compared=60,
        changed=CHANGED,
        decreased=[],
        increased=CHANGED,
        common_mode_ms=2.0,
        max_move_km=900.0,
        near="lm01",
        distance_km=80.0,
        fix=fix,
        reasons=["20 of 60 landmarks changed beyond noise, but RTT fell to only 0"],
    )


def test_persistent_rises_suspect_then_confirm_an_unknown_crossing() -> None:
    f = fusion()
    ts = run(f, [Observation(unsure(FRANKFURT)) for _ in range(2)])
    assert ts == [] and f.fast  # unsure: probe faster, say nothing yet
    ts = run(f, [Observation(unsure(FRANKFURT))])
    assert [t.to for t in ts] == [State.SUSPECT] and "without RTT falling" in ts[0].reasons[0]
    ts = run(f, [Observation(unsure(PARIS)) for _ in range(5)])
    (c,) = confirmed(ts)
    assert c.data["crossing"] is None and "cannot be placed" in c.reasons[0]
    assert f.state == State.OUTSIDE  # its fix is judged outside: no home there
    assert run(f, [Observation(quiet()) for _ in range(3)]) == []


def test_a_passing_load_spike_clears() -> None:
    f = fusion()
    ts = run(
        f,
        [Observation(unsure(FRANKFURT)), Observation(quiet()), Observation(unsure(FRANKFURT))]
        + [Observation(quiet()) for _ in range(5)],
    )
    assert ts == [] and not f.fast


def test_a_proof_backed_by_a_signal_confirms_in_the_first_round() -> None:
    clock = Anomaly("clock_landmarks", 9.0, "clock offset stepped +50.2 ms", decisive=True)
    f = fusion()
    ts = run(f, [Observation(moved(PARIS), anomalies=[clock])])
    assert [t.to for t in ts] == [
        State.SUSPECT,
        State.CONFIRMING,
        State.CONFIRMED,
        State.OUTSIDE,
    ]
    (c,) = confirmed(ts)
    assert c.data["crossing"] is True and c.data["from"] == "DE" and c.data["to"] == "FR"
    assert "clock_landmarks" in c.data["signals"] and c.data["rounds"] == 1
    # A weak signal is no corroboration, and a calibrated-only "outside" still waits for a second
    # round.
    f = fusion()
    steal = Anomaly("steal", 9.0, "steal 40%", decisive=False)
    assert [t.to for t in run(f, [Observation(moved(PARIS), anomalies=[steal])])] == [State.SUSPECT]
    f = fusion(basis="calibrated")
    assert [t.to for t in run(f, [Observation(moved(STRASBOURG_WIDE), anomalies=[clock])])] == [
        State.SUSPECT
    ]


def test_a_migration_in_progress_raises_a_suspicion_on_its_own() -> None:
    dirty = Anomaly("dirty_pages", 5.0, "pages re-dirtied at 40 MB/s", decisive=False, precopy=True)
    for settled in (False, True):
        f = fusion()
        if settled:
            run(f, [Observation(moved(BERLIN)), Observation(moved(BERLIN))])
            f.rebaseline(BERLIN)
            run(f, [Observation(quiet()) for _ in range(3)])
            assert f.state == State.SETTLED
        ts = run(f, [Observation(quiet(), anomalies=[dirty])])
        assert [t.to for t in ts] == [State.SUSPECT] and ts[0].event_type == events.SUSPECTED
        assert ts[0].data["signals"] == ["dirty_pages"] and f.fast
        assert any("dirty_pages" in r for r in ts[0].reasons)
    # Also before the first round has a fingerprint to test (warm-up, too few landmarks).
    f = fusion()
    ts = run(f, [Observation(None, anomalies=[dirty])])
    assert [t.to for t in ts] == [State.SUSPECT]
    # A precopy signal marks the start; it is no corroboration of a crossing unless decisive.
    ts = run(f, [Observation(moved(STRASBOURG_WIDE)), Observation(moved(PARIS))])
    assert confirmed(ts) == []
    # The same signal without the flag (and not decisive) says nothing.
    f = fusion()
    weak = Anomaly("dirty_pages", 5.0, "pages re-dirtied", decisive=False)
    assert run(f, [Observation(quiet(), anomalies=[weak])]) == []


def test_a_load_sensitive_signal_corroborates_but_never_raises_a_suspicion() -> None:
    slow = Anomaly("first_write", 9.0, "slow first-write passes", decisive=True)
    f = fusion()
    assert run(f, [Observation(quiet(), anomalies=[slow])]) == []
    sync = Anomaly("dirty_sync", 9.0, "every chunk's first write slow", precopy=True)
    assert [t.to for t in run(f, [Observation(quiet(), anomalies=[sync])])] == [State.SUSPECT]


def test_outside_without_a_move_is_a_crossing_from_nowhere_then_back_is_none() -> None:
    f = Fusion(Jurisdiction.of(["DE"]))  # a watch that never saw the VM inside
    ts = run(f, [Observation(None, MADRID)])
    assert ts == [] and f.fast  # one outside verdict: re-measure soon, say nothing yet
    ts = run(f, [Observation(None, MADRID)])
    assert [t.to for t in ts] == [State.CONFIRMED, State.OUTSIDE]
    (c,) = confirmed(ts)
    assert c.data["crossing"] is True and c.data["from"] is None and c.data["to"] == "ES"
    assert c.data["signals"] == ["jurisdiction"] and c.data["proof"] is True
    assert "never seen inside" in c.reasons[0]
    assert c.migration is not None and c.migration.to_data() == c.data
    # Outside, every round is judged and nothing more is said until it is back.
    assert run(f, [Observation(None, MADRID) for _ in range(5)]) == []
    assert run(f, [Observation(None, FRANKFURT)]) == []
    ts = run(f, [Observation(None, FRANKFURT)])
    (back,) = confirmed(ts)
    assert back.data["crossing"] is False and (back.data["from"], back.data["to"]) == ("ES", "DE")
    assert f.state == State.CONFIRMED and f.confirmed_fix is FRANKFURT


def test_a_quiet_fingerprint_outside_is_still_a_crossing() -> None:
    """The shift test saw nothing, the verdict did: every round's verdict counts."""
    f = fusion()
    ts = run(f, [Observation(quiet(), PARIS), Observation(quiet(), PARIS)])
    (c,) = confirmed(ts)
    assert c.data["crossing"] is True and c.data["from"] == "DE"
    # One outside round between inside ones is not enough.
    f = fusion()
    obs = [
        Observation(quiet(), PARIS),
        Observation(quiet(), FRANKFURT),
        Observation(quiet(), PARIS),
    ]
    assert confirmed(run(f, obs)) == [] and f.state == State.NORMAL


def test_outside_by_probability_alone_is_an_unknown_crossing() -> None:
    f = Fusion(Jurisdiction.of(["DE"], basis="calibrated", min_probability=0.95))
    (c,) = confirmed(run(f, [Observation(None, STRASBOURG_WIDE) for _ in range(2)]))
    assert c.data["crossing"] is None and c.data["proof"] is False
    assert c.data["p_allowed"] == c.data["jurisdiction"]["p_allowed"] == 0.03


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("state", list(State), ids=str)
def test_each_state_has_a_handler_headed_by_its_line_of_the_module_docstring(
    state: State,
) -> None:
    import inspect

    from geoprobe.watch import fusion

    module_lines = [_flat(b) for b in (fusion.__doc__ or "").split("\n* ")[1:]]
    handler = fusion.HANDLERS[state]
    head = _flat(inspect.getdoc(handler).split("\n\n")[0])  # type: ignore[union-attr]
    assert head in module_lines, (handler.__name__, head)
    assert state.value in head.split(" -> ")[0].split("/"), (state, head)
