"""The allowed set and the confidence a verdict needs, from ``--allow`` and/or a policy file.

Shared by ``check`` and ``watch`` so both judge with the same thresholds: a policy gives the
defaults, explicit options override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geoprobe.errors import InputError
from geoprobe.watch.jurisdiction import Basis, Jurisdiction

if TYPE_CHECKING:
    from geoprobe.policy import Policy

DEFAULT_MIN_PROBABILITY = 0.9
DEFAULT_MIN_LANDMARKS = 3


@dataclass(frozen=True, slots=True)
class Settings:
    jurisdiction: Jurisdiction
    min_landmarks: int
    policy: Policy | None = None


def resolve_settings(
    allow: str | None,
    policy_path: Path | None,
    basis: Basis,
    min_probability: float | None = None,
    min_landmarks: int | None = None,
) -> Settings:
    """The policy's allowed set and thresholds, each overridden by the option given."""
    policy = None
    codes: set[str] = set()
    minp, minl = DEFAULT_MIN_PROBABILITY, DEFAULT_MIN_LANDMARKS
    if policy_path is not None:
        from geoprobe.policy import load_policy

        policy = load_policy(policy_path)
        codes = set(policy.allow)
        minp, minl = policy.min_probability, policy.min_landmarks
    if allow is not None:
        from geoprobe.geo.groups import expand

        codes = expand(c for c in allow.split(",") if c.strip())
    if not codes:
        raise InputError(
            "no allowed jurisdictions: give --allow CODES or a --policy FILE", field="allow"
        )
    j = Jurisdiction.of(
        codes, min_probability=min_probability if min_probability is not None else minp, basis=basis
    )
    return Settings(j, min_landmarks if min_landmarks is not None else minl, policy)
