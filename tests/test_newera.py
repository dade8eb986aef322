"""New Era NE-500/NE-1000: driver, simulator and the bytes between them.

Real ptys (PtyPort + serial_connector) on the real clock for wire behaviour; in-process memory
pipes under a VirtualClock for long pumping; plain pyserial as an independent client. The wire
format on its own (framing, parsers, random bytes) is in test_newera_protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import serial

from kiboauto.clock import Clock, RealClock, VirtualClock
from kiboauto.devices import (
    DeviceAlarm,
    DeviceBusy,
    DeviceError,
    DeviceTimeout,
    FramingError,
    Progress,
    SyringePump,
)
from kiboauto.drivers.newera import NewEraCommandError, NewEraPump
from kiboauto.drivers.newera_wire import (
    decode_reply_data,
    encode_safe_frame,
    parse_any_reply,
    parse_safe_frame,
    parse_safe_reply,
)
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.transport import BadFrame, SerialTransport
from kiboauto.hil.base import Fault, FaultKind
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.hil.ptyport import PtyPort
from kiboauto.units import Q_


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class PtyRig:
    """A simulator on a real pty and a driver that opens the pty's path like a serial port."""

    def __init__(self, sim: NewEraSim, pump: NewEraPump, port: PtyPort) -> None:
        self.sim = sim
        self.pump = pump
        self.port = port


@contextlib.asynccontextmanager
async def pty_rig(
    sim_options: dict[str, Any] | None = None, **pump_options: Any
) -> AsyncIterator[PtyRig]:
    clock = RealClock()
    sim = NewEraSim("pump1", clock, **(sim_options or {}))
    port = PtyPort(sim)
    port.start()
    transport = SerialTransport(
        "pump1",
        serial_connector(port.path, baudrate=NewEraPump.default_baudrate),
        port=port.path,
        clock=clock,
    )
    pump_options.setdefault("timeout", 0.4)
    pump_options.setdefault("address", sim.address)
    pump = NewEraPump("pump1", transport, clock=clock, **pump_options)
    try:
        yield PtyRig(sim, pump, port)
    finally:
        with contextlib.suppress(Exception):
            await pump.close()
        await port.close()
        await sim.aclose()


def memory_pump(sim: NewEraSim, clock: Clock, **options: Any) -> NewEraPump:
    transport = SerialTransport("pump1", sim.memory_connector(), port="mem:pump1", clock=clock)
    return NewEraPump("pump1", transport, clock=clock, address=sim.address, **options)


def tx_bytes(pump: NewEraPump) -> list[bytes]:
    return [e.data for e in pump.transport.trace if e.direction == "tx"]


def rx_bytes(pump: NewEraPump) -> bytes:
    return b"".join(e.data for e in pump.transport.trace if e.direction == "rx")


# ---------------------------------------------------------------------------------------------
# KA-DEV-001
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
async def test_driver_is_a_syringe_pump() -> None:
    sim = NewEraSim("p")
    pump = memory_pump(sim, RealClock())
    assert isinstance(pump, SyringePump)
    assert (NewEraPump.protocol, NewEraPump.kind, NewEraPump.default_baudrate) == (
        "newera",
        "pump",
        19200,
    )
    assert NewEraSim.protocol == NewEraPump.protocol
    assert NewEraSim("x").describe() == {
        "address": 0,
        "baudrate": 19200,
        "model": "NE-1000",
        "firmware": "NE1000V3.928",
        "safe_mode": False,
        "diameter_mm": 14.43,
    }


# ---------------------------------------------------------------------------------------------
# KA-DRV-001: basic mode over a real pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-001")
async def test_basic_mode_every_command_over_pty() -> None:
    async with pty_rig() as rig:
        pump, sim = rig.pump, rig.sim
        await pump.connect()
        # The power-up reset alarm was reported to the first command and so acknowledged.
        assert pump.last_alarm == "R" and sim.alarm is None
        info = await pump.identify()
        assert (info.model, info.firmware, info.status) == ("NE-1000", "NE1000V3.928", "stopped")
        assert info.port == rig.port.path and info.details["address"] == 0

        await pump.set_diameter("4.699 mm")
        assert (await pump.diameter()).m_as("mm") == pytest.approx(4.699)
        assert sim.volume_units == "UL"  # at or below 14.00 mm the pump counts in uL
        await pump.set_diameter(Q_(26.59, "mm"))
        assert sim.volume_units == "ML"
        await pump.set_diameter("14.43 mm")

        await pump.set_rate("10 uL/min")
        assert (await pump.rate()).m_as("uL/min") == pytest.approx(10)
        await pump.set_rate("1.5 mL/h")
        assert (await pump.rate()).m_as("mL/h") == pytest.approx(1.5)
        await pump.set_volume("250 uL")
        assert (await pump.volume_target()).m_as("uL") == pytest.approx(250)
        await pump.set_volume("2.5 mL")
        assert (await pump.volume_target()).m_as("mL") == pytest.approx(2.5)
        await pump.set_direction("WDR")
        assert await pump.direction() == "WDR"
        await pump.set_direction("REV")
        assert await pump.direction() == "INF"
        await pump.set_alarm_buzzer(False)
        assert await pump.query("AL") == "0"

        # RUN, then STP pauses and a second STP stops; DIS counts per direction; CLD clears.
        await pump.set_rate("400 mL/h")
        assert (await pump.run()).status == "I"
        assert await pump.is_moving()
        with pytest.raises(DeviceBusy):
            await pump.set_diameter("10 mm")  # ?NA while pumping
        await asyncio.sleep(0.1)
        reply = await pump.command("STP")
        assert reply.status == "P" and not await pump.is_moving()
        assert (await pump.command("STP")).status == "S"
        infused, withdrawn = await pump.dispensed()
        assert infused.m_as("uL") > 0 and withdrawn.m_as("uL") == 0
        await pump.clear_dispensed("INF")
        assert (await pump.query("DIS")) == "I0.000W0.000UL"
        assert (await pump.status()).text == "stopped"

        # Errors come back in the data field after the status.
        with pytest.raises(NewEraCommandError) as unknown:
            await pump.command("XYZ")
        assert unknown.value.code == ""
        with pytest.raises(NewEraCommandError) as oor:
            await pump.command("DIA99")
        assert oor.value.code == "OOR"
        with pytest.raises(NewEraCommandError) as fast:
            await pump.command("RAT9999MM")  # beyond the plunger's top speed
        assert fast.value.code == "OOR"
        with pytest.raises(NewEraCommandError):
            await pump.command("VOL12.3456")  # more than 4 digits

        # The wire: ASCII, address prefix, CR; replies STX, 2-digit address, status, ETX.
        sent = tx_bytes(pump)
        assert b"0DIA4.699\r" in sent and b"0RAT10.00UM\r" in sent and b"0RUN\r" in sent
        assert b"0VOLUL\r" in sent and b"0VOL250.0\r" in sent
        assert b"\x0200SNE1000V3.928\x03" in rx_bytes(pump)


@pytest.mark.req("KA-DRV-001")
async def test_addresses_on_a_network() -> None:
    async with pty_rig({"address": 7}) as rig:
        await rig.pump.connect()
        assert rig.pump.encode("VER") == b"7VER\r"
        assert await rig.pump.firmware() == "NE1000V3.928"
        # A pump with another address on the same line stays silent.
        other = NewEraPump("other", rig.pump.transport, clock=RealClock(), address=3, timeout=0.2)
        with pytest.raises(DeviceTimeout):
            await other.command("VER", retries=0)
        # '*' reaches the pump whatever its address; a burst runs this pump's part only.
        sim = rig.sim
        assert sim.handle_bytes(b"*VER\r") == [b"\x0207SNE1000V3.928\x03"]
        assert sim.handle_bytes(b"3 RAT 1 UM * 7 RAT 2 UM *\r") == [b"\x0207S\x03"]
        assert sim.rate_value == 2.0
        assert sim.handle_bytes(b"VER\r") == []  # no address means address 0


@pytest.mark.req("KA-DRV-001")
async def test_power_up_alarm_is_acknowledged_once() -> None:
    sim = NewEraSim("p")
    assert sim.handle_bytes(b"DIA 20\r") == [b"\x0200A?R\x03"]
    assert sim.diameter_mm == 14.43  # the command that carried the alarm was not carried out
    assert sim.handle_bytes(b"DIA 20\r") == [b"\x0200S\x03"]
    assert sim.diameter_mm == 20.0
    sim.raise_alarm("reset")
    assert sim.handle_bytes(b"\r") == [b"\x0200A?R\x03"]
    assert sim.handle_bytes(b"\r") == [b"\x0200S\x03"]


# ---------------------------------------------------------------------------------------------
# KA-DRV-002: safe mode
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-002")
async def test_safe_mode_over_pty() -> None:
    async with pty_rig(safe_mode=True, safe_timeout=30) as rig:
        pump, sim = rig.pump, rig.sim
        await pump.connect()
        assert sim.safe_timeout == 30
        assert await pump.firmware() == "NE1000V3.928"
        await pump.set_rate("25 uL/min")
        assert (await pump.rate()).m_as("uL/min") == pytest.approx(25)
        sent = tx_bytes(pump)[-1]
        assert sent == encode_safe_frame(b"0RAT") == b"\x02\x080RAT" + sent[-3:]
        assert parse_safe_frame(sent) == (b"0RAT", len(sent))
        assert rx_bytes(pump).endswith(encode_safe_frame(b"00S25.00UM"))

        # Host -> pump: a damaged CRC is answered with ?COM (the driver reports a FramingError).
        frame = bytearray(encode_safe_frame(b"0DIA20"))
        frame[-2] ^= 0xFF
        with pytest.raises(FramingError, match="COM"):
            await pump.transport.request(
                bytes(frame), pump._parser("DIA20", None, "safe"), timeout=0.5
            )
        assert sim.diameter_mm == 14.43
        # A basic command in safe mode is an invalid packet too.
        assert sim.handle_bytes(b"0VER\r") == [encode_safe_frame(b"00S?COM")]

        # Pump -> host: a reply whose CRC is damaged never passes the parser...
        good = encode_safe_frame(b"00SNE1000V3.928")
        bad = good[:-2] + bytes([good[-2] ^ 0x01]) + good[-1:]
        with pytest.raises(BadFrame, match="CRC"):
            parse_safe_reply(bad)
        # ... and on the line a corrupted reply is retried by a query, refused by RUN.
        sim.inject(Fault(FaultKind.CORRUPT))
        assert await pump.firmware() == "NE1000V3.928"
        assert sim.faults.applied[-1] == FaultKind.CORRUPT

        # The manual's packet for going back to basic mode, sent as-is.
        reply = await pump.transport.request(
            b"\x02\x08SAF0\x55\x43\x03", parse_any_reply, timeout=0.5
        )
        assert not reply.safe and reply.status == "S"  # answered in the mode now in force
        assert sim.safe_timeout == 0


@pytest.mark.req("KA-DRV-002")
async def test_connect_finds_the_mode_the_pump_is_in() -> None:
    # A pump left in safe mode by an earlier session, a driver that wants basic mode.
    async with pty_rig({"safe_timeout": 20}) as rig:
        await rig.pump.connect()
        assert rig.sim.safe_timeout == 0
        assert rig.pump.last_alarm == "R"
        assert await rig.pump.firmware() == "NE1000V3.928"
    # A pump in basic mode, a driver that wants safe mode.
    async with pty_rig(safe_mode=True, safe_timeout=200) as rig:
        await rig.pump.connect()
        assert rig.sim.safe_timeout == 200
        assert (await rig.pump.status()).status == "S"


@pytest.mark.req("KA-DRV-002")
def test_safe_mode_communications_timeout_alarm() -> None:
    clock = VirtualClock()

    async def main() -> None:
        # The pump side alone: a silent host stops the pump after the SAF time-out.
        sim = NewEraSim("p", clock, safe_timeout=10, diameter_mm=4.699, power_on_alarm=False)
        for command in (b"0RAT1UM", b"0VOL0", b"0RUN"):
            assert decode_reply_data(parse_safe_frame(sim.handle_bytes(
                encode_safe_frame(command))[0])[0]).error is None  # fmt: skip
        await clock.sleep(60)
        sim.advance()
        assert sim.state == "S" and sim.alarm == "T"
        assert sim.infused_ul == pytest.approx(10 / 60, rel=1e-6)  # stopped after 10 s
        assert sim.handle_bytes(encode_safe_frame(b"0")) == [encode_safe_frame(b"00A?T")]

        # With the driver: a line that goes dead during a dispense ends it with alarm T.
        sim = NewEraSim("q", clock, safe_timeout=10, diameter_mm=4.699)
        pump = memory_pump(sim, clock, safe_mode=True, safe_timeout=10, poll_failures=50)
        await pump.connect()
        action = pump.dispense("1 mL", "1 uL/min")
        await clock.sleep(20)
        sim.inject(Fault(FaultKind.HANGUP, seconds=30.0))
        with pytest.raises(DeviceAlarm) as alarm:
            await action
        assert alarm.value.code == "T"
        # Idle, the time-out alarm is acknowledged by the driver and the command sent again.
        await clock.sleep(60)
        assert await pump.firmware() == "NE1000V3.928"
        assert pump.last_alarm == "T"
        await pump.close()
        await sim.aclose()

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# KA-HIL-001: pump physics in virtual time
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-001")
@pytest.mark.req("KA-DEV-002")
@pytest.mark.req("KA-HIL-006")
def test_dispense_100_ul_at_10_ul_per_min_takes_ten_minutes() -> None:
    clock = VirtualClock()
    seen: list[Progress] = []

    async def main() -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        t0 = clock.now()
        action = pump.dispense("100 uL", "10 uL/min")
        action.watch(seen.append)
        result = await action
        elapsed = clock.now() - t0
        assert elapsed == pytest.approx(600, abs=1)
        assert result.delivered_ul == pytest.approx(100, abs=0.1)  # a PumpResult
        assert result.target_ul == 100 and result.marker.kind == "dispense"
        assert sim.infused_ul == pytest.approx(100)
        assert sim.contents_ul == pytest.approx(10_000 - 100)
        assert sim.state == "S" and not await pump.is_moving()
        # withdraw back
        back = await pump.withdraw("0.05 mL", "600 uL/h")
        assert back.delivered.m_as("uL") == pytest.approx(50, abs=0.1)
        assert sim.withdrawn_ul == pytest.approx(50)
        await pump.close()
        await sim.aclose()

    clock.run(main())
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len([f for f in fractions if 0 < f < 1]) >= 10
    mid = next(p for p in seen if 0.45 <= p.fraction <= 0.55)
    assert mid.unit == "uL" and mid.target == 100 and mid.message == "infusing"


@pytest.mark.req("KA-HIL-001")
def test_blocked_line_stalls_with_alarm_s() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        action = pump.dispense("100 uL", "10 uL/min")
        await clock.sleep(120)
        sim.blocked = True
        with pytest.raises(DeviceAlarm) as alarm:
            await action
        assert alarm.value.code == "S" and "stalled" in str(alarm.value)
        assert sim.infused_ul == pytest.approx(20, abs=0.5)  # nothing moved once blocked
        assert sim.alarm is None  # the reply that carried it acknowledged it
        assert await pump.is_moving() is False

        # A blocked line before the start: RUN is accepted, the motor stalls at once.
        with pytest.raises(DeviceAlarm):
            await pump.dispense("10 uL", "10 uL/min")
        sim.blocked = False
        # The end of the syringe stalls the motor as well.
        sim.contents_ul = 5.0
        with pytest.raises(DeviceAlarm, match="alarm S"):
            await pump.dispense("10 uL", "10 uL/min")
        assert sim.contents_ul == 0.0
        assert sim.alarm_history == ["R", "S", "S", "S"]
        await pump.close()
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-HIL-001")
@pytest.mark.req("KA-HIL-006")
@pytest.mark.req("KA-CLK-001")
def test_long_dispense_runs_in_virtual_time() -> None:
    clock = VirtualClock()

    async def main() -> float:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)  # default polling
        await pump.connect()
        t0 = clock.now()
        result = await pump.dispense("5 mL", "1 uL/min")
        assert result.delivered.m_as("mL") == pytest.approx(5, abs=0.001)
        await pump.close()
        await sim.aclose()
        return clock.now() - t0

    start = time.perf_counter()
    elapsed = clock.run(main())
    wall = time.perf_counter() - start
    assert elapsed == pytest.approx(5000 * 60, rel=1e-3)  # ~3.5 days
    assert wall < 20.0  # no real waiting (a real one would take 3.5 days)


@pytest.mark.req("KA-HIL-001")
def test_stop_pause_and_resume_semantics() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = NewEraSim("p", clock, power_on_alarm=False)
        for cmd in (b"RAT 60 UM\r", b"VOL 1\r", b"DIR INF\r", b"RUN\r"):  # 1 mL at 1 uL/s
            sim.handle_bytes(cmd)
        await clock.sleep(100)
        assert sim.handle_bytes(b"STP\r") == [b"\x0200P\x03"]
        await clock.sleep(1000)  # paused: nothing moves
        assert sim.handle_bytes(b"DIS\r") == [b"\x0200PI0.100W0.000ML\x03"]
        assert sim.handle_bytes(b"RUN\r") == [b"\x0200I\x03"]  # resumes the same phase
        await clock.sleep(900)
        assert sim.handle_bytes(b"DIS\r") == [b"\x0200SI1.000W0.000ML\x03"]  # target reached
        sim.handle_bytes(b"RUN\r")
        await clock.sleep(50)
        sim.handle_bytes(b"STP\r")
        assert sim.handle_bytes(b"STP\r") == [b"\x0200S\x03"]  # second STP: stopped
        sim.handle_bytes(b"RUN\r")  # a new run from the start of the phase
        await clock.sleep(2000)
        sim.advance()  # physics is lazy: bring it up to now before looking
        assert sim.infused_ul == pytest.approx(1000 + 50 + 1000)

    clock.run(main())


@pytest.mark.req("KA-HIL-001")
def test_cancelled_dispense_stops_the_pump() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        action = pump.dispense("1 mL", "10 uL/min")
        await clock.sleep(30)
        assert await pump.is_moving()
        with pytest.raises(DeviceBusy):
            pump.dispense("1 uL", "1 uL/min")
        await action.aclose()
        assert sim.state == "S"
        assert sim.commands.count("RUN") == 1
        # stop() while an action runs ends it with an error that says so
        action = pump.dispense("1 mL", "10 uL/min")
        await clock.sleep(30)
        await pump.stop()
        with pytest.raises(DeviceError, match="stop requested"):
            await action
        await pump.close()
        await sim.aclose()

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# KA-HIL-004: injected faults against the driver over a pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-004")
async def test_faults_over_pty() -> None:
    async with pty_rig(retries=0, timeout=0.3) as rig:
        pump, sim = rig.pump, rig.sim
        await pump.connect()

        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await pump.firmware()
        assert await pump.firmware() == "NE1000V3.928"

        sim.inject(Fault(FaultKind.DELAY, seconds=0.6))
        with pytest.raises(DeviceTimeout):
            await pump.firmware()
        await asyncio.sleep(0.6)  # the late reply lands and is discarded before the next ask
        assert await pump.firmware() == "NE1000V3.928"

        sim.inject(Fault(FaultKind.CORRUPT))
        with pytest.raises((FramingError, DeviceTimeout)):
            await pump.firmware()
        sim.faults.clear()
        for _ in range(3):
            sim.inject(Fault(FaultKind.CORRUPT))
            assert await pump.command("VER", retries=5) is not None

        sim.inject(Fault(FaultKind.GARBAGE, size=8192))
        with pytest.raises(FramingError):
            await pump.firmware()
        await asyncio.sleep(0.2)  # let the rest of the garbage drain (a query would retry)
        assert await pump.firmware() == "NE1000V3.928"

        sim.inject(Fault(FaultKind.HANGUP, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await pump.firmware()
        await asyncio.sleep(0.6)
        assert await pump.command("VER", retries=2) is not None

        sim.inject(Fault(FaultKind.ALARM, alarm="S"))
        with pytest.raises(DeviceAlarm) as alarm:
            await pump.firmware()
        assert alarm.value.code == "S"
        assert await pump.firmware() == "NE1000V3.928"


@pytest.mark.req("KA-HIL-004")
async def test_retried_query_survives_corruption_run_is_never_repeated() -> None:
    async with pty_rig(retries=3) as rig:
        pump, sim = rig.pump, rig.sim
        await pump.connect()
        for _ in range(5):
            sim.inject(Fault(FaultKind.CORRUPT))
            assert (await pump.diameter()).m_as("mm") == pytest.approx(14.43)
        await pump.set_volume("1 uL")
        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await pump.run()
        assert sim.commands.count("RUN") == 1
        await pump.stop()


@pytest.mark.req("KA-HIL-004")
def test_hangup_on_a_memory_line_reconnects() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock, retries=0)
        await pump.connect()
        sim.inject(Fault(FaultKind.HANGUP, seconds=5.0))
        with pytest.raises((DeviceTimeout, DeviceError)):
            await pump.firmware()
        await clock.sleep(6.0)
        assert await pump.command("VER", retries=3) is not None
        await pump.close()
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-HIL-004")
def test_faults_and_options_from_a_rig_file() -> None:
    from kiboauto.hil.rig import RigDevice, build_simulator

    clock = VirtualClock()

    async def main() -> None:
        device = RigDevice(
            protocol="newera",
            options={"address": 12, "diameter_mm": 4.699, "syringe_volume_ul": 1000},
            faults=[{"kind": "drop", "count": 2}, {"kind": "alarm", "alarm": "S"}],
        )
        sim = build_simulator("pump1", device, clock)
        assert sim.alarm == "S"  # raised at once, on top of the power-up reset
        pump = memory_pump(sim, clock, retries=0, diameter_mm=4.699)
        await pump.connect()  # connect's queries are retried past the dropped replies
        assert sim.faults.applied == [FaultKind.DROP, FaultKind.DROP]
        # The pump counts an alarm as acknowledged once it has sent it, even if the reply was
        # lost on the line: the host never learns of it (a hazard of the protocol itself).
        assert sim.alarm is None and pump.last_alarm is None
        assert pump.diameter_pending is False and sim.diameter_mm == 4.699
        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await pump.firmware()  # with retries=0 a drop is reported
        assert await pump.firmware() == "NE1000V3.928"
        assert sim.describe()["address"] == 12
        await pump.close()
        await sim.aclose()

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# KA-HIL-007: an independent client (plain pyserial) with the manual's command strings
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-007")
async def test_plain_pyserial_client() -> None:
    sim = NewEraSim("p")
    port = PtyPort(sim)
    port.start()

    def client() -> list[bytes]:
        answers = []
        with serial.Serial(port.path, 19200, timeout=1.0) as line:
            for command in (
                b"VER\r",
                b"VER\r",
                b"dia 26.59\r",
                b"DIA\r",
                b"RAT 15.0 MH\r",
                b"RAT\r",
                b"VOL 3.5\r",
                b"VOL\r",
                b"DIR INF\r",
                b"RUN\r",
                b"STP\r",
                b"STP\r",
                b"DIS\r",
                b"CLD INF\r",
                b"RAT 99999\r",
                b"HELLO\r",
                b"\x02\x08SAF0\x55\x43\x03",
            ):
                line.write(command)
                answers.append(line.read_until(b"\x03"))
        return answers

    try:
        answers = await asyncio.to_thread(client)
    finally:
        await port.close()
        await sim.aclose()
    assert answers[0] == b"\x0200A?R\x03"
    assert answers[1] == b"\x0200SNE1000V3.928\x03"
    assert answers[3] == b"\x0200S26.59\x03"
    assert answers[5] == b"\x0200S15.00MH\x03"
    assert answers[7] == b"\x0200S3.500ML\x03"
    assert answers[9] == b"\x0200I\x03"
    assert answers[10] == b"\x0200P\x03" and answers[11] == b"\x0200S\x03"
    assert answers[12].startswith(b"\x0200SI0.0") and answers[12].endswith(b"W0.000ML\x03")
    assert answers[14] == b"\x0200S?OOR\x03" and answers[15] == b"\x0200S?\x03"
    # A safe packet to a pump in basic mode is carried out and answered in basic framing.
    assert answers[16] == b"\x0200S\x03"
