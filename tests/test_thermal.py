"""The Modbus RTU temperature controller (CN7500/DTB map): driver, simulator, plant, faults.

Register-level behaviour and faults run over real ptys on the real clock (short timeouts); the
plant's minutes-to-hours dynamics run in virtual time through memory pipes. pymodbus's own
client checks the simulator independently of our driver.
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
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
)

from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import (
    DeviceAlarm,
    DeviceTimeout,
    FramingError,
    ThermalController,
)
from kiboauto.drivers import modbus_tc_wire as m
from kiboauto.drivers.modbus_tc import (
    ModbusExceptionReply,
    ModbusThermalController,
    SetpointOutOfRange,
)
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
async def pty_rig(
    *, connect: bool = True, driver_opts: dict[str, Any] | None = None, **sim_opts: Any
) -> AsyncIterator[tuple[ThermalSim, ModbusThermalController, PtyPort]]:
    clock = RealClock()
    sim = ThermalSim("tc", clock, **sim_opts)
    port = PtyPort(sim)
    port.start()
    transport = SerialTransport(
        "tc", serial_connector(port.path, baudrate=9600), port=port.path, clock=clock
    )
    opts: dict[str, Any] = {"timeout": 0.3, "retries": 1}
    opts.update(driver_opts or {})
    driver = ModbusThermalController("tc", transport, clock=clock, **opts)
    try:
        if connect:
            await driver.connect()
        yield sim, driver, port
    finally:
        await driver.close()
        await port.close()
        await sim.aclose()


@contextlib.asynccontextmanager
async def memory_rig(
    clock: VirtualClock, **sim_opts: Any
) -> AsyncIterator[tuple[ThermalSim, ModbusThermalController]]:
    sim = ThermalSim("tc", clock, **sim_opts)
    transport = SerialTransport("tc", sim.memory_connector(), clock=clock)
    driver = ModbusThermalController("tc", transport, clock=clock, poll_interval=5.0)
    try:
        await driver.connect()
        yield sim, driver
    finally:
        await driver.close()
        await sim.aclose()


def client_framer() -> FramerRTU:
    return FramerRTU(DecodePDU(False))


# ---------------------------------------------------------------------------------------------
# KA-DEV-001
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
async def test_driver_is_a_thermal_controller() -> None:
    clock = RealClock()
    sim = ThermalSim("tc")
    transport = SerialTransport("tc", sim.memory_connector(), clock=clock)
    driver = ModbusThermalController("tc", transport, clock=clock)
    assert isinstance(driver, ThermalController)
    assert (driver.protocol, driver.kind, driver.default_baudrate) == ("modbus-tc", "thermal", 9600)
    assert sim.protocol == driver.protocol
    assert sim.describe() == {
        "unit": 1,
        "baudrate": 9600,
        "bytesize": 8,
        "parity": "N",
        "stopbits": 1,
        "framing": "rtu",
    }
    with pytest.raises(TypeError):
        ModbusThermalController("tc", transport, clock=clock, bogus=1)
    with pytest.raises(ValueError):
        ModbusThermalController("tc", transport, clock=clock, unit=0)


# ---------------------------------------------------------------------------------------------
# KA-DRV-005: every register and command over a real pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-005")
async def test_identify_read_write_run_stop_over_a_pty() -> None:
    async with pty_rig(ambient_c=22.0, firmware="V1.02") as (sim, drv, port):
        info = await drv.identify()
        assert info.firmware == "V1.02"
        assert info.protocol == "modbus-tc" and info.kind == "thermal"
        assert info.port == port.path
        assert info.status == "RUN"
        assert await drv.read_temperature() == Q_(22.0, "degC")
        assert await drv.read_setpoint() == Q_(22.0, "degC")
        assert await drv.read_limits() == (-10.0, 60.0)

        await drv.set_setpoint("30.5 degC")
        assert await drv.read_setpoint() == Q_(30.5, "degC")
        await drv.set_setpoint(Q_(270.15, "K"))  # -3.0 degC: negative values are signed words
        assert (await drv.read_registers(m.REG_SV, 1))[0] == 0xFFE2
        assert await drv.read_setpoint() == Q_(-3.0, "degC")
        with pytest.raises(SetpointOutOfRange):
            await drv.set_setpoint("75 degC")

        # limits through function 10h (two words at once)
        await drv.set_limits("0 degC", "50 degC")
        assert await drv.read_registers(m.REG_UPPER_LIMIT, 2) == [500, 0]
        assert sim.sv == 0  # SV was pulled inside the new range
        await drv.set_setpoint("37 degC")

        # run / stop via bit 0814h
        await drv.run(False)
        assert not await drv.is_running()
        status = await drv.status()
        assert not status.running and status.output1_pct == 0 and status.output2_pct == 0
        await drv.run(True)
        assert await drv.is_running()
        status = await drv.status()
        assert status.running and status.control_method == "PID"
        assert status.heat_cool == "heating/cooling"
        assert status.output1_pct > 0  # 37 degC wanted, 22 degC measured: heating
        assert status.leds & (1 << 6)  # OUT1 lamp in the LED word

        # PID settings and control method
        await drv.set_pid(12.5, 300, 10)
        assert await drv.read_registers(m.REG_PB, 3) == [125, 300, 10]
        await drv.set_control_method(1)
        assert (await drv.status()).control_method == "ON/OFF"
        await drv.set_control_method(0)
        assert await drv.read_version() == "V1.02"
        assert (await drv.read_bits(m.BIT_DEGC_LED, 1)) == [True]


@pytest.mark.req("KA-DRV-005")
async def test_pv_error_codes_become_device_alarms() -> None:
    async with pty_rig() as (sim, drv, _port):
        for code in ("0x8002", "0x8003", "0x8004", "0x8006", "0x8007"):
            sim.raise_alarm(code)
            with pytest.raises(DeviceAlarm) as err:
                await drv.read_temperature()
            assert err.value.code == code
            assert (await drv.status()).pv_error == code
        # a broken settings memory also refuses writes (device failure)
        with pytest.raises(ModbusExceptionReply) as exc:
            await drv.write_register(m.REG_SV, 250)
        assert exc.value.exception_code == 0x04
        sim.raise_alarm("clear")
        assert await drv.read_temperature() == Q_(22.0, "degC")
        with pytest.raises(ValueError):
            sim.raise_alarm("no-such-alarm")


@pytest.mark.req("KA-DRV-005")
async def test_initial_process_code_until_first_measurement() -> None:
    async with pty_rig(startup_s=0.4, connect=False) as (_sim, drv, _port):
        await drv.transport.open()
        with pytest.raises(DeviceAlarm) as err:
            await drv.read_temperature()
        assert err.value.code == "0x8002"
        await asyncio.sleep(0.45)
        assert await drv.read_temperature() == Q_(22.0, "degC")


@pytest.mark.req("KA-DRV-005")
async def test_modbus_exception_replies() -> None:
    async with pty_rig() as (sim, drv, _port):
        cases = [
            (drv.read_registers(0x2000, 1), 0x02),  # no such register
            (drv.read_registers(0x102D, 3), 0x02),  # a gap in the map
            (drv.write_register(m.REG_PV, 100), 0x02),  # read-only
            (drv.write_register(m.REG_SV, m.to_word(900)), 0x03),  # above the upper limit
            (drv.write_register(m.REG_CONTROL_METHOD, 9), 0x03),  # not a method
            (drv.write_register(m.REG_OUTPUT1, 500), 0x03),  # outputs: manual mode only
            (drv.write_registers(m.REG_UPPER_LIMIT, [0, 100]), 0x03),  # upper below lower
            (drv.read_bits(0x0900, 1), 0x02),
            (drv.write_bit(m.BIT_DEGC_LED, True), 0x02),  # a lamp is not a setting
        ]
        for call, code in cases:
            with pytest.raises(ModbusExceptionReply) as exc:
                await call
            assert exc.value.exception_code == code, exc.value
            assert exc.value.code == f"modbus-0x{code:02X}"
        # a refused multi-write changes nothing
        assert await drv.read_registers(m.REG_UPPER_LIMIT, 2) == [600, m.to_word(-100)]

        # counts beyond the controller's 8 words, and functions it does not have
        framer = client_framer()
        parse3 = drv._parser(3, 5)
        too_many = framer.buildFrame(ReadHoldingRegistersRequest(address=0x1000, count=9, dev_id=1))
        reply = await drv.transport.request(too_many, parse3, timeout=0.5)
        assert reply.exception_code == 0x03
        coils = framer.buildFrame(ReadCoilsRequest(address=0x0814, count=1, dev_id=1))
        reply = await drv.transport.request(coils, drv._parser(1, 6), timeout=0.5)
        assert reply.exception_code == 0x01
        unknown = framer.encode(bytes([0x41, 0x00, 0x01]), 1, 0)  # a function pymodbus lacks
        reply = await drv.transport.request(unknown, drv._parser(0x41, 5), timeout=0.5)
        assert reply.exception_code == 0x01
        # another unit's request is not ours to answer
        other = framer.buildFrame(ReadHoldingRegistersRequest(address=0x1000, count=1, dev_id=7))
        with pytest.raises(DeviceTimeout):
            await drv.transport.request(other, parse3, timeout=0.2)
        # manual mode makes the outputs writable
        await drv.set_control_method(2)
        await drv.write_register(m.REG_OUTPUT1, 250)
        assert (await drv.status()).output1_pct == 25.0
        assert sim.out == (0.25, 0.0)


@pytest.mark.req("KA-DRV-005")
async def test_writes_need_the_communication_write_bit() -> None:
    opts = {"enable_comm_write": False}
    async with pty_rig(driver_opts=opts) as (_sim, drv, _port):
        with pytest.raises(ModbusExceptionReply) as exc:
            await drv.set_setpoint("30 degC")
        assert exc.value.exception_code == 0x01
        with pytest.raises(ModbusExceptionReply):
            await drv.run(False)
        await drv.write_bit(m.BIT_COMM_WRITE, True)
        await drv.set_setpoint("30 degC")
        assert await drv.read_setpoint() == Q_(30.0, "degC")


@pytest.mark.req("KA-DRV-005")
async def test_other_unit_address() -> None:
    async with pty_rig(unit=17, driver_opts={"unit": 17}) as (_sim, drv, _port):
        assert (await drv.identify()).details["unit"] == 17
        assert await drv.read_temperature() == Q_(22.0, "degC")


# ---------------------------------------------------------------------------------------------
# KA-HIL-003: the plant in virtual time
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-003")
@pytest.mark.req("KA-DEV-002")
@pytest.mark.req("KA-HIL-006")
def test_settles_to_20_and_to_4_degC_in_realistic_times() -> None:
    clock = VirtualClock()

    async def main() -> dict[str, float]:
        took: dict[str, float] = {}
        async with memory_rig(clock) as (sim, drv):
            for target in (20.0, 4.0):
                seen: list[float] = []
                t0 = clock.now()
                action = drv.settle(f"{target} degC", "0.1 degC", "2 min", "3 h")
                action.watch(lambda p, seen=seen: seen.append(p.fraction))
                result = await action
                took[str(target)] = clock.now() - t0
                assert abs(result.to("degC").magnitude - target) <= 0.1
                assert abs(sim.temperature() - target) < 0.15
                assert action.success and seen[-1] == pytest.approx(1.0)
                assert max(seen[:-1]) < 1.0
            # two weeks holding 4 degC cost (almost) nothing and stay on target
            wall = time.perf_counter()
            await clock.sleep(14 * 86400)
            assert await drv.read_temperature() == Q_(4.0, "degC")
            assert time.perf_counter() - wall < 20.0  # no real waiting: a real one takes 2 weeks
        return took

    took = clock.run(main())
    # minutes, not seconds and not days: a 600 s incubator with a 0.04 degC/s cooler
    assert 10 * 60 < took["20.0"] < 60 * 60
    assert 15 * 60 < took["4.0"] < 90 * 60


@pytest.mark.req("KA-HIL-003")
def test_heater_saturation_limits_the_heating_rate() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with memory_rig(clock, heater_max_c_per_s=0.02) as (sim, drv):
            await drv.set_setpoint("45 degC")
            t0 = await drv.read_temperature()
            await clock.sleep(300)
            st = await drv.status()
            assert st.output1_pct == 100.0 and st.output2_pct == 0.0  # saturated
            rise = (Q_(st.pv, "degC") - t0).to("delta_degC").magnitude
            assert rise <= 0.02 * 300  # never faster than the heater's full power
            # exactly the saturated first-order response: (h * tau) * (1 - exp(-t / tau))
            assert rise == pytest.approx(0.02 * 600 * (1 - math.exp(-300 / 600)), abs=0.1)
            # steady state can't exceed ambient + rate * tau = 22 + 12 degC
            await clock.sleep(6 * 3600)
            pv = (await drv.read_temperature()).magnitude
            assert 33.5 < pv <= 34.0
            assert sim.trips == 0

    clock.run(main())


@pytest.mark.req("KA-HIL-003")
def test_over_temperature_trip_latches_and_rearms() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with memory_rig(clock) as (sim, drv):
            sim.raise_alarm("runaway")  # heater stuck on
            t0 = clock.now()
            while not (st := await drv.status()).system_alarm:
                assert st.output1_pct == 100.0
                await clock.sleep(5)
            # full heat towards 22 + 0.05 * 600 = 52 degC crosses 45 degC after tau*ln(30/7)
            assert clock.now() - t0 == pytest.approx(600 * math.log(30 / 7), abs=10)
            assert st.alarm1 and "AL1" in st.alarms
            assert st.output1_pct == 0 and st.output2_pct == 0
            assert 44.7 < sim.temperature() <= 45.05  # cut at the limit, now cooling
            assert sim.trips == 1
            with pytest.raises(DeviceAlarm) as err:
                await drv.settle("30 degC", "0.1 degC", "1 min", "1 h")
            assert err.value.code == "AL1"
            # cooling down passively; RUN re-arms once below the limit
            sim.raise_alarm("clear")
            await clock.sleep(1800)
            assert await drv.read_temperature() < Q_(45.0, "degC")
            await drv.run(True)
            assert not (await drv.status()).system_alarm
            await drv.settle("30 degC", "0.1 degC", "1 min", "3 h")
            # an explicit trip, too
            sim.raise_alarm("overtemp")
            assert (await drv.status()).system_alarm
            assert sim.trips == 2

    clock.run(main())


@pytest.mark.req("KA-HIL-003")
def test_settle_timeout_and_sensor_fault_end_the_action() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with memory_rig(clock) as (sim, drv):
            t0 = clock.now()
            with pytest.raises(DeviceTimeout) as err:
                await drv.settle("4 degC", "0.1 degC", "1 min", "10 min")
            assert clock.now() - t0 == pytest.approx(600, abs=1.0)
            assert "last PV" in str(err.value)
            action = drv.settle("10 degC", "0.1 degC", "1 min", "2 h")
            await clock.sleep(60)
            sim.raise_alarm("0x8003")
            with pytest.raises(DeviceAlarm) as alarm:
                await action
            assert alarm.value.code == "0x8003"
            # outputs are off without a sensor; the plant drifts back towards ambient
            sim.raise_alarm("clear")
            assert (await drv.status()).running

    clock.run(main())


@pytest.mark.req("KA-HIL-003")
def test_on_off_mode_and_noise_are_bounded() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async with memory_rig(clock, noise_c=0.05, seed=3) as (_sim, drv):
            await drv.set_control_method(1)
            await drv.set_setpoint("30 degC")
            await clock.sleep(2 * 3600)
            readings = []
            for _ in range(30):
                readings.append((await drv.read_temperature()).magnitude)
                await clock.sleep(20)
            assert min(readings) > 29.0 and max(readings) < 31.0
            assert len(set(readings)) > 1  # on/off cycling plus sensor noise

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# KA-HIL-004: each fault kind against this driver over a pty, and recovery
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-004")
async def test_line_faults_and_recovery_over_a_pty() -> None:
    async with pty_rig() as (sim, drv, _port):
        # dropped reply: a query is retried and succeeds; without retries it times out
        sim.inject(Fault(FaultKind.DROP))
        assert await drv.read_temperature() == Q_(22.0, "degC")
        drv.retries = 0
        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await drv.read_temperature()
        assert await drv.read_temperature() == Q_(22.0, "degC")

        # late reply: times out, the stale bytes are discarded, the line goes on
        sim.inject(Fault(FaultKind.DELAY, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await drv.read_setpoint()
        await asyncio.sleep(0.35)
        assert await drv.read_temperature() == Q_(22.0, "degC")

        # corrupt byte: a CRC/frame error, never a wrong value. After a bad frame the driver
        # resynchronises first, so a good read puts the line back in step before the next fault
        # (else the fault would hit the synchronisation query's answer).
        for _ in range(5):
            sim.inject(Fault(FaultKind.CORRUPT))
            with pytest.raises(FramingError):
                await drv.read_registers(m.REG_PV, 2)
            assert await drv.read_registers(m.REG_PV, 2) == [220, 220]
        drv.retries = 1
        sim.inject(Fault(FaultKind.CORRUPT))
        assert await drv.read_registers(m.REG_PV, 2) == [220, 220]

        # garbage instead of a reply
        drv.retries = 0
        sim.inject(Fault(FaultKind.GARBAGE, size=300))
        with pytest.raises(FramingError):
            await drv.read_temperature()
        await asyncio.sleep(0.05)
        assert await drv.read_temperature() == Q_(22.0, "degC")

        # hang-up: silence while the line is dead, answers again afterwards
        sim.inject(Fault(FaultKind.HANGUP, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await drv.read_temperature()
        with pytest.raises(DeviceTimeout):
            await drv.read_temperature()
        await asyncio.sleep(0.3)
        drv.retries = 2
        assert await drv.read_temperature() == Q_(22.0, "degC")
        assert drv.transport.reconnects >= 1

        # device alarm, as a rig file would write it
        sim.inject(Fault.from_dict({"kind": "alarm", "alarm": "0x8003"}))
        with pytest.raises(DeviceAlarm) as err:
            await drv.read_temperature()
        assert err.value.code == "0x8003"
        sim.raise_alarm("clear")
        assert await drv.read_temperature() == Q_(22.0, "degC")
        notes = [e.note for e in drv.transport.trace if e.direction == "note"]
        assert any("bad frame" in n for n in notes)
        assert any("timeout" in n for n in notes)


@pytest.mark.req("KA-HIL-004")
async def test_write_retry_after_lost_echo_is_safe() -> None:
    async with pty_rig() as (sim, drv, _port):
        sim.inject(Fault(FaultKind.DROP))
        await drv.set_setpoint("31 degC")  # echo lost, the idempotent write is repeated
        assert await drv.read_setpoint() == Q_(31.0, "degC")
        sim.inject(Fault(FaultKind.CORRUPT))
        await drv.run(False)
        assert not await drv.is_running()


# ---------------------------------------------------------------------------------------------
# KA-BAD-001: framing properties and hostile bytes
# ---------------------------------------------------------------------------------------------
def _parser_for(count: int, unit: int = 1) -> Any:
    clock = RealClock()
    sim = ThermalSim("tc")
    transport = SerialTransport("bad", sim.memory_connector(), clock=clock)
    driver = ModbusThermalController("bad", transport, clock=clock, unit=unit)
    return driver._parser(3, 5 + 2 * count)


@pytest.mark.req("KA-BAD-001")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8),
    flip_at=st.integers(0, 100),
    flip=st.integers(1, 255),
)
def test_rtu_round_trip_and_crc_corruption(words: list[int], flip_at: int, flip: int) -> None:
    server = FramerRTU(DecodePDU(True))
    frame = server.buildFrame(ReadHoldingRegistersResponse(registers=words, dev_id=1))
    assert len(frame) == 5 + 2 * len(words)
    parse = _parser_for(len(words))
    parsed = parse(frame)
    assert parsed is not None
    pdu, used = parsed
    assert list(pdu.registers) == words and used == len(frame)
    for cut in range(len(frame)):  # a truncated reply is incomplete, never accepted
        assert parse(frame[:cut]) is None
    i = flip_at % len(frame)
    bad = frame[:i] + bytes([frame[i] ^ flip]) + frame[i + 1 :]
    with pytest.raises(BadFrame):
        parse(bad)


@pytest.mark.req("KA-BAD-001")
@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=0, max_size=300), max_size=8))
def test_random_bytes_never_crash_the_simulator(chunks: list[bytes]) -> None:
    sim = ThermalSim("tc", comm_write=True)
    client = client_framer()
    for chunk in chunks:
        for reply in sim.handle_bytes(chunk):
            used, dev_id, _tid, pdu = client.decode(reply)
            assert used == len(reply) and dev_id == 1 and pdu  # only well-formed replies
    # and it still answers a proper request afterwards
    sim.reset_line()
    request = client.buildFrame(ReadHoldingRegistersRequest(address=0x1000, count=1, dev_id=1))
    (reply,) = sim.handle_bytes(request)
    assert client.decode(reply)[3] == bytes([3, 2, 0, 220])


@pytest.mark.req("KA-BAD-001")
async def test_oversized_and_foreign_replies_are_framing_errors() -> None:
    clock = RealClock()
    sim = ThermalSim("tc")
    transport = SerialTransport("tc", sim.memory_connector(), clock=clock, max_frame=512)
    drv = ModbusThermalController("tc", transport, clock=clock, timeout=0.3, retries=0)
    try:
        await drv.connect()
        sim.inject(Fault(FaultKind.GARBAGE, size=5000))
        with pytest.raises(FramingError):  # recognised as garbage, not left to time out
            await drv.read_temperature()
        # a reply from another unit is refused, not taken for ours
        other = _parser_for(1, unit=2)
        frame = FramerRTU(DecodePDU(True)).buildFrame(
            ReadHoldingRegistersResponse(registers=[1], dev_id=1)
        )
        with pytest.raises(BadFrame):
            other(frame)
        assert await drv.read_temperature() == Q_(22.0, "degC")
    finally:
        await drv.close()
        await sim.aclose()


# ---------------------------------------------------------------------------------------------
# KA-HIL-007: pymodbus's own client against the simulator's pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-007")
async def test_pymodbus_client_reads_pv_and_writes_sv_on_the_pty() -> None:
    sim = ThermalSim("tc", RealClock(), ambient_c=21.5)
    port = PtyPort(sim)
    port.start()
    client = AsyncModbusSerialClient(
        port.path,
        framer=FramerType.RTU,
        baudrate=9600,
        bytesize=8,
        parity="N",
        stopbits=1,
        timeout=1,
        retries=1,
    )
    try:
        assert await client.connect()
        rr = await client.read_holding_registers(m.REG_PV, count=2, device_id=1)
        assert not rr.isError() and rr.registers == [215, 215]
        refused = await client.write_register(m.REG_SV, 300, device_id=1)
        assert refused.isError() and refused.exception_code == 0x01  # write-in not enabled
        assert not (await client.write_coil(m.BIT_COMM_WRITE, True, device_id=1)).isError()
        assert not (await client.write_register(m.REG_SV, 300, device_id=1)).isError()
        rr = await client.read_holding_registers(m.REG_SV, count=1, device_id=1)
        assert rr.registers == [300]
        bits = await client.read_discrete_inputs(m.BIT_RUN, count=1, device_id=1)
        assert bits.bits[0] is True
        assert not (await client.write_coil(m.BIT_RUN, False, device_id=1)).isError()
        assert not sim.bits[m.BIT_RUN]
        wrote = await client.write_registers(m.REG_PB, [100, 400, 0], device_id=1)
        assert not wrote.isError()
        assert sim.regs[m.REG_PB] == 100 and sim.regs[m.REG_TI] == 400
        bad = await client.read_holding_registers(0x2000, count=1, device_id=1)
        assert bad.isError() and bad.exception_code == 0x02
        version = await client.read_holding_registers(m.REG_SOFTWARE_VERSION, count=1, device_id=1)
        assert version.registers == [0x0100]
    finally:
        client.close()
        await port.close()
        await sim.aclose()
