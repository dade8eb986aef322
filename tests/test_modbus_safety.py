"""The Modbus thermal controller as something an engine can build on.

Replies matched to requests (a late reply is never another request's answer), what may be sent
twice declared once, nothing but typed device errors, alarms latched whoever read them first,
readings with units and severities, and what a new host finds after a crash. Everything runs in
virtual time through memory pipes except one check on a real pty, where the timing of a late
reply is the line's own.

The simulator is the device; its attributes are the ground truth (its SV, its true temperature,
its outputs), and a few are set directly to make it send values a real controller never should.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.pdu.bit_message import WriteSingleCoilRequest

import kiboauto.drivers.modbus_tc as tc
from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import (
    DeviceAlarm,
    DeviceError,
    DeviceEvent,
    DeviceTimeout,
    FramingError,
    Severity,
)
from kiboauto.drivers import modbus_tc_wire as m
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.transport import BadFrame, SerialTransport
from kiboauto.hil.base import Fault, FaultKind
from kiboauto.hil.ptyport import PtyPort
from kiboauto.hil.thermal_sim import ThermalSim
from kiboauto.units import Q_


# ---------------------------------------------------------------------------------------------
# rigs
# ---------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def rig(
    clock: VirtualClock, *, driver_opts: dict[str, Any] | None = None, **sim_opts: Any
) -> AsyncIterator[tuple[ThermalSim, Any]]:
    sim = ThermalSim("tc", clock, **sim_opts)
    transport = SerialTransport("tc", sim.memory_connector(), clock=clock)
    opts: dict[str, Any] = {"timeout": 0.5, "poll_interval": 5.0}
    opts.update(driver_opts or {})
    driver = tc.ModbusThermalController("tc", transport, clock=clock, **opts)
    try:
        await driver.connect()
        yield sim, driver
    finally:
        await driver.close()
        await sim.aclose()


def tx_frames(driver: Any) -> list[bytes]:
    return [e.data for e in driver.transport.trace if e.direction == "tx"]


def sv_truth(sim: ThermalSim) -> float:
    return sim.sv / 10.0


# ---------------------------------------------------------------------------------------------
# 1. a late reply is never taken for the next request's
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-TRN-006")
def test_a_late_pv_reply_is_never_read_as_the_setpoint() -> None:
    """20 trials: the PV reply comes late (past the 0.5 s timeout); read_setpoint then gives
    the controller's SV (30.0), never the PV (22.0). And the other way round."""
    clock = VirtualClock()

    async def main() -> tuple[list[float | str], list[float | str], int, int]:
        setpoints: list[float | str] = []
        temperatures: list[float | str] = []
        timeouts = 0
        async with rig(clock, ambient_c=22.0, setpoint_c=30.0, running=False) as (sim, drv):
            drv.retries = 0
            assert sv_truth(sim) == 30.0 and sim.temperature() == 22.0
            for trial in range(20):
                sim.inject(Fault(FaultKind.DELAY, seconds=0.5 * (1.05 + 0.25 * (trial % 8))))
                timeouts += await _times_out(drv.read_temperature())
                setpoints.append(await _degrees_or_error(drv.read_setpoint()))
                # the other way round: a late SV reply is not the next PV
                sim.inject(Fault(FaultKind.DELAY, seconds=0.5 * (1.1 + 0.2 * (trial % 5))))
                timeouts += await _times_out(drv.read_setpoint())
                temperatures.append(await _degrees_or_error(drv.read_temperature()))
            resyncs = drv.transport.resyncs
            assert sv_truth(sim) == 30.0 and round(sim.temperature(), 1) == 22.0
        return setpoints, temperatures, timeouts, resyncs

    setpoints, temperatures, timeouts, resyncs = clock.run(main())
    assert setpoints == [30.0] * 20
    assert temperatures == [22.0] * 20
    assert timeouts == 40 and resyncs == 40


async def _degrees_or_error(call: Any) -> float | str:
    try:
        return float((await call).to("degC").magnitude)
    except DeviceError as e:
        return type(e).__name__


async def _times_out(call: Any) -> int:
    try:
        await call
    except DeviceTimeout:
        return 1
    return 0


@pytest.mark.req("KA-TRN-006")
def test_resync_query_is_a_read_no_other_request_makes() -> None:
    """The resync query reads 8 words (byte count 16); a caller's 8-word read goes out as two
    4-word reads, so no other reply can look like the resync's answer."""
    clock = VirtualClock()

    async def main() -> None:
        async with rig(clock) as (sim, drv):
            before = len(tx_frames(drv))
            words = await drv.read_registers(m.REG_PV, 8)
            assert len(words) == 8 and words[1] == sim.sv
            sent = tx_frames(drv)[before:]
            assert [f[4:6] for f in sent] == [b"\x00\x04", b"\x00\x04"]
            resync = tc.ModbusThermalController._resync_parse
            parse = drv._parser(3, 5 + 2 * 8)
            answer = _read_reply(drv.unit, list(range(8)))
            assert resync(drv, answer) == (True, 21)
            assert parse(answer) is not None  # the same frame, were anyone to ask for 8 words
            for count in range(1, 8):
                frame = _read_reply(drv.unit, [0] * count)
                assert resync(drv, frame) == (False, len(frame))
                with pytest.raises(BadFrame):
                    drv._parser(3, 5 + 2 * count)(answer)  # the resync answer is no-one else's

    clock.run(main())


def _read_reply(unit: int, words: list[int]) -> bytes:
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    return FramerRTU(DecodePDU(True)).buildFrame(
        ReadHoldingRegistersResponse(registers=words, dev_id=unit)
    )


@pytest.mark.req("KA-TRN-006")
def test_late_reply_and_resync_answer_in_one_chunk_are_cut_apart() -> None:
    """The resync parser cuts exactly one frame at a time (pymodbus's decode swallows the whole
    buffer), and skips line noise up to the next byte that could start a reply."""
    clock = VirtualClock()
    sim = ThermalSim("tc", clock)
    drv = tc.ModbusThermalController(
        "tc", SerialTransport("tc", sim.memory_connector(), clock=clock), clock=clock
    )
    late = _read_reply(1, [220])
    answer = _read_reply(1, list(range(8)))
    buf = b"\x55\x00" + late + answer
    assert drv._resync_parse(buf) == (False, 2)
    assert drv._resync_parse(buf[2:]) == (False, len(late))
    assert drv._resync_parse(buf[2 + len(late) :]) == (True, len(answer))
    assert drv._resync_parse(answer[:10]) is None  # incomplete: wait for the rest
    other_unit = _read_reply(7, list(range(8)))
    assert drv._resync_parse(other_unit)[0] is False


@pytest.mark.req("KA-TRN-006")
def test_a_request_cancelled_in_flight_leaves_no_reply_for_the_next() -> None:
    """A read cancelled while its reply is on the way (an engine's timeout): the next, different
    request still gets its own answer."""
    clock = VirtualClock()

    async def main() -> float:
        async with rig(clock, setpoint_c=30.0, running=False) as (sim, drv):
            sim.inject(Fault(FaultKind.DELAY, seconds=1.0))
            task = asyncio.get_running_loop().create_task(drv.read_temperature())
            await clock.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return float((await drv.read_setpoint()).to("degC").magnitude)

    assert clock.run(main()) == 30.0


@pytest.mark.req("KA-TRN-006")
async def test_late_replies_on_a_real_pty() -> None:
    """The same on a real line (short timeouts, a few trials, under a second of waiting)."""
    clock = RealClock()
    sim = ThermalSim("tc", clock, setpoint_c=30.0, running=False)
    port = PtyPort(sim)
    port.start()
    transport = SerialTransport(
        "tc-pty", serial_connector(port.path, baudrate=9600), port=port.path, clock=clock
    )
    drv = tc.ModbusThermalController("tc-pty", transport, clock=clock, timeout=0.5)
    try:
        await drv.connect()
        drv.timeout = 0.12
        for delay in (0.15, 0.2, 0.25):
            sim.inject(Fault(FaultKind.DELAY, seconds=delay))
            drv.retries = 0
            with pytest.raises(DeviceTimeout):
                await drv.read_temperature()
            drv.retries = 1  # a slow machine may time out once more: never a wrong value
            assert await drv.read_setpoint() == Q_(30.0, "degC")
    finally:
        await drv.close()
        await port.close()
        await sim.aclose()


# ---------------------------------------------------------------------------------------------
# 2. what may be repeated: declared once
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-TRN-002")
def test_idempotence_is_declared_once_per_request_kind() -> None:
    assert set(tc.IDEMPOTENT) == set(tc.RequestKind)
    repeatable = {k for k, safe in tc.IDEMPOTENT.items() if safe}
    assert repeatable == set(tc.RequestKind) - {tc.RequestKind.START_AUTOTUNE}
    kind = tc.request_kind
    assert kind(0x03) is tc.RequestKind.READ_WORDS
    assert kind(0x02) is tc.RequestKind.READ_BITS
    assert kind(0x06, m.REG_SV) is tc.RequestKind.WRITE_WORD
    assert kind(0x10, m.REG_UPPER_LIMIT) is tc.RequestKind.WRITE_WORDS
    assert kind(0x05, m.BIT_RUN, True) is tc.RequestKind.WRITE_SWITCH
    assert kind(0x05, m.BIT_AUTOTUNE, False) is tc.RequestKind.WRITE_SWITCH
    assert kind(0x05, m.BIT_AUTOTUNE, True) is tc.RequestKind.START_AUTOTUNE
    with pytest.raises(TypeError):
        tc.IDEMPOTENT[tc.RequestKind.START_AUTOTUNE] = True  # type: ignore[index]


@pytest.mark.req("KA-TRN-002")
def test_lost_echoes_repeat_settings_but_never_an_autotune_start() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with rig(clock, comm_write=True) as (sim, drv):
            # an absolute setting: the echo is lost, the same write goes out again
            sim.inject(Fault(FaultKind.DROP))
            before = len(tx_frames(drv))
            await drv.set_setpoint("31 degC")
            writes = [f for f in tx_frames(drv)[before:] if f[1] == 0x06]
            assert len(writes) == 2 and writes[0] == writes[1]
            assert sv_truth(sim) == 31.0

            # the autotune start: echo lost, sent once, resolved by asking the device
            for fault in (FaultKind.DROP, FaultKind.CORRUPT):
                sim.bits[m.BIT_AUTOTUNE] = False
                sim.inject(Fault(fault))
                before = len(tx_frames(drv))
                await drv.autotune(True)
                starts = [f for f in tx_frames(drv)[before:] if f[1] == 0x05]
                assert len(starts) == 1
                assert sim.bits[m.BIT_AUTOTUNE]
                assert (await drv.status()).autotuning

            # stopping it is a state: repeated after a lost echo
            sim.inject(Fault(FaultKind.DROP))
            before = len(tx_frames(drv))
            await drv.autotune(False)
            assert len([f for f in tx_frames(drv)[before:] if f[1] == 0x05]) == 2
            assert not sim.bits[m.BIT_AUTOTUNE]

            # a start the device refuses is reported, not repeated
            sim.bits[m.BIT_COMM_WRITE] = False
            before = len(tx_frames(drv))
            with pytest.raises(tc.ModbusExceptionReply):
                await drv.autotune(True)
            assert len([f for f in tx_frames(drv)[before:] if f[1] == 0x05]) == 1

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# 3. typed errors only
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-004")
@pytest.mark.req("KA-TRN-006")
def test_impossible_register_values_are_framing_errors() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with rig(clock, running=False) as (sim, drv):
            sim.pv_fault = 0x8001  # not a code of the manual, not a temperature
            with pytest.raises(FramingError):
                await drv.read_temperature()
            with pytest.raises(FramingError):
                await drv.status()
            with pytest.raises(FramingError):
                await drv.read()
            sim.pv_fault = None
            assert await drv.read_temperature() == Q_(22.0, "degC")

            sim.sv = 20000  # 2000.0 degC: beyond the four digits
            with pytest.raises(FramingError):
                await drv.read_setpoint()
            sim.sv = 250

            sim.upper, sim.lower = 100, 500  # an upper limit below the lower one
            with pytest.raises(FramingError):
                await drv.read_limits()
            sim.upper, sim.lower = 600, -100

            sim.bits[m.BIT_RUN] = True
            sim.regs[m.REG_CONTROL_METHOD] = 2
            sim.manual_out[0] = 1500  # 150 %
            with pytest.raises(FramingError):
                await drv.status()
            sim.manual_out[0] = 0
            sim.regs[m.REG_HEAT_COOL] = 9
            with pytest.raises(FramingError):
                await drv.status()
            sim.regs[m.REG_HEAT_COOL] = 2
            sim.regs[m.REG_CONTROL_METHOD] = 0
            assert (await drv.status()).sv == 25.0
            assert drv.transport.resyncs >= 5  # each unbelievable reply put the line out of step

            # what the caller asks for that cannot be sent: a DeviceError and a ValueError
            for call in (
                drv.read_registers(m.REG_PV, 9),
                drv.read_bits(m.BIT_AT_LED, 17),
                drv.write_register(m.REG_SV, 0x10000),
                drv.set_setpoint("30 kg"),
                drv.set_setpoint("75 degC"),
                drv.set_limits("50 degC", "10 degC"),
                drv.set_control_method(9),
                drv.set_pid("2 s", 1, 1),
            ):
                with pytest.raises(tc.InvalidRequest) as err:
                    await call
                assert isinstance(err.value, DeviceError) and isinstance(err.value, ValueError)
            with pytest.raises(tc.InvalidRequest):
                drv.settle("30 degC", "-1 K", "1 min", "1 h")

    clock.run(main())


@pytest.mark.req("KA-BAD-004")
def test_every_call_under_line_faults_raises_device_errors_only() -> None:
    """Garbage, corruption, drops and late replies in every request of every public call:
    the driver answers correctly or raises a DeviceError, and recovers."""
    clock = VirtualClock()
    kinds = [FaultKind.GARBAGE, FaultKind.CORRUPT, FaultKind.DROP, FaultKind.DELAY]

    async def main() -> dict[str, int]:
        outcomes = {"ok": 0, "error": 0}
        async with rig(clock, driver_opts={"retries": 0}) as (sim, drv):
            calls = [
                drv.read_temperature,
                drv.read_setpoint,
                drv.read_limits,
                drv.status,
                drv.read,
                drv.identify,
                drv.is_running,
                drv.check_alarms,
                lambda: drv.set_setpoint("25 degC"),
                lambda: drv.run(True),
                lambda: drv.read_registers(m.REG_PV, 8),
            ]
            for i in range(120):
                kind = kinds[i % len(kinds)]
                sim.inject(Fault(kind, skip=i % 3, seconds=0.8, size=7 + (i * 37) % 300))
                try:
                    await calls[i % len(calls)]()
                    outcomes["ok"] += 1
                except DeviceError:
                    outcomes["error"] += 1
                sim.faults.clear()
                await clock.sleep(1.0)
            # and the line is usable afterwards
            assert await drv.read_setpoint() == Q_(sv_truth(sim), "degC")
            assert (await drv.status()).sv == sv_truth(sim)
        return outcomes

    outcomes = clock.run(main())
    assert outcomes["ok"] > 10 and outcomes["error"] > 10


@pytest.mark.req("KA-BAD-004")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64), count=st.integers(1, 7), fc=st.sampled_from([2, 3, 5, 6, 16]))
def test_any_bytes_into_the_parsers_give_badframe_or_a_frame(
    data: bytes, count: int, fc: int
) -> None:
    clock = RealClock()
    sim = ThermalSim("tc")
    drv = tc.ModbusThermalController(
        "tc", SerialTransport("tc", sim.memory_connector(), clock=clock), clock=clock
    )
    size = {3: 5 + 2 * count, 2: 5 + (count + 7) // 8}.get(fc, 8)
    echo = bytes([fc, 0x10, 0x01, 0x00, 0xC8]) if fc in (5, 6, 16) else None
    for buf in (data, b"\x01" + data, bytes([1, fc]) + data, bytes([1, fc | 0x80]) + data):
        try:
            parsed = drv._parser(fc, size, echo)(buf)
        except BadFrame:
            parsed = None
        if parsed is not None:
            _pdu, used = parsed
            assert used in (size, 5) and used <= len(buf)
        got = drv._resync_parse(buf)
        if got is not None:
            matched, used = got
            assert 1 <= used <= len(buf)
            assert not matched or (buf[1] == 3 and buf[2] == 16 and used == 21)


# ---------------------------------------------------------------------------------------------
# 4. latched alarms
# ---------------------------------------------------------------------------------------------
def _poller(drv: Any, clock: VirtualClock, every: float, seen: list[str]) -> asyncio.Task[None]:
    async def poll() -> None:
        while True:
            readings = await drv.read()
            seen.append(str(readings["alarms"].value))
            await clock.sleep(every)

    return asyncio.get_running_loop().create_task(poll())


@pytest.mark.req("KA-DEV-005")
def test_a_sensor_fault_seen_only_by_the_poller_stops_settle() -> None:
    """The sensor drops out for 30 s between two of settle's polls (60 s apart); a telemetry
    poller reading every 5 s sees it. settle raises it all the same; one event is published."""
    clock = VirtualClock()

    async def main() -> tuple[list[DeviceEvent], list[str], float]:
        events: list[DeviceEvent] = []
        seen: list[str] = []
        wall = time.perf_counter()
        async with rig(clock, driver_opts={"poll_interval": 60.0}) as (sim, drv):
            drv.alarms.subscribe(events.append)
            action = drv.settle("30 degC", "0.1 degC", "10 min", "3 h")
            poller = _poller(drv, clock, 5.0, seen)
            t0 = clock.now()
            await clock.sleep(70)
            sim.raise_alarm("0x8003")
            await clock.sleep(30)
            sim.raise_alarm("clear")
            with pytest.raises(DeviceAlarm) as err:
                await action
            assert err.value.code == "0x8003"
            assert 100 < clock.now() - t0 <= 121  # at settle's next own poll, not later
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            assert "0x8003" in drv.alarms.active
        return events, seen, time.perf_counter() - wall

    events, seen, wall = clock.run(main())
    assert [(e.code, e.severity) for e in events] == [("0x8003", Severity.MAJOR)]
    assert seen.count("0x8003") >= 4  # the poller saw it several times: latched once
    assert wall < 5.0


@pytest.mark.req("KA-DEV-005")
def test_a_trip_seen_only_by_the_poller_and_rearmed_still_stops_settle() -> None:
    """The over-temperature trip acts and is re-armed (RUN written) between two of settle's
    polls: the poller saw it; settle raises the trip (code of the lamp, AL1)."""
    clock = VirtualClock()

    async def main() -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        async with rig(clock, driver_opts={"poll_interval": 60.0}) as (sim, drv):
            drv.alarms.subscribe(events.append)
            action = drv.settle("30 degC", "0.1 degC", "10 min", "3 h")
            poller = _poller(drv, clock, 5.0, [])
            await clock.sleep(70)
            sim.raise_alarm("overtemp")
            await clock.sleep(20)
            await drv.run(True)  # an operator re-arms it: below the limit, so it clears
            assert not sim.tripped
            with pytest.raises(DeviceAlarm) as err:
                await action
            assert err.value.code == "AL1"
            assert "system alarm" in err.value.alarm_message
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        return events

    events = clock.run(main())
    codes = [e.code for e in events]
    assert codes.count("AL1") == 2  # the lamp and the system alarm it named, once each
    assert {e.message for e in events} == {
        "alarm 1 acting",
        "system alarm acting: control outputs are off",
    }


@pytest.mark.req("KA-DEV-005")
def test_settle_with_a_concurrent_poller_gets_its_own_replies() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with rig(clock) as (sim, drv):
            seen: list[str] = []
            poller = _poller(drv, clock, 3.3, seen)
            result = await drv.settle("25 degC", "0.1 degC", "2 min", "2 h")
            assert abs(result.to("degC").magnitude - 25.0) <= 0.1
            assert abs(sim.temperature() - 25.0) < 0.15
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            assert len(seen) > 100 and set(seen) == {""}
            assert drv.alarms.count == 0
            assert drv.transport.late_frames == 0

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# 5. readings
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-006")
@pytest.mark.req("KA-DEV-007")
def test_readings_units_limits_and_severities() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with rig(clock) as (sim, drv):
            desc = drv.describe()
            assert set(desc) == {
                "temperature",
                "setpoint",
                "heater_output",
                "cooler_output",
                "running",
                "alarms",
            }
            assert desc["temperature"].unit == "degC"
            assert desc["temperature"].limits == (-10.0, 60.0)  # the controller's range
            assert desc["setpoint"].limits == (-10.0, 60.0)
            assert desc["heater_output"].unit == "percent"
            assert desc["heater_output"].limits == (0.0, 100.0)
            assert desc["running"].unit == ""
            await drv.set_limits("0 degC", "50 degC")
            assert drv.describe()["temperature"].limits == (0.0, 50.0)

            await drv.set_setpoint("37 degC")
            await clock.sleep(60)
            r = await drv.read()
            assert r["temperature"].value == Q_(round(sim.temperature(), 1), "degC")
            assert r["temperature"].severity is Severity.OK
            assert r["temperature"].timestamp == clock.wall()
            assert r["setpoint"].value == Q_(37.0, "degC")
            heat, cool = sim.out
            assert r["heater_output"].value == Q_(round(heat * 100, 1), "percent")
            assert r["heater_output"].value.to("percent").magnitude > 0
            assert r["cooler_output"].value == Q_(round(cool * 100, 1), "percent")
            assert r["running"].value is True
            assert r["alarms"].value == "" and r["alarms"].severity is Severity.OK
            assert r["temperature"].to_json()["value"]["unit"] == str(Q_(1, "degC").units)

            # a sensor error: the temperature is invalid, not a number
            sim.raise_alarm("0x8003")
            r = await drv.read()
            assert r["temperature"].severity is Severity.INVALID
            assert math.isnan(r["temperature"].value.magnitude)
            assert "0x8003" in r["temperature"].message
            assert r["temperature"].to_json()["value"]["value"] is None
            assert r["alarms"].value == "0x8003"
            sim.raise_alarm("clear")
            drv.alarms.acknowledge()

            # the trip: temperature and outputs MAJOR, outputs at 0
            sim.raise_alarm("overtemp")
            r = await drv.read()
            assert r["temperature"].severity is Severity.MAJOR
            assert r["heater_output"].severity is Severity.MAJOR
            assert r["heater_output"].value == Q_(0.0, "percent")
            assert r["alarms"].severity is Severity.MAJOR
            assert set(r["alarms"].value.split(",")) == {"AL1", "SYS"}

            # heating only: no cooling output; cooling/heating: the heater is on output 2
            await clock.sleep(3600)
            await drv.run(True)
            await drv.write_register(m.REG_HEAT_COOL, 0)
            r = await drv.read()
            assert "cooler_output" not in r and "cooler_output" not in drv.describe()
            await drv.write_register(m.REG_HEAT_COOL, 3)
            await clock.sleep(30)
            st = await drv.status()
            r = await drv.read()
            heat, cool = sim.out
            assert st.output2_pct == round(heat * 100, 1)
            assert r["heater_output"].value == Q_(round(heat * 100, 1), "percent")
            assert r["cooler_output"].value == Q_(round(cool * 100, 1), "percent")

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# 6./7. virtual time, and a new host after a crash
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-005")
def test_a_new_host_after_a_crash_reads_the_kept_state_and_moves_nothing() -> None:
    """The host dies in the middle of a settle (nothing is stopped). A new driver on a new line
    finds the controller's SV and RUN as they were, latches the alarm the controller shows,
    sends no write but the write-enable bit, and a repeated settle just finishes."""
    clock = VirtualClock()

    async def main() -> None:
        sim = ThermalSim("tc", clock)
        first = tc.ModbusThermalController(
            "tc-a", SerialTransport("tc-a", sim.memory_connector(), clock=clock), clock=clock
        )
        await first.connect()
        action = first.settle("30 degC", "0.1 degC", "5 min", "3 h")
        await clock.sleep(600)
        assert not action.done
        await action.aclose()  # the host process is gone; nothing is sent on its behalf
        await first.transport.close()
        assert sv_truth(sim) == 30.0 and sim.bits[m.BIT_RUN]
        sim.raise_alarm("0x8004")
        await clock.sleep(60)
        sim.raise_alarm("clear")
        sim.raise_alarm("overtemp")  # a trip that latched while no host was there

        second = tc.ModbusThermalController(
            "tc-b", SerialTransport("tc-b", sim.memory_connector(), clock=clock), clock=clock
        )
        await second.connect()
        st = second.last_status
        assert st is not None and st.sv == 30.0 and st.running and st.system_alarm
        assert st.limits == (-10.0, 60.0)
        writes = [f for f in tx_frames(second) if f[1] in (0x05, 0x06, 0x10)]
        assert writes == [
            second._framer.buildFrame(
                WriteSingleCoilRequest(address=m.BIT_COMM_WRITE, bits=[True], dev_id=1)
            )
        ]
        assert {"AL1"} <= set(second.alarms.active)
        assert sim.trips == 1 and sv_truth(sim) == 30.0

        await clock.sleep(1800)
        await second.run(True)  # the operator re-arms the trip
        result = await second.settle("30 degC", "0.1 degC", "5 min", "3 h")
        assert abs(result.to("degC").magnitude - 30.0) <= 0.1
        await second.close()
        await sim.aclose()

    wall = time.perf_counter()
    clock.run(main())
    assert time.perf_counter() - wall < 10.0
