"""The responder's timing machinery: the precise timer and the split hold."""

from __future__ import annotations

import socket
import threading
import time

from loopback_world import World, next_host

from geoprobe.probe import keys
from geoprobe.probe.protocol import make_request, parse_reply
from geoprobe.probe.responder import EchoResponder
from geoprobe.probe.timer import PreciseTimer


def test_timer_runs_callbacks_in_due_order_and_not_early() -> None:
    fired: list[tuple[int, int]] = []
    done = threading.Event()
    with PreciseTimer() as timer:
        base = time.monotonic_ns()
        for i, delay_ms in enumerate([30, 10, 20, 0]):
            due = base + delay_ms * 1_000_000
            timer.call_at(due, lambda i=i, due=due: fired.append((i, time.monotonic_ns() - due)))
        timer.call_at(base + 40_000_000, done.set)
        assert done.wait(5)
    assert [i for i, _ in fired] == [3, 1, 2, 0]
    assert all(late >= 0 for _, late in fired)


def test_timer_survives_a_failing_callback() -> None:
    done = threading.Event()
    with PreciseTimer() as timer:
        timer.call_later(0.001, lambda: 1 / 0)  # type: ignore[func-returns-value]
        timer.call_later(0.002, done.set)
        assert done.wait(5)


def test_delay_is_held_as_path_latency_not_processing(world: World) -> None:
    """Half the delay before t_recv, half after t_send: the reply shows ~no processing time,
    and the wall time from request to reply covers the whole delay."""
    key = keys.generate()
    host, port, proto = world.endpoint(
        lambda: EchoResponder(key, "h", 1.0, 2.0, delay=lambda: 0.08)
    )
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind((next_host(), 0))
    t0 = time.time_ns()
    s.sendto(make_request(b"n" * 32), (host, port))
    data, _ = s.recvfrom(2048)
    t1 = time.time_ns()
    s.close()
    reply = parse_reply(data)
    # Neither half of the 80 ms hold lies between the two stamps (each half alone is 40 ms) ...
    assert reply.processing_ns < 40_000_000
    assert t1 - t0 >= 80_000_000
    # ... and the first half lies before the receive stamp.
    assert reply.t_recv_ns - t0 >= 39_000_000  # (1 ms for the monotonic/wall clock conversion)
    assert isinstance(proto, EchoResponder) and proto.answered == 1


def test_responder_ignores_junk(world: World) -> None:
    key = keys.generate()
    host, port, proto = world.endpoint(lambda: EchoResponder(key, "j", 1.0, 2.0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    s.sendto(b"hello", (host, port))  # short: answering could amplify
    s.sendto(make_request(b"x" * 32), (host, port))
    data, _ = s.recvfrom(2048)
    s.close()
    assert parse_reply(data).nonce == b"x" * 32
    assert isinstance(proto, EchoResponder) and proto.dropped == 1 and proto.answered == 1
