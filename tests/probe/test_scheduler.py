"""The scheduler's pacing, argument checks and failure reasons."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from geoprobe.errors import InputError
from geoprobe.landmarks import Landmark
from geoprobe.probe import measure
from geoprobe.probe.scheduler import Pacer, _failure


def test_pacer_caps_the_packet_rate() -> None:
    async def run() -> float:
        pacer = Pacer(100.0)
        t = time.monotonic()
        for _ in range(11):
            await pacer.wait()
        return time.monotonic() - t

    assert asyncio.run(run()) >= 0.099  # 11 sends at 100/s need at least 10 intervals


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"samples": 0}, "samples"),
        ({"timeout": 0}, "timeout"),
        ({"pps": -1}, "pps"),
        ({"method": "smoke"}, "method"),
    ],
)
def test_bad_arguments_are_input_errors(kw: dict[str, object], field: str) -> None:
    lm = Landmark(id="a", lat=0.0, lon=0.0, address="127.0.0.1", udp_port=9)
    with pytest.raises(InputError) as info:
        measure([lm], **kw)  # type: ignore[arg-type]
    assert info.value.field == field


def test_unresolvable_host_is_a_failure_not_a_crash() -> None:
    lm = Landmark(id="h", lat=0.0, lon=0.0, host="no-such-host.invalid", tcp_port=80)
    [m] = measure([lm], "tcp", samples=1, timeout=1.0)
    assert m.failure is not None and m.failure.startswith("cannot resolve") and m.sent == 0


def test_failure_reason_prefers_the_telling_one() -> None:
    assert _failure(["timeout", "refused"], Counter()) == "refused"
    assert _failure(["timeout", "timeout"], Counter()) == "timeout"
    assert (
        _failure(["timeout"], Counter({"bad signature": 2}))
        == "timeout (rejected replies: bad signature: 2)"
    )
    assert _failure(["timeout", "Message too long"], Counter()) == "Message too long"
