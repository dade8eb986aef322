"""Captured byte traces replayed as regression tests (in the spirit of capture-and-validate).

Each driver's recorded session (``tests/data/*_session.jsonl``, made by ``tests/sessions.py``
against the simulator) is played back with the trace standing in for the device: the driver must
send exactly the recorded bytes, in order, and reach the same results.
"""

from __future__ import annotations

from typing import Any

import pytest
from sessions import SESSIONS, play, trace_file

from kiboauto.drivers.trace import ByteTrace, ReplayMismatch, ReplayStream


@pytest.mark.req("KA-TRN-004")
@pytest.mark.parametrize("protocol", sorted(SESSIONS))
def test_recorded_session_replays_byte_for_byte(protocol: str) -> None:
    entries = ByteTrace.load(trace_file(protocol))
    assert sum(1 for e in entries if e.direction == "tx") >= 5
    stream = ReplayStream(entries)

    def replay_connector(sim: Any, clock: Any) -> Any:
        async def connect() -> ReplayStream:
            return stream

        return connect

    live = play(protocol, lambda sim, clock: sim.memory_connector())
    replayed = play(protocol, replay_connector)
    assert replayed == live
    assert stream.remaining == 0, "the driver stopped before the end of the recorded session"


@pytest.mark.req("KA-TRN-004")
def test_a_changed_byte_in_the_trace_is_caught() -> None:
    entries = ByteTrace.load(trace_file("newera"))
    first_tx = next(i for i, e in enumerate(entries) if e.direction == "tx")
    tampered = list(entries)
    original = tampered[first_tx]
    tampered[first_tx] = type(original)(
        original.t, original.device, "tx", original.data[:-1] + b"?", original.note
    )
    stream = ReplayStream(tampered)

    def replay_connector(sim: Any, clock: Any) -> Any:
        async def connect() -> ReplayStream:
            return stream

        return connect

    with pytest.raises(ReplayMismatch):
        play("newera", replay_connector)
