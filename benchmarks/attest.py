"""What a landmark-timed echo costs the landmark's responder, against today's signed echo.

Drives one real ``EchoResponder`` (bound to a loopback UDP socket, sending real datagrams to a
sink socket) and counts, per exchange, the packets and bytes each side sends and the responder's
CPU time (``time.thread_time``, so the client's work and a loaded machine do not count). The rate
on one core is 1 / CPU time per exchange. The client's work (building answers, reading replies)
is outside the timed sections.

    python benchmarks/attest.py [--exchanges 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time

from geoprobe.probe import keys, timed
from geoprobe.probe.protocol import NONCE_LEN, make_request
from geoprobe.probe.responder import EchoResponder


class _Transport(asyncio.DatagramTransport):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._sock if name == "socket" else default


def _responder() -> tuple[EchoResponder, socket.socket, socket.socket]:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r = EchoResponder(keys.generate(), "bench-landmark-fra", 50.11, 8.68)
    r.connection_made(_Transport(lsock))
    return r, lsock, sink


def plain(n: int) -> tuple[list[float], int, int]:
    r, lsock, sink = _responder()
    r.timed = None
    addr = sink.getsockname()
    cpu: list[float] = []
    out_bytes = 0
    for _ in range(n):
        req = make_request(os.urandom(NONCE_LEN))
        t = time.thread_time_ns()
        r.datagram_received(req, addr)
        cpu.append((time.thread_time_ns() - t) / 1e3)
        out_bytes += len(sink.recv(2048))
    lsock.close()
    sink.close()
    return cpu, 320, out_bytes // n


def landmark_timed(n: int) -> tuple[list[float], int, int, int]:
    r, lsock, sink = _responder()
    addr = sink.getsockname()
    vm = keys.generate()
    vm_pub = keys.public_raw(vm)
    cpu: list[float] = []
    out_bytes = out_packets = 0
    for _ in range(n):
        req = timed.make_offer_request(os.urandom(NONCE_LEN), vm_pub)
        t = time.thread_time_ns()
        r.datagram_received(req, addr)
        spent = time.thread_time_ns() - t
        got = [sink.recv(2048), sink.recv(2048)]
        chal = next(g for g in got if timed.message_type(g) == timed.TYPE_CHALLENGE)
        answer = timed.make_answer(vm, *timed.parse_challenge(chal))
        t = time.thread_time_ns()
        r.datagram_received(answer, addr)
        spent += time.thread_time_ns() - t
        statement = sink.recv(2048)
        timed.parse_statement(statement)
        cpu.append(spent / 1e3)
        out_bytes += sum(map(len, got)) + len(statement)
        out_packets += 3
    lsock.close()
    sink.close()
    return cpu, 320 + timed.ANSWER_LEN, out_bytes // n, out_packets // n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=2000)
    args = ap.parse_args()
    n = args.exchanges
    plain(50)  # warm up
    p_cpu, p_in, p_out = plain(n)
    t_cpu, t_in, t_out, t_packets = landmark_timed(n)
    pm, tm = statistics.median(p_cpu), statistics.median(t_cpu)
    print(f"responder cost per exchange ({n} exchanges each, median CPU time)")
    print(f"{'':22}{'packets in/out':>16}{'bytes in/out':>16}{'CPU us':>10}{'rate/core':>12}")
    print(f"{'signed echo':22}{'1/1':>16}{f'{p_in}/{p_out}':>16}{pm:>10.1f}{1e6 / pm:>10.0f}/s")
    print(
        f"{'landmark-timed echo':22}{f'2/{t_packets}':>16}{f'{t_in}/{t_out}':>16}"
        f"{tm:>10.1f}{1e6 / tm:>10.0f}/s"
    )
    print(f"landmark-timed / signed echo: {tm / pm:.2f}x CPU, 2.5x packets")
    print(
        "landmark-timed echo = 1 reply signature + 1 answer verification + 1 statement signature;"
        " the plain echo signs once"
    )


if __name__ == "__main__":
    main()
