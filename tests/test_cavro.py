"""Cavro XCalibur / XP3000 pump: driver against the simulator, over real ptys and memory pipes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from kiboauto.clock import Clock, RealClock, VirtualClock
from kiboauto.devices import (
    DeviceAlarm,
    DeviceError,
    DeviceTimeout,
    Progress,
    SyringePump,
    Valve,
)
from kiboauto.drivers.cavro import CavroPump
from kiboauto.drivers.cavro_wire import (
    ETX,
    STX,
    CavroAnswer,
    address_char,
    build_dt_answer,
    build_dt_command,
    build_oem_answer,
    build_oem_command,
    parse_dt_answer,
    parse_oem_answer,
    sequence_byte,
    status_byte,
    xor_checksum,
)
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.transport import BadFrame, SerialTransport
from kiboauto.hil.base import Fault, FaultKind
from kiboauto.hil.cavro_sim import CavroSim
from kiboauto.hil.ptyport import PtyPort


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def pty_pump(
    sim_options: dict[str, Any] | None = None, **driver_options: Any
) -> AsyncIterator[tuple[CavroSim, CavroPump, PtyPort]]:
    clock: Clock = RealClock()
    sim = CavroSim("cavro-sim", clock, **(sim_options or {}))
    port = PtyPort(sim)
    port.start()
    transport = SerialTransport(
        "cavro", serial_connector(port.path, baudrate=9600), port=port.path, clock=clock
    )
    driver_options.setdefault("timeout", 0.5)
    driver_options.setdefault("poll_interval", 0.02)
    pump = CavroPump("cavro", transport, clock=clock, **driver_options)
    try:
        yield sim, pump, port
    finally:
        await pump.close()
        await port.close()
        await sim.aclose()


def memory_pump(clock: Clock, sim: CavroSim, **driver_options: Any) -> CavroPump:
    transport = SerialTransport("cavro", sim.memory_connector(), port="mem:cavro", clock=clock)
    driver_options.setdefault("poll_interval", 0.001)
    return CavroPump("cavro", transport, clock=clock, **driver_options)


def stroke_time(pulses: float, start: float, top: float, cutoff: float, slope: int) -> float:
    """Move time from the manual's ramp description, worked out independently of the sim."""
    a = slope * 2500.0
    v0, v2 = min(start, top), min(cutoff, top)
    up, down = (top**2 - v0**2) / (2 * a), (top**2 - v2**2) / (2 * a)
    if up + down <= pulses:
        return (top - v0) / a + (pulses - up - down) / top + (top - v2) / a
    peak = math.sqrt((2 * a * pulses + v0**2 + v2**2) / 2)
    return (peak - v0) / a + (peak - v2) / a


# ---------------------------------------------------------------------------------------------
# KA-DEV-001: the driver is a SyringePump and a Valve
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
async def test_driver_satisfies_pump_and_valve_protocols() -> None:
    sim = CavroSim("s")
    pump = memory_pump(RealClock(), sim)
    assert isinstance(pump, SyringePump)
    assert isinstance(pump, Valve)
    assert (CavroPump.protocol, CavroPump.kind, CavroPump.default_baudrate) == (
        "cavro",
        "pump",
        9600,
    )
    assert CavroSim.protocol == "cavro"
    assert pump.port_count == 9
    assert sim.describe()["address"] == 1 and sim.describe()["baudrate"] == 9600


# ---------------------------------------------------------------------------------------------
# KA-DRV-003: DT protocol over a real pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-003")
async def test_dt_init_valve_moves_speeds_queries_over_pty() -> None:
    async with pty_pump() as (_sim, pump, _port):
        await pump.connect()
        info = await pump.identify()
        assert info.firmware == "XCalibur SIM 1.0"
        assert info.protocol == "cavro" and info.port.startswith("/dev/pts/")

        # Not initialised: a move is refused at once with error 7.
        with pytest.raises(DeviceAlarm) as refused:
            await pump.move_to(100)
        assert refused.value.code == "7"

        await pump.initialize()
        assert await pump.position() == 0
        assert await pump.current_port() == 1

        await pump.select_port(5)
        assert await pump.current_port() == 5

        await pump.set_top_speed(6000)
        await pump.set_start_speed(500)
        await pump.set_cutoff_speed(600)
        await pump.set_slope(20)
        assert await pump.speeds() == {"start": 500, "top": 6000, "cutoff": 600}

        await pump.move_to(300)
        assert await pump.position() == 300
        await pump.pick_up(150)
        assert await pump.position() == 450
        await pump.dispense_steps(200)
        assert await pump.position() == 250

        await pump.set_speed_code(0)
        assert (await pump.speeds())["top"] == 6000

        # Fine resolution: the same plunger place in 24000 increments per stroke.
        await pump.set_resolution(1)
        assert await pump.position() == 2000
        await pump.move_to(2400)
        await pump.set_resolution(0)
        assert await pump.position() == 300


@pytest.mark.req("KA-DRV-003")
async def test_dt_status_byte_errors_over_pty() -> None:
    # The XP 3000 manual's deferred operand errors (the simulator's default is immediate).
    async with pty_pump({"ports": 3, "deferred_errors": True}, ports=3) as (_sim, pump, _port):
        await pump.connect()
        answer = await pump.raw("A100")
        assert answer == CavroAnswer(0x67, "")  # 'g': ready, error 7 (not initialised)
        await pump.initialize()

        # Unknown command: refused at once, error 2, pump not busy.
        answer = await pump.raw("J5")
        assert (answer.error, answer.ready) == (2, True)

        # Operand out of range: accepted, error 3 reported by the following Q.
        answer = await pump.raw("A4000")
        assert answer.error == 0
        status = await pump.status()
        assert status.error == 3 and status.ready
        assert (await pump.status()).error == 0  # reading it cleared it
        with pytest.raises(DeviceAlarm) as bad:
            await pump.move_to(3001)
        assert bad.value.code == "3"

        # A move while moving is ignored with error 15; V is accepted while moving.
        await pump.set_top_speed(1000)
        assert (await pump.raw("A3000")).busy
        overflow = await pump.raw("A0")
        assert overflow.error == 15
        assert (await pump.raw("V6000")).error == 0
        await asyncio.sleep(0.1)
        await pump.terminate()
        assert not await pump.is_moving()
        assert 0 < await pump.position() < 3000

        # 3-port valve: positions by letter; plunger move in bypass -> error 11.
        await pump.select_port(2)
        assert await pump.current_port() == 2
        assert (await pump.query("?6")) == "o"
        await pump.select_port(3)
        await pump.raw("A0")
        with pytest.raises(DeviceAlarm) as bypass:
            await pump.wait_ready(2.0)
        assert bypass.value.code == "11"
        assert (await pump.raw("E")).error == 2  # no extra port on a 3-port valve

        # A command string loaded without R runs on a bare R.
        await pump.select_port(1)
        assert (await pump.raw("A10", execute=False)).error == 0
        assert await pump.query("?10") == "1"
        await pump.raw("R", execute=False)
        await pump.wait_ready(2.0)
        assert await pump.position() == 10


# ---------------------------------------------------------------------------------------------
# KA-DRV-004: OEM framing over a pty
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-004")
async def test_oem_framing_checksum_and_sequence_over_pty() -> None:
    async with pty_pump(oem=True) as (_sim, pump, _port):
        await pump.connect()
        await pump.initialize()
        await pump.set_top_speed(6000)
        await pump.move_to(600)
        assert await pump.position() == 600
        sent = [e.data for e in pump.transport.trace if e.direction == "tx"]
        got = b"".join(e.data for e in pump.transport.trace if e.direction == "rx")
        assert all(f[0] == STX and f[-2] == ETX for f in sent)
        assert all(xor_checksum(f[:-1]) == f[-1] for f in sent)
        assert [f[2] for f in sent[:9]] == [0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x31, 0x32]
        assert got.startswith(bytes([STX, 0x30]))
        assert b"/" not in got


@pytest.mark.req("KA-DRV-004")
async def test_oem_repeat_flag_makes_a_lost_answer_safe_to_resend() -> None:
    async with pty_pump(oem=True, timeout=0.3) as (sim, pump, _port):
        await pump.connect()
        await pump.initialize()
        await pump.set_top_speed(6000)
        # pick_up asks ? (where the plunger is) and Q (idle?) before the move: the third answer,
        # the one to P300, is lost; the pump moves.
        sim.inject(Fault(FaultKind.DROP, skip=2))
        await pump.pick_up(300)
        # Resent with the repeat flag: acknowledged, not executed twice.
        assert await pump.position() == 300
        sent = [e.data for e in pump.transport.trace if e.direction == "tx"]
        picks = [f for f in sent if b"P300" in f]
        assert len(picks) == 2
        assert picks[1][2] == picks[0][2] | 0x08  # same sequence number, repeat bit set
        assert sim.counters.plunger_moves == 2  # the initialisation and one pick-up


@pytest.mark.req("KA-DRV-004")
def test_oem_sim_checks_checksum_and_sequence() -> None:
    sim = CavroSim("s", VirtualClock())
    good = build_oem_command(1, 3, "Q", execute=False)
    assert sim.handle_bytes(good) == [build_oem_answer(0x60)]
    # A wrong checksum: ignored (the host times out and resends).
    assert sim.handle_bytes(good[:-1] + bytes([good[-1] ^ 1])) == []
    # Sync bytes and noise outside a block are ignored.
    assert sim.handle_bytes(b"\xff\xff" + good) == [build_oem_answer(0x60)]
    # Scenario 2: a repeat-flagged block with a new sequence number is a new command.
    sim.handle_bytes(build_oem_command(1, 4, "Z"))
    assert sim.busy
    loaded = build_oem_command(1, 5, "A100", execute=False)
    sim.handle_bytes(loaded)
    assert sim.loaded == [("A", 100)]
    again = build_oem_command(1, 5, "A200", execute=False, repeat=True)
    sim.handle_bytes(again)  # same sequence, repeat: acknowledged only
    assert sim.loaded == [("A", 100)]
    new = build_oem_command(1, 6, "A300", execute=False, repeat=True)
    sim.handle_bytes(new)
    assert sim.loaded == [("A", 300)]


# ---------------------------------------------------------------------------------------------
# KA-HIL-002: step counts, valve positions and move durations in virtual time
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-002")
def test_full_stroke_takes_the_computed_time_in_virtual_time() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = CavroSim("s", clock)
        pump = memory_pump(clock, sim)
        await pump.connect()
        await pump.initialize()

        # Full stroke at V6000 (defaults v900, c900, L14): 1.1239 s.
        await pump.set_top_speed(6000)
        t0 = clock.now()
        await pump.move_to(3000)
        elapsed = clock.now() - t0
        assert elapsed == pytest.approx(stroke_time(6000, 900, 6000, 900, 14), abs=0.005)
        assert await pump.position() == 3000

        # Back at the default speed code S11 (1400 pulses/s): about 4.29 s.
        await pump.set_speed_code(11)
        t0 = clock.now()
        await pump.move_to(0)
        assert clock.now() - t0 == pytest.approx(stroke_time(6000, 900, 1400, 900, 14), abs=0.005)

        # Half way through a slow move the plunger is half way.
        await pump.set_top_speed(600)
        await pump.raw("A3000")
        await clock.sleep(5.0)
        assert await pump.position() == 1500
        await pump.wait_ready(10.0)
        assert await pump.position() == 3000

        # Fine resolution: 24000 increments a stroke, same time for the same travel.
        await pump.set_resolution(1)
        assert await pump.position() == 24000
        await pump.set_top_speed(6000)
        t0 = clock.now()
        await pump.move_to(12000)
        assert clock.now() - t0 == pytest.approx(stroke_time(3000, 900, 6000, 900, 14), abs=0.005)
        await pump.set_resolution(0)
        assert await pump.position() == 1500

        # Valve: 9-port distribution valve, four ports away takes 0.15 + 4 * 0.035 s.
        t0 = clock.now()
        await pump.select_port(5)
        assert clock.now() - t0 == pytest.approx(0.29, abs=0.005)
        assert await pump.current_port() == 5
        await pump.select_port(9)
        assert await pump.current_port() == 9
        with pytest.raises(DeviceAlarm) as no_port:  # no such port: refused at once
            await pump.command("I10")
        assert no_port.value.code == "3"
        assert (await pump.status()).error == 0  # nothing left for Q: the string never ran
        assert await pump.current_port() == 9
        await sim.aclose()

    clock.run(main())


@pytest.mark.req("KA-HIL-002")
def test_volumes_rates_progress_and_overload_in_virtual_time() -> None:
    clock = VirtualClock()

    async def main() -> None:
        sim = CavroSim("s", clock, syringe_volume_ul=250)
        pump = memory_pump(
            clock, sim, syringe_volume_ul=250, input_port=1, output_port=3, poll_interval=0.01
        )
        await pump.connect()
        await pump.initialize()

        # 250 uL at 25 uL/s: top speed 600 pulses/s (below v900, so no ramp): exactly 10 s.
        seen: list[Progress] = []
        t0 = clock.now()
        status = pump.withdraw("250 uL", "25 uL/s")
        status.watch(seen.append)
        assert (await status).delivered_ul == pytest.approx(250.0)
        assert clock.now() - t0 == pytest.approx(10.0 + 0.05, abs=0.02)  # + valve already at 1
        assert await pump.position() == 3000
        fractions = [p.fraction for p in seen if p.unit == "uL"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5

        status = pump.dispense("100 uL", "50 uL/s")
        assert (await status).delivered_ul == pytest.approx(100.0)
        assert await pump.position() == 1800
        assert await pump.current_port() == 3

        with pytest.raises(DeviceError):
            await pump.dispense("200 uL", "50 uL/s")  # only 150 uL left
        with pytest.raises(ValueError):
            pump.dispense("10 uL", "1 mL/s")  # faster than V6000 for this syringe

        # Cancelling an action stops the plunger (T).
        status = pump.dispense("100 uL", "5 uL/s")
        await clock.sleep(4.0)
        await status.aclose()
        assert not sim.moving
        assert 1500 < await pump.position() < 1800

        # A blocked line: plunger overload (9); every move is refused until re-initialised.
        await pump.set_diameter("3.26 mm")
        assert pump.syringe_volume_ul == pytest.approx(250.4, abs=0.1)
        sim.blocked = True
        with pytest.raises(DeviceAlarm) as overload:
            await pump.dispense("10 uL", "10 uL/s")
        assert overload.value.code == "9"
        with pytest.raises(DeviceAlarm) as again:
            await pump.move_to(0)
        assert again.value.code == "9"
        sim.blocked = False
        await pump.initialize()
        await pump.move_to(100)
        assert await pump.position() == 100
        await sim.aclose()

    clock.run(main())


# ---------------------------------------------------------------------------------------------
# KA-HIL-004: every fault kind against this driver over a pty, and recovery
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-004")
@pytest.mark.parametrize("kind", ["drop", "corrupt", "garbage"])
async def test_line_faults_are_retried_for_queries(kind: str) -> None:
    async with pty_pump(timeout=0.3) as (sim, pump, _port):
        await pump.connect()
        sim.inject(Fault(FaultKind(kind), size=200))
        assert await pump.position() == 0  # retried after the bad or missing answer
        assert sim.faults.applied == [FaultKind(kind)]
        notes = [e.note for e in pump.transport.trace if e.direction == "note"]
        assert any("retry" in n for n in notes)


@pytest.mark.req("KA-HIL-004")
async def test_line_faults_on_a_move_are_resolved_by_asking_not_repeated() -> None:
    async with pty_pump(timeout=0.3) as (sim, pump, _port):
        await pump.connect()
        await pump.initialize()
        await pump.set_top_speed(6000)
        # The answer to P300 (after those to ? and Q) is garbled: the driver asks the pump
        # (busy? plunger moved?) instead of reporting "nothing happened" or sending it again.
        sim.inject(Fault(FaultKind.CORRUPT, skip=2))
        await pump.pick_up(300)
        assert await pump.position() == 300
        sent = [e.data for e in pump.transport.trace if e.direction == "tx"]
        assert sum(1 for f in sent if b"P300" in f) == 1
        assert sim.faults.applied == [FaultKind.CORRUPT]


@pytest.mark.req("KA-HIL-004")
async def test_delay_fault_times_out_then_recovers() -> None:
    async with pty_pump(timeout=0.2, retries=0) as (sim, pump, _port):
        await pump.connect()
        sim.inject(Fault(FaultKind.DELAY, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await pump.position()
        await asyncio.sleep(0.6)
        assert await pump.position() == 0
        assert (await pump.status()).ready


@pytest.mark.req("KA-HIL-004")
async def test_hangup_fault_times_out_then_recovers() -> None:
    async with pty_pump(timeout=0.2, retries=0) as (sim, pump, _port):
        await pump.connect()
        sim.inject(Fault(FaultKind.HANGUP, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await pump.position()
        await asyncio.sleep(0.6)
        assert await pump.firmware() == "XCalibur SIM 1.0"


@pytest.mark.req("KA-HIL-004")
async def test_alarm_fault_is_a_device_alarm_until_reinitialised() -> None:
    async with pty_pump() as (sim, pump, _port):
        await pump.connect()
        await pump.initialize()
        sim.inject(Fault(FaultKind.ALARM, alarm="10"))
        with pytest.raises(DeviceAlarm) as alarm:
            await pump.wait_ready(1.0)
        assert alarm.value.code == "10"
        with pytest.raises(DeviceAlarm):
            await pump.select_port(4)
        await pump.initialize()
        await pump.select_port(4)
        assert await pump.current_port() == 4


# ---------------------------------------------------------------------------------------------
# KA-HIL-007: a plain pyserial client with the manual's example strings
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-007")
async def test_plain_pyserial_client_talks_to_the_sim() -> None:
    sim = CavroSim("s")
    port = PtyPort(sim)
    port.start()

    def client() -> list[bytes]:
        answers = []
        with serial.Serial(port.path, 9600, timeout=2) as line:

            def ask(frame: bytes, end: bytes = b"\n") -> bytes:
                line.write(frame)
                return bytes(line.read_until(end))

            def wait_ready() -> None:
                for _ in range(100):
                    if ask(b"/1Q\r") == b"/0`\x03\r\n":
                        return
                    time.sleep(0.05)
                raise AssertionError("pump stayed busy")

            answers.append(ask(b"/1ZR\r"))
            wait_ready()
            answers.append(ask(b"/1IV6000A600OR\r"))
            wait_ready()
            answers.append(ask(b"/1?\r"))
            answers.append(ask(b"/1?6\r"))
            answers.append(ask(b"/1E2000R\r"))
            oem = bytes([0x02, 0x31, 0x31, 0x3F, 0x03])
            line.write(oem + bytes([0x02 ^ 0x31 ^ 0x31 ^ 0x3F ^ 0x03]))
            answers.append(bytes(line.read(8)))
        return answers

    try:
        answers = await asyncio.to_thread(client)
    finally:
        await port.close()
        await sim.aclose()
    assert answers[0] == b"/0@\x03\r\n"  # busy, no error: initialising
    assert answers[1] == b"/0@\x03\r\n"
    assert answers[2] == b"/0`600\x03\r\n"
    assert answers[3] == b"/0`9\x03\r\n"  # O without a port: the last port
    assert answers[4] == b"/0b\x03\r\n"  # invalid command, not busy
    block = bytes([0x02, 0x30, 0x60]) + b"600" + bytes([0x03])
    assert answers[5] == block + bytes([xor_checksum(block)])


# ---------------------------------------------------------------------------------------------
# KA-BAD-001: frames, checksums and garbage (hypothesis)
# ---------------------------------------------------------------------------------------------
statuses = st.builds(status_byte, st.booleans(), st.integers(0, 15))
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)


@pytest.mark.req("KA-BAD-001")
@given(statuses, texts)
def test_dt_and_oem_answers_round_trip(status: int, data: str) -> None:
    dt = build_dt_answer(status, data)
    assert parse_dt_answer(dt) == (CavroAnswer(status, data), len(dt))
    oem = build_oem_answer(status, data)
    assert oem[-1] == xor_checksum(oem[:-1])
    assert parse_oem_answer(b"\xff" + oem) == (CavroAnswer(status, data), len(oem) + 1)
    for cut in range(len(oem)):
        assert parse_oem_answer(oem[:cut]) is None
    for cut in range(len(dt)):
        assert parse_dt_answer(dt[:cut]) is None


@pytest.mark.req("KA-BAD-001")
@given(statuses, texts, st.data())
def test_corrupted_answers_raise_badframe_only(status: int, data: str, draw: Any) -> None:
    oem = build_oem_answer(status, data)
    i = draw.draw(st.integers(0, len(oem) - 1))
    mask = draw.draw(st.integers(1, 255))
    bad = oem[:i] + bytes([oem[i] ^ mask]) + oem[i + 1 :]
    try:
        result = parse_oem_answer(bad)
    except BadFrame:
        result = None
    # Never accepted as the whole block: a flip may at most end it early (on a new ETX).
    assert result is None or result[1] < len(bad)

    dt = build_dt_answer(status, data)
    j = draw.draw(st.integers(0, len(dt) - 1))
    with contextlib.suppress(BadFrame):
        parse_dt_answer(dt[:j] + bytes([dt[j] ^ mask]) + dt[j + 1 :])


@pytest.mark.req("KA-BAD-001")
@given(
    st.integers(1, 15),
    st.integers(1, 7),
    st.booleans(),
    st.text(st.sampled_from("ZIOA0123456789V?QR"), max_size=20),
)
def test_command_frames_round_trip(address: int, seq: int, repeat: bool, cmd: str) -> None:
    oem = build_oem_command(address, seq, cmd, repeat=repeat, execute=False)
    assert oem[:3] == bytes([STX, address_char(address), sequence_byte(seq, repeat)])
    assert oem[-2] == ETX and oem[-1] == xor_checksum(oem[:-1])
    dt = build_dt_command(address, cmd)
    assert dt[:2] == bytes([0x2F, address_char(address)]) and dt.endswith(b"R\r")


@pytest.mark.req("KA-BAD-001")
@settings(max_examples=150)
@given(st.binary(max_size=400), st.binary(max_size=40))
def test_random_bytes_never_crash_the_sim_or_the_parsers(noise: bytes, tail: bytes) -> None:
    sim = CavroSim("s", VirtualClock())
    for chunk in (noise, b"/1" + tail + b"\r", bytes([STX, 0x31, 0x31]) + tail):
        for reply in sim.handle_bytes(chunk):
            parsed = parse_dt_answer(reply) if reply[0] == 0x2F else parse_oem_answer(reply)
            assert parsed is not None and parsed[1] == len(reply)
    for parse in (parse_dt_answer, parse_oem_answer):
        with contextlib.suppress(BadFrame):
            parse(noise)
    # Still answers a clean command afterwards.
    sim.reset_line()
    assert sim.handle_bytes(b"/1Q\r")[0].startswith(b"/0")
