"""The confirmed migration: one typed event for the watch, cron-mode ``check`` and the defence.

Both producers build a :class:`Migration` and publish ``Migration.to_event()``; the defence reads
an event back with :meth:`Migration.from_data` and asks it for the policy verdict. So ``crossing``
and the probability mean the same thing whoever measured the move:

* ``crossing``: ``true`` the move ended outside the allowed set (from inside it, or from nowhere
  the watch ever saw inside); ``false`` it ended inside, or the VM was outside before it too;
  ``null`` it ended astride the border, or the evidence cannot tell (a move whose crossing is
  unknown: the policy's ``unknown`` actions run).
* ``p_allowed``: the calibrated probability that the VM is now in the allowed set (the same number
  as ``jurisdiction.p_allowed``). It is never "the probability of the event": how sure a crossing
  is comes from :meth:`Migration.crossing_confidence`, a proof (``proof``: the sound or certified
  rule decided) or else ``1 - p_allowed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geoprobe import events

PROOF_RULES = ("certified", "sound")
Verdict = str  # a policy verdict name (geoprobe.policy.VERDICTS)


def crossing_of(verdict: str, *, outside_before: bool = False) -> bool | None:
    """What a move that ends at this jurisdiction verdict says about the border.

    From outside the allowed set no move is a new crossing. Otherwise ``outside`` is a crossing,
    ``inside`` is none, and ``straddles`` is unknown: a region over the border is never a confirmed
    crossing, nor a proof of none.
    """
    if outside_before:
        return False
    if verdict == "outside":
        return True
    if verdict == "inside":
        return False
    return None


def crossing_found_outside(rule: str) -> bool | None:
    """A crossing found by the verdict alone (outside, with no move seen that led there).

    A proof is a crossing; an outside verdict from the calibrated probability alone is unknown,
    since added delay can push a calibrated estimate across a border.
    """
    return True if rule in PROOF_RULES else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _landmark_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


@dataclass(frozen=True, slots=True)
class Migration:
    """A confirmed migration, as every producer reports it and the defence reads it."""

    crossing: bool | None
    frm: str | None  # the country the VM was last seen in, inside the allowed set; None: never
    to: str | None  # the country the new fix is reported in (certified, else most probable)
    jurisdiction: Mapping[str, Any]  # JurisdictionVerdict.to_json() of the new fix
    landmarks: int | None  # landmarks the new fix used
    source: str  # "watch" or "check"
    signals: tuple[str, ...] = ()
    distance_km: float | None = None
    reasons: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # the producer's own detail

    @property
    def p_allowed(self) -> float | None:
        """Calibrated probability that the VM is now in the allowed set."""
        return _number(self.jurisdiction.get("p_allowed"))

    @property
    def proof(self) -> bool:
        """The verdict rests on the sound region or a certification, not on a probability."""
        return self.jurisdiction.get("rule") in PROOF_RULES

    def crossing_confidence(self) -> float | None:
        """How sure a crossing is: 1 under a proof, else the probability of being outside."""
        if self.proof:
            return 1.0
        p = self.p_allowed
        return None if p is None else 1.0 - p

    def policy_verdict(self, min_probability: float, min_landmarks: int) -> Verdict | None:
        """The policy verdict this migration calls for (None: a move that crossed nothing).

        A crossing short of the policy's confidence (probability or landmarks) is ``unknown``.
        """
        if self.crossing is None:
            return "unknown"
        if self.crossing is False:
            return None
        conf = self.crossing_confidence()
        if conf is not None and conf < min_probability:
            return "unknown"
        if self.landmarks is not None and self.landmarks < min_landmarks:
            return "unknown"
        return "confirmed_crossing"

    def to_data(self) -> dict[str, Any]:
        p = self.p_allowed
        data: dict[str, Any] = {
            "crossing": self.crossing,
            "from": self.frm,
            "to": self.to,
            "distance_km": None if self.distance_km is None else round(self.distance_km, 1),
            "signals": list(dict.fromkeys(self.signals)),
            "jurisdiction": dict(self.jurisdiction),
            "p_allowed": None if p is None else round(p, 4),
            "proof": self.proof,
            "landmarks": self.landmarks,
            "source": self.source,
        }
        if self.reasons:
            data["reasons"] = list(self.reasons)
        for k, v in self.extra.items():
            data.setdefault(k, v)
        return data

    def to_event(self) -> dict[str, Any]:
        return events.make_event(events.CONFIRMED, self.to_data())

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Migration:
        """Read an event's ``data`` back, whoever wrote it; fields of the wrong type read as absent.

        An event without ``jurisdiction`` (a hand-written one) still carries ``p_allowed``.
        """
        crossing = data.get("crossing")
        jur = data.get("jurisdiction")
        jurisdiction: dict[str, Any] = dict(jur) if isinstance(jur, Mapping) else {}
        if "p_allowed" not in jurisdiction and _number(data.get("p_allowed")) is not None:
            jurisdiction["p_allowed"] = data["p_allowed"]
        frm, to = data.get("from"), data.get("to")
        signals = data.get("signals")
        reasons = data.get("reasons")
        known = {
            "crossing",
            "from",
            "to",
            "distance_km",
            "signals",
            "jurisdiction",
            "p_allowed",
            "proof",
            "landmarks",
            "source",
            "reasons",
        }
        return cls(
            crossing=crossing if isinstance(crossing, bool) else None,
            frm=frm if isinstance(frm, str) else None,
            to=to if isinstance(to, str) else None,
            jurisdiction=jurisdiction,
            landmarks=_landmark_count(data.get("landmarks", data.get("landmarks_used"))),
            source=str(data.get("source", "")),
            signals=tuple(s for s in signals if isinstance(s, str))
            if isinstance(signals, list)
            else (),
            distance_km=_number(data.get("distance_km")),
            reasons=tuple(r for r in reasons if isinstance(r, str))
            if isinstance(reasons, list)
            else (),
            extra={k: v for k, v in data.items() if k not in known},
        )
