#!/usr/bin/env python3
"""Guest-side ground-truth probe: asks the site's UDP clock at 10.0.2.2 every 20 ms.

Runs inside the guest next to (or instead of) geoprobe. It prints a JSON line when the answering
site changes, when the offset to the host clock steps by 20 ms or more, and a heartbeat every
second, so the lab can check that the guest's packets reach the destination's site after the
switchover. Stdlib only.
"""

from __future__ import annotations

import json
import socket
import sys
import time

HOST = ("10.0.2.2", int(sys.argv[1]) if len(sys.argv) > 1 else 47000)
PERIOD = 0.02


def emit(**fields: object) -> None:
    print(json.dumps({"lab": "clock", **fields}), flush=True)


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    site = None
    offset = None
    beat = time.monotonic()
    rtts: list[float] = []
    seq = 0
    while True:
        seq += 1
        t0 = time.time()
        m0 = time.monotonic()
        try:
            sock.sendto(str(seq).encode(), HOST)
            data, _ = sock.recvfrom(2048)
        except OSError:
            emit(event="timeout", seq=seq, mono=m0)
            continue
        m1 = time.monotonic()
        reply = json.loads(data)
        if reply.get("echo") != str(seq):  # a late reply to an earlier probe: drop it
            continue
        rtt = (m1 - m0) * 1000.0
        off = (reply["t"] - (t0 + (m1 - m0) / 2)) * 1000.0
        rtts.append(rtt)
        if reply["site"] != site:
            emit(
                event="site",
                site=reply["site"],
                previous=site,
                rtt_ms=round(rtt, 2),
                off_ms=round(off, 2),
                mono=m1,
            )
            site = reply["site"]
        if offset is not None and abs(off - offset) >= 20.0 and rtt < 20.0:
            emit(event="offset_step", step_ms=round(off - offset, 2), site=site, mono=m1)
        if rtt < 20.0:
            offset = off
        if m1 - beat >= 1.0:
            emit(
                event="beat",
                site=site,
                min_rtt_ms=round(min(rtts), 2),
                n=len(rtts),
                off_ms=round(offset or 0.0, 2),
                mono=m1,
            )
            rtts.clear()
            beat = m1
        time.sleep(max(0.0, PERIOD - (time.monotonic() - m0)))


if __name__ == "__main__":
    main()
