"""The chain: every removal, reordering and edit is reported naming its period; bad input is one
line and a failing exit, never a traceback."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoprobe.attest import chain, dsse, publish
from geoprobe.attest.statement import hour_label
from geoprobe.attest.verify import Entry, Report, load_entries, verify_chain
from geoprobe.geo.countries import default_index
from geoprobe.probe import keys
from tests.fuzz.hostile import FUZZ

from .attest_world import cli
from .chainkit import Kit, issue, make_kit

N = 24


@pytest.fixture(scope="module")
def kit() -> Kit:
    return make_kit()


@pytest.fixture(scope="module")
def issued(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> list[chain.Issued]:
    return issue(kit, tmp_path_factory.mktemp("chain"), N)


def _verify(kit: Kit, entries: list[Entry], **kw: object) -> Report:
    return verify_chain(entries, kit.vm.public_key(), kit.by_id, default_index(), **kw)  # type: ignore[arg-type]


def _entries(issued: list[chain.Issued]) -> list[Entry]:
    return [Entry(i.path.name, i.envelope) for i in issued]


def test_a_whole_chain_verifies(kit: Kit, issued: list[chain.Issued]) -> None:
    rep = _verify(kit, _entries(issued))
    assert rep.ok, rep.problems
    assert [v for _, v, _ in rep.periods] == ["inside"] * N
    assert [lbl for lbl, _, _ in rep.periods] == [i.period.label for i in issued]


def test_issuing_again_adds_nothing_and_continues_the_chain(kit: Kit, tmp_path: Path) -> None:
    first = issue(kit, tmp_path, 2)
    assert issue(kit, tmp_path, 2) == []
    more = issue(kit, tmp_path, 4)
    assert [i.sequence for i in first + more] == [0, 1, 2, 3]
    pred = json.loads(more[0].envelope.payload)["predicate"]
    assert pred["previous"] == first[-1].envelope.digest
    assert _verify(kit, load_entries(tmp_path)).ok


@pytest.mark.parametrize("k", range(N))
def test_removing_any_one_is_a_gap_naming_its_hour(
    kit: Kit, issued: list[chain.Issued], k: int
) -> None:
    entries = _entries(issued)
    del entries[k]
    rep = _verify(kit, entries, until=issued[-1].period.end)
    assert not rep.ok
    assert any(issued[k].period.label in p or _start(issued[k]) in p for p in rep.problems), (
        rep.problems
    )


def _start(i: chain.Issued) -> str:
    return hour_label(i.period.start, i.period.end).split("..")[0]


@pytest.mark.parametrize("k", range(N - 1))
def test_reordering_any_one_is_named(kit: Kit, issued: list[chain.Issued], k: int) -> None:
    entries = _entries(issued)
    entries[k], entries[k + 1] = entries[k + 1], entries[k]
    rep = _verify(kit, entries)
    assert any("out of order" in p for p in rep.problems), rep.problems
    assert any(issued[k].period.label in p for p in rep.problems), rep.problems


@pytest.mark.parametrize("k", range(N))
def test_editing_any_one_is_named(kit: Kit, issued: list[chain.Issued], k: int) -> None:
    entries = _entries(issued)
    env = issued[k].envelope
    pred = json.loads(env.payload)
    pred["predicate"]["rounds"][0]["rtts"]["Dallas"]["landmark_timed_ms"] = 0.5
    edited = dsse.Envelope(env.payload_type, json.dumps(pred).encode(), env.signatures)
    entries[k] = Entry(entries[k].where, edited)
    rep = _verify(kit, entries)
    assert not rep.ok
    assert any(issued[k].period.label in p and "signature" in p for p in rep.problems)


def _resigned(kit: Kit, issued: list[chain.Issued], k: int, edit: object) -> list[Entry]:
    """The VM itself lies: it edits a statement and signs it again with its own key."""
    entries = _entries(issued)
    st_ = json.loads(issued[k].envelope.payload)
    edit(st_["predicate"])  # type: ignore[operator]
    entries[k] = Entry(entries[k].where, dsse.sign(kit.vm, st_))
    return entries


def test_a_re_signed_edit_breaks_the_next_link(kit: Kit, issued: list[chain.Issued]) -> None:
    entries = _resigned(kit, issued, 5, lambda p: p["events"].append({"type": "x"}))
    rep = _verify(kit, entries)
    assert [p for p in rep.problems if "does not chain" in p and issued[6].period.label in p]


def test_a_claimed_rtt_the_landmark_did_not_sign_is_caught(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    def shrink(p: dict) -> None:  # type: ignore[type-arg]
        p["rounds"][1]["rtts"]["Denver"]["landmark_timed_ms"] = 1.0

    rep = _verify(kit, _resigned(kit, issued, N - 1, shrink))
    assert any("Denver is claimed as 1.000 ms" in p for p in rep.problems), rep.problems


def test_a_certificate_the_statements_do_not_support_is_caught(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    def drop_evidence(p: dict) -> None:  # type: ignore[type-arg]
        for r in p["rounds"]:
            r["statements"] = []
            for v in r["rtts"].values():
                v["landmark_timed_ms"] = None

    rep = _verify(kit, _resigned(kit, issued, 3, drop_evidence))
    label = issued[3].period.label
    assert any(label in p and "certificate US is not what" in p for p in rep.problems)
    assert any(label in p and "verdict inside" in p for p in rep.problems)


def test_old_evidence_cannot_be_replayed_into_another_hour(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    old = json.loads(issued[0].envelope.payload)["predicate"]["rounds"][0]["statements"]

    def replay(p: dict) -> None:  # type: ignore[type-arg]
        p["rounds"][0]["statements"] = old

    rep = _verify(kit, _resigned(kit, issued, 7, replay))
    label = issued[7].period.label
    assert any(label in p and "outside this period" in p for p in rep.problems)
    assert any(label in p and "reused" in p for p in rep.problems)


def test_shrunk_vm_timed_rtts_are_flagged(kit: Kit, tmp_path: Path) -> None:
    rounds = [kit.round(1_800_000_000 + 100 * k, shrink=0.3) for k in range(3)]
    issued = chain.issue(
        tmp_path,
        kit.vm,
        rounds,
        [],
        landmarks=kit.by_id,
        allowed=["US"],
        countries=default_index(),
        catalogue="t",
        now=1_800_003_600,
        period_s=3600,
    )
    rep = _verify(kit, _entries(issued))
    assert any("the VM shaped its own timing" in p for p in rep.problems), rep.problems


def test_another_vms_chain_is_one_line(kit: Kit, issued: list[chain.Issued]) -> None:
    other = keys.generate()
    rep = verify_chain(_entries(issued), other.public_key(), kit.by_id, default_index())
    assert len(rep.problems) == 1 and "another VM" in rep.problems[0]


def test_a_chain_that_starts_late_is_reported_unless_partial(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    entries = _entries(issued)[3:]
    assert not _verify(kit, entries).ok
    assert _verify(kit, entries, partial=True).ok


def test_cloudevents_collected_as_json_lines_verify(
    kit: Kit, issued: list[chain.Issued], tmp_path: Path
) -> None:
    log = tmp_path / "collected.jsonl"
    log.write_text("".join(json.dumps(publish.cloudevent(i)) + "\n" for i in issued))
    assert _verify(kit, load_entries(log)).ok
    ev = publish.cloudevent(issued[0])
    assert ev["type"] == publish.ATTESTED and ev["id"] == issued[0].envelope.digest
    assert ev["specversion"] == "1.0" and ev["data"]["payloadType"] == dsse.PAYLOAD_TYPE


# -- the CLI: exit codes and one-line errors ----------------------------------------------


@pytest.fixture
def files(kit: Kit, issued: list[chain.Issued], tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "chain"
    d.mkdir()
    for i in issued:
        (d / i.path.name).write_bytes(i.path.read_bytes())
    return {
        "chain": d,
        "cat": kit.write_catalogue(tmp_path / "cat.json"),
        "pub": kit.pub_file(tmp_path / "identity.pub"),
    }


def _run(
    files: dict[str, Path], *extra: str, chain_path: Path | None = None
) -> tuple[int, str, str]:
    return cli(
        "attest",
        "verify",
        str(chain_path or files["chain"]),
        "--vm-key",
        str(files["pub"]),
        "--landmarks",
        str(files["cat"]),
        *extra,
    )


def test_cli_exit_0_when_verified(files: dict[str, Path]) -> None:
    code, out, err = _run(files)
    assert code == 0 and out.startswith(f"OK: {N} attestation(s) verified") and not err


def test_cli_exit_1_naming_the_missing_hour(
    files: dict[str, Path], issued: list[chain.Issued]
) -> None:
    issued_path = files["chain"] / issued[10].path.name
    issued_path.unlink()
    code, out, _ = _run(files)
    assert code == 1
    assert f"gap: 1 attestation(s) missing for {issued[10].period.label}" in out


def test_cli_truncated_envelope_is_one_line(
    files: dict[str, Path], issued: list[chain.Issued]
) -> None:
    p = files["chain"] / issued[4].path.name
    p.write_bytes(p.read_bytes()[:100])
    code, out, err = _run(files)
    assert code == 1 and "Traceback" not in out + err
    (line,) = [ln for ln in out.splitlines() if ln.startswith("FAIL ")]
    assert issued[4].path.name in line and issued[4].period.label in line


def test_cli_wrong_key_is_one_line(files: dict[str, Path]) -> None:
    files["pub"].write_text(base64.b64encode(keys.public_raw(keys.generate())).decode())
    code, out, _ = _run(files)
    assert code == 1
    assert [ln for ln in out.splitlines() if ln.startswith("FAIL ")] == [
        out.splitlines()[0]
    ] and "another VM" in out


@pytest.mark.parametrize(
    "damage",
    ["missing-chain", "empty-file", "garbage-key", "missing-catalogue", "empty-dir"],
)
def test_cli_unusable_input_exits_3(files: dict[str, Path], tmp_path: Path, damage: str) -> None:
    chain_path = None
    if damage == "missing-chain":
        chain_path = tmp_path / "nope"
    elif damage == "empty-file":
        chain_path = tmp_path / "empty.jsonl"
        chain_path.write_text("")
    elif damage == "empty-dir":
        chain_path = tmp_path / "emptydir"
        chain_path.mkdir()
    elif damage == "garbage-key":
        files["pub"].write_text("not a key at all")
    else:
        files["cat"].unlink()
    code, _out, err = _run(files, chain_path=chain_path)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@FUZZ
@given(st.binary(max_size=400))
def test_envelope_loader_refuses_or_decodes_any_bytes(data: bytes) -> None:
    try:
        dsse.loads(data).statement()
    except dsse.EnvelopeError:
        pass


def test_pae_matches_the_dsse_specification() -> None:
    # The test vector of secure-systems-lab/dsse protocol.md.
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_an_independent_dsse_implementation_accepts_our_envelopes(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    sslib = pytest.importorskip("securesystemslib.dsse")
    signer = pytest.importorskip("securesystemslib.signer")
    key = signer.SSlibKey.from_crypto(
        kit.vm.public_key(), keyid=keys.key_id(keys.public_raw(kit.vm))
    )
    env = sslib.Envelope.from_dict(issued[0].envelope.to_json())
    assert key.keyid in env.verify([key], 1)
    tampered = dict(issued[0].envelope.to_json(), payloadType="application/json")
    with pytest.raises(Exception, match="(?i)threshold|verif"):
        sslib.Envelope.from_dict(tampered).verify([key], 1)


@pytest.fixture(scope="module")
def one_statement(issued: list[chain.Issued]) -> dict:  # type: ignore[type-arg]
    return json.loads(issued[0].envelope.payload)


@FUZZ
@given(data=st.data())
def test_hostile_statements_signed_by_the_vm_give_a_report_not_a_crash(
    kit: Kit,
    one_statement: dict,
    data: st.DataObject,  # type: ignore[type-arg]
) -> None:
    from tests.fuzz.hostile import mutate_json

    hostile = data.draw(mutate_json(one_statement))
    try:
        env = dsse.sign(kit.vm, hostile)
    except (ValueError, TypeError, RecursionError):
        return  # not even JSON-serialisable: nothing a VM could sign
    rep = _verify(kit, [Entry("x", env)])
    assert isinstance(rep.problems, list)


def test_a_landmark_with_a_wrong_clock_is_left_out_not_a_failure(kit: Kit, tmp_path: Path) -> None:
    t = 1_800_000_000 + 1800
    r = kit.round(t)
    ms, _ = r.timed["Denver"]
    r.timed["Denver"] = (ms, kit.statement("Denver", ms, t + 7200))  # its clock is 2 h ahead
    issued = chain.issue(
        tmp_path,
        kit.vm,
        [r],
        [],
        landmarks=kit.by_id,
        allowed=["US"],
        countries=default_index(),
        catalogue="t",
        now=1_800_003_600,
        period_s=3600,
    )
    (rnd,) = json.loads(issued[0].envelope.payload)["predicate"]["rounds"]
    assert rnd["rtts"]["Denver"]["landmark_timed_ms"] is None
    assert len(rnd["statements"]) == len(kit.by_id) - 1
    assert _verify(kit, _entries(issued)).ok


def test_cli_json_report_for_pipelines(files: dict[str, Path], issued: list[chain.Issued]) -> None:
    code, out, _ = _run(files, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["attestations"] == N
    assert [p["period"] for p in doc["periods"]] == [i.period.label for i in issued]
    assert {p["verdict"] for p in doc["periods"]} == {"inside"}
    (files["chain"] / issued[2].path.name).unlink()
    code, out, _ = _run(files, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and issued[2].period.label in doc["problems"][0]


def test_rounds_left_out_of_a_statement_leave_the_period_unproven(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    """A VM that spent a stretch abroad cannot just drop those rounds and keep "inside"."""
    pred = json.loads(issued[9].envelope.payload)["predicate"]
    assert pred["coverage"]["rounds"] == 7 and pred["coverage"]["longest_gap_s"] < 600

    def hide(p: dict) -> None:  # type: ignore[type-arg]
        del p["rounds"][2:5]

    rep = _verify(kit, _resigned(kit, issued, 9, hide))
    assert any(
        issued[9].period.label in p and "verdict inside" in p and "no landmark-signed evidence" in p
        for p in rep.problems
    ), rep.problems

    def hide_and_relax(p: dict) -> None:  # type: ignore[type-arg]
        del p["rounds"][2:5]
        p["coverage"]["max_gap_s"] = 3600

    entries = _resigned(kit, issued, 9, hide_and_relax)
    assert not any("verdict inside" in p for p in _verify(kit, entries).problems)
    rep = _verify(kit, entries, max_gap=600.0)  # the auditor's own bound
    assert any(issued[9].period.label in p and "more than the 600 s" in p for p in rep.problems)


def test_an_hour_with_a_long_silence_is_attested_unproven(kit: Kit, tmp_path: Path) -> None:
    start = 1_800_000_000
    rounds = [kit.round(start + t) for t in (60, 120, 180, 3000, 3300)]  # 47 min of silence
    (issued,) = chain.issue(
        tmp_path,
        kit.vm,
        rounds,
        [],
        landmarks=kit.by_id,
        allowed=["US"],
        countries=default_index(),
        catalogue="t",
        now=start + 3600,
        period_s=3600,
    )
    pred = json.loads(issued.envelope.payload)["predicate"]
    assert pred["verdict"] == "unproven" and "2820 s" in pred["certificate"]["reason"]
    assert _verify(kit, _entries([issued])).ok


def test_a_round_stitched_from_statements_of_different_times_is_caught(
    kit: Kit, issued: list[chain.Issued]
) -> None:
    """Close landmarks' bounds from later in the hour cannot certify an earlier round."""
    later = json.loads(issued[12].envelope.payload)["predicate"]["rounds"][6]["statements"]

    def stitch(p: dict) -> None:  # type: ignore[type-arg]
        p["rounds"][0]["statements"] = p["rounds"][0]["statements"][:1] + later[1:]

    rep = _verify(kit, _resigned(kit, issued, 12, stitch))
    assert any(
        issued[12].period.label in p and "signed" in p and "apart" in p for p in rep.problems
    ), rep.problems


def test_a_repeated_envelope_is_named(kit: Kit, issued: list[chain.Issued]) -> None:
    entries = _entries(issued)
    entries.insert(4, entries[3])
    rep = _verify(kit, entries)
    assert any(issued[3].period.label in p and "repeated" in p for p in rep.problems)
