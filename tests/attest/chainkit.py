"""Chains built from genuine landmark signatures without a network: for the tamper tests, which
re-verify dozens of variants of one chain."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe.attest import chain
from geoprobe.attest.rounds import Round
from geoprobe.geo.countries import default_index
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.probe import keys, timed

from .attest_world import HOME, SERVERS, rtt_ms


@dataclass
class Kit:
    catalogue: Catalogue
    landmark_keys: dict[str, Ed25519PrivateKey]
    vm: Ed25519PrivateKey

    @property
    def by_id(self) -> dict[str, Landmark]:
        return self.catalogue.by_id()

    def statement(
        self, lid: str, rtt: float, t: float, vm: Ed25519PrivateKey | None = None
    ) -> bytes:
        lm = self.by_id[lid]
        vm_kid = keys.key_id(keys.public_raw(vm or self.vm))
        body = timed.statement_body(
            os.urandom(32),
            os.urandom(32),
            int(rtt * 1e6),
            int(t * 1e9),
            lm.lat,
            lm.lon,
            vm_kid,
            lid,
            lm.key_id or "",
        )
        return body + self.landmark_keys[lid].sign(timed.STATEMENT_CONTEXT + body)

    def round(self, t: float, at: str = HOME, shrink: float = 1.0) -> Round:
        r = Round(time=t)
        for lid in self.by_id:
            real = rtt_ms(at, lid) + 0.2
            r.timed[lid] = (int(real * 1e6) / 1e6, self.statement(lid, real, t + 0.01))
            r.vm_timed[lid] = real * shrink
        return r

    def write_catalogue(self, path: Path) -> Path:
        path.write_text(json.dumps(self.catalogue.to_json()))
        return path

    def pub_file(self, path: Path) -> Path:
        import base64

        path.write_text(base64.b64encode(keys.public_raw(self.vm)).decode() + "\n")
        return path


def make_kit(at: str = HOME) -> Kit:
    lkeys: dict[str, Ed25519PrivateKey] = {}
    lms = []
    for name, lat, lon, cc in SERVERS:
        if name == at:
            continue
        k = keys.generate()
        lkeys[name] = k
        pub = keys.public_raw(k)
        lms.append(
            Landmark(
                id=name,
                lat=lat,
                lon=lon,
                country=cc,
                address="127.0.0.1",
                udp_port=7207,
                pubkey=pub,
                key_id=keys.key_id(pub),
            )
        )
    return Kit(Catalogue(landmarks=lms, name="test"), lkeys, keys.generate())


def issue(
    kit: Kit,
    out: Path,
    periods: int,
    *,
    start: int = 1_800_000_000,
    period: int = 3600,
    rounds_per_period: int = 7,
    allowed: tuple[str, ...] = ("US",),
) -> list[chain.Issued]:
    rounds = [
        kit.round(start + p * period + (k + 0.5) * period / rounds_per_period)
        for p in range(periods)
        for k in range(rounds_per_period)
    ]
    return chain.issue(
        out,
        kit.vm,
        rounds,
        [],
        landmarks=kit.by_id,
        allowed=list(allowed),
        countries=default_index(),
        catalogue="test",
        now=start + periods * period,
        period_s=period,
    )
