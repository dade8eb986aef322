"""The async serial transport: timeouts, retries, reconnects, traces, bad bytes.

These tests exercise the transport's mechanics against a tiny line-protocol device (``<text>``
replies to ``text\\r`` requests) served by the real simulator base over real ptys and memory pipes;
device-specific behaviour is tested with each driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import DeviceDisconnected, DeviceError, DeviceTimeout, FramingError
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.trace import ByteTrace, ReplayMismatch, ReplayStream
from kiboauto.drivers.transport import BadFrame, SerialTransport
from kiboauto.hil.base import Fault, FaultKind, Simulator
from kiboauto.hil.ptyport import PtyPort, TcpPort


class LineDevice(Simulator):
    """Answers ``<TEXT>\\r`` to each ``text\\r`` and counts what it executed."""

    protocol = "line"

    def __init__(self, name: str = "line", clock: object = None, **kw: object) -> None:
        super().__init__(name, clock)  # type: ignore[arg-type]
        self._partial = b""
        self.executed: list[bytes] = []

    def handle_bytes(self, data: bytes) -> list[bytes]:
        self._partial += data
        replies = []
        while b"\r" in self._partial:
            line, self._partial = self._partial.split(b"\r", 1)
            self.executed.append(line)
            replies.append(b"<" + line.upper() + b">\r")
        return replies

    def reset_line(self) -> None:
        self._partial = b""

    def raise_alarm(self, alarm: str) -> None:
        raise NotImplementedError


def parse(buf: bytes) -> tuple[str, int] | None:
    if buf[:1] != b"<":
        raise BadFrame(f"reply must start with '<', got {buf[:1]!r}")
    end = buf.find(b">\r")
    if end < 0:
        return None
    body = buf[1:end]
    if not body.isalnum():
        raise BadFrame(f"non-alphanumeric reply body {body!r}")
    return body.decode(), end + 2


@contextlib.asynccontextmanager
async def pty_device() -> AsyncIterator[tuple[LineDevice, str]]:
    """A line device served on a fresh pty: (device, slave path); both closed afterwards."""
    sim = LineDevice(clock=RealClock())
    port = PtyPort(sim)
    port.start()
    try:
        yield sim, port.path
    finally:
        await port.close()
        await sim.aclose()


# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-TRN-001")
async def test_request_reply_over_a_real_pty() -> None:
    async with pty_device() as (_sim, path):
        transport = SerialTransport("line", serial_connector(path), port=path)
        try:
            await transport.open()
            assert await transport.request(b"hello\r", parse, timeout=2.0) == "HELLO"
            assert await transport.request(b"abc\r", parse, timeout=2.0) == "ABC"
            tx = [e.data for e in transport.trace if e.direction == "tx"]
            rx = b"".join(e.data for e in transport.trace if e.direction == "rx")
            assert tx == [b"hello\r", b"abc\r"]
            assert rx == b"<HELLO>\r<ABC>\r"
        finally:
            await transport.close()


@pytest.mark.req("KA-TRN-001")
async def test_socket_url_transport() -> None:
    sim = LineDevice(clock=RealClock())
    tcp = TcpPort(sim)
    await tcp.start()
    transport = SerialTransport("line", serial_connector(tcp.url), port=tcp.url)
    try:
        assert await transport.request(b"net\r", parse, timeout=2.0) == "NET"
    finally:
        await transport.close()
        await tcp.close()
        await sim.aclose()


@pytest.mark.req("KA-TRN-001")
def test_timeout_is_exactly_the_budget_in_virtual_time() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = LineDevice(clock=clock)
        t = SerialTransport("line", sim.memory_connector(), clock=clock)
        await t.open()
        sim.inject(Fault(FaultKind.DROP))
        start = clock.now()
        with pytest.raises(DeviceTimeout, match=r"within 1\.5 s"):
            await t.request(b"x\r", parse, timeout=1.5)
        assert clock.now() - start == pytest.approx(1.5)
        assert await t.request(b"y\r", parse, timeout=1.5) == "Y"
        await t.close()
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-TRN-002")
def test_retries_only_when_asked_and_bounded() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = LineDevice(clock=clock)
        t = SerialTransport("line", sim.memory_connector(), clock=clock)
        await t.open()
        # A command that moves hardware (retries=0): one attempt, the device ran it once.
        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await t.request(b"move\r", parse, timeout=1.0)
        assert sim.executed.count(b"move") == 1
        # A query (safe): a corrupted reply is retried and succeeds.
        sim.inject(Fault(FaultKind.CORRUPT))
        assert await t.request(b"query\r", parse, timeout=1.0, retries=2) == "QUERY"
        assert sim.executed.count(b"query") == 2
        # Bounded: three bad replies in a row exhaust two retries.
        sim.inject(Fault(FaultKind.DROP, count=3))
        with pytest.raises(DeviceTimeout):
            await t.request(b"q2\r", parse, timeout=1.0, retries=2)
        assert sim.executed.count(b"q2") == 3
        notes = [e.note for e in t.trace if e.direction == "note"]
        assert any("retry 2/2" in n for n in notes)
        await t.close()
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-TRN-003")
def test_reconnects_after_the_line_hangs_up() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = LineDevice(clock=clock)
        t = SerialTransport("line", sim.memory_connector(), clock=clock, reconnect_delay=1.0)
        await t.open()
        sim.inject(Fault(FaultKind.HANGUP, seconds=10.0))
        with pytest.raises(DeviceDisconnected, match="hung up"):
            await t.request(b"a\r", parse, timeout=2.0)
        await clock.sleep(11.0)  # the device comes back
        assert await t.request(b"b\r", parse, timeout=2.0) == "B"
        assert t.reconnects >= 1
        await t.close()
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-TRN-003")
async def test_reopens_a_pty_that_went_silent() -> None:
    async with pty_device() as (sim, path):
        t = SerialTransport("line", serial_connector(path), port=path, reconnect_delay=0.05)
        try:
            await t.open()
            sim.inject(Fault(FaultKind.HANGUP, seconds=0.3))
            with pytest.raises(DeviceTimeout):
                await t.request(b"a\r", parse, timeout=0.2)
            with pytest.raises(DeviceTimeout):
                await t.request(b"b\r", parse, timeout=0.2)
            # Two silent timeouts in a row: the transport reopens the port before the next request.
            assert await t.request(b"c\r", parse, timeout=1.0) == "C"
            assert t.reconnects == 1
        finally:
            await t.close()


@pytest.mark.req("KA-TRN-003")
def test_missing_port_is_a_clear_disconnected_error() -> None:
    async def main() -> None:
        t = SerialTransport("pump9", serial_connector("/dev/does-not-exist-kiboauto"))
        with pytest.raises(DeviceDisconnected, match="does-not-exist-kiboauto"):
            await t.open()

    import asyncio

    asyncio.run(main())


@pytest.mark.req("KA-TRN-005")
async def test_one_owner_per_port() -> None:
    async with pty_device() as (_sim, path):
        a = SerialTransport("first", serial_connector(path), port=path)
        b = SerialTransport("second", serial_connector(path), port=path)
        try:
            await a.open()
            with pytest.raises(DeviceError, match="already owned by first"):
                await b.open()
            await a.close()
            await b.open()  # released on close
            assert await b.request(b"ok\r", parse, timeout=2.0) == "OK"
        finally:
            await a.close()
            await b.close()


@pytest.mark.req("KA-TRN-005")
async def test_a_second_process_style_open_of_the_pty_is_refused() -> None:
    """pyserial's exclusive lock stops a second opener even outside our owner registry."""
    import serial

    async with pty_device() as (_sim, path):
        t = SerialTransport("line", serial_connector(path), port=path)
        try:
            await t.open()
            with pytest.raises(serial.SerialException):
                serial.Serial(path, exclusive=True)
        finally:
            await t.close()


@pytest.mark.req("KA-BAD-001")
def test_garbage_and_oversized_replies_are_framing_errors_not_hangs() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = LineDevice(clock=clock)
        t = SerialTransport("line", sim.memory_connector(), clock=clock, max_frame=256)
        await t.open()
        sim.inject(Fault(FaultKind.GARBAGE, size=64))
        with pytest.raises(FramingError):
            await t.request(b"a\r", parse, timeout=1.0)
        notes = [e.note for e in t.trace if e.direction == "note"]
        assert any(n.startswith("bad frame in reply to 'a'") for n in notes)
        # Oversized: a reply that starts right but never ends.
        big = LineDevice(clock=clock)
        big.handle_bytes = lambda data: [b"<" + b"A" * 5000]  # type: ignore[method-assign]
        t2 = SerialTransport("big", big.memory_connector(), clock=clock, max_frame=256)
        with pytest.raises(FramingError, match="exceeds 256 bytes"):
            await t2.request(b"a\r", parse, timeout=1.0)
        # Truncated: half a reply, then silence, is a timeout that says what arrived.
        cut = LineDevice(clock=clock)
        cut.handle_bytes = lambda data: [b"<HAL"]  # type: ignore[method-assign]
        t3 = SerialTransport("cut", cut.memory_connector(), clock=clock)
        with pytest.raises(DeviceTimeout, match="incomplete reply"):
            await t3.request(b"a\r", parse, timeout=1.0)
        # And the first line still works afterwards.
        assert await t.request(b"fine\r", parse, timeout=1.0) == "FINE"
        for x in (t, t2, t3):
            await x.close()
        for s in (sim, big, cut):
            await s.aclose()

    clock.run(main())


@pytest.mark.req("KA-TRN-004")
def test_trace_saved_and_replayed_as_a_device(tmp_path: Path) -> None:
    clock = VirtualClock()
    trace_file = tmp_path / "session.jsonl"

    async def record() -> list[str]:
        sim = LineDevice(clock=clock)
        trace = ByteTrace(path=trace_file)
        t = SerialTransport("line", sim.memory_connector(), clock=clock, trace=trace)
        replies = [await t.request(c, parse, timeout=1.0) for c in (b"one\r", b"two\r")]
        await t.close()
        await sim.aclose()
        trace.close()
        return replies

    recorded = clock.run(record())
    entries = ByteTrace.load(trace_file)
    assert [e.direction for e in entries if e.direction != "note"] == ["tx", "rx", "tx", "rx"]

    async def replay(commands: list[bytes], clock: VirtualClock) -> list[str]:
        stream = ReplayStream(entries)

        async def connect() -> ReplayStream:
            return stream

        t = SerialTransport("line", connect, clock=clock)
        try:
            return [await t.request(c, parse, timeout=1.0) for c in commands]
        finally:
            await t.close()

    clock2 = VirtualClock()
    assert clock2.run(replay([b"one\r", b"two\r"], clock2)) == recorded
    clock3 = VirtualClock()
    with pytest.raises(ReplayMismatch, match="trace expects"):
        clock3.run(replay([b"one\r", b"three\r"], clock3))


@pytest.mark.req("KA-TRN-001")
async def test_pty_is_raw_no_echo() -> None:
    """A byte that a cooked tty would translate (CR, ^C) arrives unchanged."""
    async with pty_device() as (sim, path):
        t = SerialTransport("line", serial_connector(path), port=path)
        try:

            def whole(b: bytes) -> tuple[bytes, int] | None:
                return (b, len(b)) if b.endswith(b"\r") else None

            await t.request(b"a\x03b\r", whole, timeout=2)
            assert sim.executed[-1] == b"a\x03b"
        finally:
            await t.close()
