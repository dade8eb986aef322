"""Replies matched to requests, and virtual time that never jumps over real I/O.

A late reply (sent after its request timed out) must never be taken for the answer to the next,
different request; the transport gets back in step with the driver's synchronisation query first.
Under a :class:`VirtualClock`, a reply travelling through a real pty and work in a worker thread
hold the clock instead of letting it jump to the next timer.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from kiboauto.clock import VirtualClock
from kiboauto.devices import DeviceTimeout
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.transport import BadFrame, Resync, SerialTransport
from kiboauto.hil.base import Fault, FaultKind, Simulator
from kiboauto.hil.ptyport import PtyPort


class Register(Simulator):
    """A line device with values: ``get NAME\\r`` answers ``=VALUE\\r``; ``id\\r`` ``#ID\\r``."""

    protocol = "register"

    def __init__(self, clock: VirtualClock, values: dict[str, str]) -> None:
        super().__init__("reg", clock)
        self.values = values
        self._partial = b""
        self.executed: list[str] = []

    def handle_bytes(self, data: bytes) -> list[bytes]:
        self._partial += data
        replies: list[bytes] = []
        while b"\r" in self._partial:
            line, self._partial = self._partial.split(b"\r", 1)
            text = line.decode()
            self.executed.append(text)
            if text == "id":
                replies.append(b"#REG1\r")
            else:
                replies.append(f"={self.values[text.removeprefix('get ')]}\r".encode())
        return replies

    def reset_line(self) -> None:
        self._partial = b""

    def raise_alarm(self, alarm: str) -> None:
        raise NotImplementedError


def value(buf: bytes) -> tuple[str, int] | None:
    end = buf.find(b"\r")
    if end < 0:
        return None
    if buf[:1] != b"=":
        raise BadFrame(f"expected a value, got {buf[:end]!r}")
    return buf[1:end].decode(), end + 1


def sync(buf: bytes) -> tuple[bool, int] | None:
    end = buf.find(b"\r")
    if end < 0:
        return None
    return buf[:end] == b"#REG1", end + 1


@pytest.mark.req("KA-TRN-006")
def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    """The reply to ``get pv`` comes 3 s late (timeout 1 s); ``get sv`` must still read SV."""
    clock = VirtualClock()

    async def main() -> list[str]:
        sim = Register(clock, {"pv": "21.7", "sv": "20.0"})
        transport = SerialTransport("reg", sim.memory_connector(), clock=clock)
        transport.set_resync(Resync(b"id\r", sync, "id"))
        answers: list[str] = []
        try:
            for trial in range(20):
                sim.inject(Fault(FaultKind.DELAY, seconds=1.0 + 0.25 * (trial % 8)))
                with pytest.raises(DeviceTimeout):
                    await transport.request(b"get pv\r", value, timeout=1.0)
                answers.append(await transport.request(b"get sv\r", value, timeout=1.0))
        finally:
            await transport.close()
            await sim.aclose()
        assert transport.resyncs == 20
        return answers

    assert clock.run(main()) == ["20.0"] * 20


@pytest.mark.req("KA-TRN-006")
def test_out_of_step_line_sends_nothing_until_the_device_answers_the_sync() -> None:
    """While the device stays silent, the next request is not sent at all (it might move hardware
    on a device that is only slow); it is sent once the line is back in step."""
    clock = VirtualClock()

    async def main() -> tuple[list[str], str]:
        sim = Register(clock, {"pv": "21.7", "sv": "20.0"})
        transport = SerialTransport("reg", sim.memory_connector(), clock=clock)
        transport.set_resync(Resync(b"id\r", sync, "id"))
        try:
            sim.inject(Fault(FaultKind.DROP, count=2))  # the request's reply and the sync's
            with pytest.raises(DeviceTimeout):
                await transport.request(b"get pv\r", value, timeout=1.0)
            with pytest.raises(DeviceTimeout, match="out of step"):
                await transport.request(b"get sv\r", value, timeout=1.0)
            after_failure = list(sim.executed)
            return after_failure, await transport.request(b"get sv\r", value, timeout=1.0)
        finally:
            await transport.close()
            await sim.aclose()

    executed, answer = clock.run(main())
    assert executed == ["get pv", "id"]
    assert answer == "20.0"


@pytest.mark.req("KA-CLK-004")
def test_virtual_clock_waits_for_replies_travelling_through_a_real_pty() -> None:
    """200 queries through a real pty under VirtualClock: no spurious timeouts."""
    clock = VirtualClock()

    async def main() -> tuple[int, list[str]]:
        sim = Register(clock, {"pv": "21.7"})
        port = PtyPort(sim)
        port.start()
        transport = SerialTransport("reg", serial_connector(port.path), port=port.path, clock=clock)
        failures = 0
        answers: list[str] = []
        # Something else sleeps for a long time: the clock must not jump to it mid-exchange.
        sleeper = asyncio.get_running_loop().create_task(clock.sleep(3600.0))
        try:
            await transport.open()
            for _ in range(200):
                try:
                    answers.append(await transport.request(b"get pv\r", value, timeout=0.5))
                except DeviceTimeout:
                    failures += 1
        finally:
            sleeper.cancel()
            await transport.close()
            await port.close()
            await sim.aclose()
        return failures, answers

    failures, answers = clock.run(main())
    assert failures == 0
    assert answers == ["21.7"] * 200


@pytest.mark.req("KA-CLK-004")
def test_virtual_clock_holds_while_a_worker_thread_works() -> None:
    """A port opened in a worker thread while another task sleeps 1 h: no 3600 s jump."""
    clock = VirtualClock()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        sleeper = loop.create_task(clock.sleep(3600.0))
        await asyncio.sleep(0)
        await loop.run_in_executor(None, time.sleep, 0.2)
        elapsed = clock.now()
        sleeper.cancel()
        return elapsed

    elapsed = clock.run(main())
    assert 0.15 <= elapsed < 5.0  # it followed real time, it did not jump an hour


@pytest.mark.req("KA-CLK-004")
def test_memory_pipes_stay_fully_virtual() -> None:
    """In-process devices never hold the clock: an hour of polling passes at once."""
    clock = VirtualClock()

    async def main() -> int:
        sim = Register(clock, {"pv": "21.7"})
        transport = SerialTransport("reg", sim.memory_connector(), clock=clock)
        n = 0
        try:
            while clock.now() < 3600.0:
                await transport.request(b"get pv\r", value, timeout=1.0)
                n += 1
                await clock.sleep(10.0)
        finally:
            await transport.close()
            await sim.aclose()
        return n

    started = time.perf_counter()
    assert clock.run(main()) == 360
    assert time.perf_counter() - started < 10.0
