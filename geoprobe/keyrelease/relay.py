"""A UDP relay that holds every datagram before passing it on: distance where netem is missing.

It stands between a client and a key server (each in its own network namespace in the tests) and
adds ``rtt_ms / 2`` plus a random ``[0, jitter_ms / 2]`` in each direction. Holds are timed by
:class:`PreciseTimer` from the moment the datagram was read, so a datagram is never passed on
early: like a real path, the relay can only add delay.

    python -m geoprobe.keyrelease.relay LISTEN UPSTREAM --rtt-ms 2 [--jitter-ms 1]
"""

from __future__ import annotations

import argparse
import random
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

from geoprobe.keyrelease.config import parse_address
from geoprobe.probe.timer import PreciseTimer
from geoprobe.status import ExitStatus

Address = tuple[str, int]


class DelayRelay:
    def __init__(
        self,
        listen: Address,
        upstream: Address,
        rtt_ms: float,
        jitter_ms: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self.half_ns = int(rtt_ms * 1e6 / 2)
        self.jitter_ns = int(jitter_ms * 1e6 / 2)
        self.rng = rng or random.Random()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.address: Address = self.sock.getsockname()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.sides: dict[Address, socket.socket] = {}  # client address -> its upstream socket
        self.timer = PreciseTimer().start()
        self.stop = threading.Event()
        self.passed = 0

    def _hold(self) -> int:
        extra = self.rng.randint(0, self.jitter_ns) if self.jitter_ns > 0 else 0
        return self.half_ns + extra

    def _later(self, arrived: int, fn: Callable[[], None]) -> None:
        self.timer.call_at(arrived + self._hold(), fn)

    def _send(self, sock: socket.socket, data: bytes, addr: Address) -> None:
        try:
            sock.sendto(data, addr)
            self.passed += 1
        except OSError:
            pass

    def _upstream_for(self, client: Address) -> socket.socket:
        up = self.sides.get(client)
        if up is None:
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.bind(("0.0.0.0", 0))
            self.sides[client] = up
            self.sel.register(up, selectors.EVENT_READ, client)
        return up

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, addr = sock.recvfrom(65536)
                except OSError:
                    continue
                arrived = time.monotonic_ns()
                if key.data is None:  # from a client: on to the server
                    up = self._upstream_for(addr)
                    self._later(arrived, partial(self._send, up, data, self.upstream))
                elif addr == self.upstream:  # from the server: back to that client
                    client: Address = key.data
                    self._later(arrived, partial(self._send, self.sock, data, client))

    def close(self) -> None:
        self.stop.set()
        self.timer.stop()
        for s in [self.sock, *self.sides.values()]:
            s.close()
        self.sel.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="relay", description=__doc__.splitlines()[0])
    ap.add_argument("listen", help="HOST:PORT to listen on (port 0: any)")
    ap.add_argument("upstream", help="HOST:PORT of the server")
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = ap.parse_args(argv)
    relay = DelayRelay(
        parse_address(args.listen, 0, any_port=True),
        parse_address(args.upstream),
        args.rtt_ms,
        args.jitter_ms,
    )
    signal.signal(signal.SIGTERM, lambda *_: relay.stop.set())
    limit = threading.Timer(args.seconds, relay.stop.set)
    limit.daemon = True
    limit.start()
    print(f"ready {relay.address[0]}:{relay.address[1]}", flush=True)
    try:
        relay.run()
    except KeyboardInterrupt:
        pass
    finally:
        relay.close()
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(main())
