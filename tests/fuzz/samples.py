"""Valid documents of every kind the loaders read: the fuzz tests mutate these.

The measurement sample carries real signed replies (signed here, offline, with a fresh key), so
mutations reach the evidence checks and not only the type checks.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geoprobe import events
from geoprobe.landmarks import Catalogue, Landmark
from geoprobe.measurement import Measurement
from geoprobe.probe import keys
from geoprobe.probe.evidence import make_evidence
from geoprobe.probe.protocol import build_reply, make_request

POLICY = """\
[jurisdiction]
allow = ["DE", "EU"]

[confidence]
min_probability = 0.9
min_landmarks = 3

[defaults]
timeout = 20

[[on.suspected]]
action = "delay"
memory = "256M"
cpu = 0.5
duration = 60

[[on.confirmed_crossing]]
action = "wipe"
paths = ["/nonexistent/geoprobe-fuzz/secret.key"]
passes = 1

[[on.confirmed_crossing]]
action = "webhook"
url = "http://127.0.0.1:9/hook"
retries = 2
headers = { Authorization = "Bearer x" }

[[on.unknown]]
action = "syslog"
priority = "warning"
"""

LANDMARKS_CSV = "id,lat,lon,country\nfra,50.11,8.68,DE\npar,48.86,2.35,FR\nams,52.37,4.90,NL\n"
RTTS_CSV = "src,dst,rtt_ms\nfra,par,9.5\npar,fra,9.7\nfra,ams,7.1\nams,par,8.0\n"
SERVERS_CSV = (
    "id,name,title,location,state,country,latitude,longitude\n"
    "1,Frankfurt,Frankfurt,Frankfurt,,Germany,50.11,8.68\n"
    "2,Paris,Paris,Paris,,France,48.86,2.35\n"
    "3,Amsterdam,Amsterdam,Amsterdam,,Netherlands,52.37,4.90\n"
)
PINGS_CSV = (
    "source,destination,timestamp,min,avg,max,mdev\n"
    "1,2,2020-07-19 00:00:00,9.5,9.9,10.4,0.2\n"
    "2,3,2020-07-19 00:00:00,8.0,8.3,8.9,0.1\n"
    "3,1,2020-07-19 00:00:00,7.1,7.4,7.9,0.1\n"
)

PLACES = {"fra": (50.11, 8.68, "DE"), "par": (48.86, 2.35, "FR"), "ams": (52.37, 4.90, "NL")}


@dataclass
class Signed:
    """A catalogue of signed landmarks and a measurement file whose evidence they signed."""

    catalogue: Catalogue
    measurements: list[Measurement]
    keys: dict[str, Ed25519PrivateKey]

    def catalogue_doc(self) -> dict[str, Any]:
        return self.catalogue.to_json()

    def measurement_doc(self) -> dict[str, Any]:
        return {
            "format": "geoprobe-measurements/1",
            "results": [m.to_json() for m in self.measurements],
        }


def signed_world(samples: int = 2) -> Signed:
    lms: list[Landmark] = []
    ms: list[Measurement] = []
    ks: dict[str, Ed25519PrivateKey] = {}
    for i, (lid, (lat, lon, cc)) in enumerate(PLACES.items()):
        key = keys.generate()
        pub = keys.public_raw(key)
        kid = keys.key_id(pub)
        ks[lid] = key
        lms.append(
            Landmark(
                id=lid,
                lat=lat,
                lon=lon,
                country=cc,
                address=f"127.0.0.{200 + i}",
                udp_port=7207,
                pubkey=pub,
                key_id=kid,
            )
        )
        m = Measurement(landmark_id=lid, method="udp", dst_addr=f"127.0.0.{200 + i}")
        for _ in range(samples):
            nonce = os.urandom(32)
            t0 = time.time_ns()
            t_recv = t0 + 2_000_000
            t_send = t_recv + 50_000
            t1 = t_send + 2_000_000
            reply = build_reply(key, nonce, t_recv, t_send, lid, lat, lon, kid)
            rtt = (t1 - t0 - (t_send - t_recv)) / 1e6
            m.sent += 1
            m.rtts_ms.append(rtt)
            m.sent_at.append(t0 / 1e9)
            m.evidence.append(make_evidence(lid, nonce, reply, t0, t1, rtt))
        m.rejected = {"bad signature": 1}
        ms.append(m)
    cat = Catalogue(
        landmarks=lms,
        rtts=[("fra", "par", 9.5), ("fra", "ams", 7.1)],
        name="fuzz",
    )
    return Signed(cat, ms, ks)


def event_doc() -> dict[str, Any]:
    return events.make_event(
        events.CONFIRMED,
        {"crossing": True, "probability": 0.97, "landmarks_used": ["fra", "par", "ams"]},
    )


def request() -> bytes:
    return make_request(os.urandom(32))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dumps(doc: Any) -> str:
    return json.dumps(doc, allow_nan=True)
