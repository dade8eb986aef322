"""Cavro pump actions that are safe to build on: exactly once, alarms latched, replies matched.

Each test names the defect it reproduces (the review of "Make the device layer safe to build
on"). Long actions run in virtual time on a memory pipe to the simulator; the simulator's own
plunger position is the truth. A :class:`Cable` stands between driver and simulator where the
defect lives on the line: it can lose one answer, lose one command, or be cut (a crash of the
host: nothing more goes out, the pump goes on by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import (
    ActionIncomplete,
    ActionMarker,
    DeviceAlarm,
    DeviceBusy,
    DeviceError,
    DeviceStateLost,
    DeviceTimeout,
    FramingError,
    PumpResult,
    Severity,
)
from kiboauto.drivers.cavro import CavroPump, Repeat, repeat_policy
from kiboauto.drivers.streams import ByteStream, serial_connector
from kiboauto.drivers.transport import SerialTransport
from kiboauto.hil.base import Fault, FaultKind
from kiboauto.hil.cavro_sim import CavroSim
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.hil.ptyport import PtyPort

STEP_UL = 250.0 / 3000  # one plunger increment of a 250 uL syringe in N0


# ---------------------------------------------------------------------------------------------
# a faulty cable (the line, not the device)
# ---------------------------------------------------------------------------------------------
class _CableEnd:
    in_process = True

    def __init__(self, inner: ByteStream, cable: Cable) -> None:
        self.inner = inner
        self.cable = cable

    async def read(self, max_bytes: int = 4096) -> bytes:
        while True:
            data = await self.inner.read(max_bytes)
            if data and self.cable.lose_next_answer:
                self.cable.lose_next_answer = False
                self.cable.lost.append(data)
                continue
            return data

    async def write(self, data: bytes) -> None:
        cable = self.cable
        if cable.lose_command is not None and cable.lose_command in data:
            cable.lose_command = None
            cable.lost.append(data)
            return
        if cable.lose_answer_to is not None and cable.lose_answer_to in data:
            cable.lose_answer_to = None
            cable.lose_next_answer = True
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class Cable:
    """A memory-pipe cable to ``sim`` that loses what it is told to lose, or is cut."""

    def __init__(self, sim: CavroSim) -> None:
        self.connector = sim.memory_connector()
        self.lose_answer_to: bytes | None = None
        self.lose_command: bytes | None = None
        self.lose_next_answer = False
        self.lost: list[bytes] = []
        self.cut_off = False
        self.end: _CableEnd | None = None

    async def connect(self) -> ByteStream:
        if self.cut_off:
            raise OSError("the cable is cut")
        self.end = _CableEnd(await self.connector(), self)
        return self.end

    async def cut(self) -> None:
        self.cut_off = True
        if self.end is not None:
            await self.end.close()


def make_pump(
    clock: Any, connector: Callable[[], Awaitable[ByteStream]], **options: Any
) -> CavroPump:
    transport = SerialTransport("cavro", connector, port="mem:cavro", clock=clock)
    options.setdefault("poll_interval", 0.05)
    options.setdefault("timeout", 0.3)
    return CavroPump("cavro", transport, clock=clock, **options)


async def filled(clock: Any, sim: CavroSim, connector: Any = None, **options: Any) -> CavroPump:
    """A connected, initialised pump with a full syringe (3000 steps = 250 uL)."""
    pump = make_pump(clock, connector or sim.memory_connector(), **options)
    await pump.connect()
    await pump.initialize()
    await pump.set_top_speed(6000)
    await pump.move_to(3000)
    return pump


def sent(pump: CavroPump) -> list[bytes]:
    return [e.data for e in pump.transport.trace if e.direction == "tx"]


def virtual(main: Callable[[VirtualClock], Awaitable[None]]) -> None:
    clock = VirtualClock()
    clock.run(main(clock))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# defect 1: a refused start must not stop somebody else's move
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-002")
def test_after_a_crash_a_busy_pump_gets_no_move_and_no_terminate() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        cable = Cable(sim)
        old = await filled(clock, sim, cable.connect)
        first = old.dispense("150 uL", "5 uL/s")  # 30 s
        await clock.sleep(10.0)
        await cable.cut()  # the host crashes; the pump goes on
        await first.aclose()
        await old.close()

        new = make_pump(clock, sim.memory_connector())
        await new.connect()
        with pytest.raises(DeviceBusy) as busy:
            await new.dispense("150 uL", "5 uL/s")
        assert busy.value.delivered_ul == 0.0
        assert not any(f.startswith(b"/1T") or b"D" in f for f in sent(new))
        assert sim.moving
        await clock.sleep(25.0)
        assert sim.steps() == 3000 - 1800  # the surviving move delivered all its 150 uL
        await new.close()
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-DEV-002")
def test_a_start_refused_by_the_pump_is_not_followed_by_terminate() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        # Somebody's quiet move (lowercase d): Q reports "ready" while the plunger moves.
        await pump.raw("V300d1200")
        with pytest.raises(DeviceBusy) as refused:
            await pump.dispense("50 uL", "50 uL/s")
        assert refused.value.delivered_ul == 0.0
        assert not any(f.startswith(b"/1T") for f in sent(pump))
        await clock.sleep(10.0)
        assert sim.steps() == 3000 - 1200  # the quiet move was not stopped
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 2: an overload is never reported as success
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-004")
def test_overload_read_by_a_concurrent_poller_still_fails_the_action() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        polls = 0

        async def poller() -> None:
            nonlocal polls
            while True:
                await pump.is_moving()
                await pump.read()
                polls += 1
                await clock.sleep(0.01)

        task = asyncio.get_running_loop().create_task(poller())
        status = pump.dispense("100 uL", "10 uL/s")
        await clock.sleep(3.013)
        sim.inject(Fault(FaultKind.ALARM, alarm="9"))
        assert await pump.is_moving() is False  # this Q, not the action's, reads error 9
        assert sim.error == 0
        with pytest.raises(DeviceAlarm) as overload:
            await status
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert polls > 10
        assert overload.value.code == "9"
        truth_ul = (3000 - sim.steps()) * STEP_UL
        assert 20 < truth_ul < 40
        assert overload.value.delivered_ul == pytest.approx(truth_ul, abs=STEP_UL)
        assert overload.value.marker is status.marker
        assert status.delivered_ul == overload.value.delivered_ul
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-HIL-004")
def test_overload_in_a_lost_status_answer_is_incomplete_not_success() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        status = pump.dispense("100 uL", "10 uL/s")
        await clock.sleep(3.013)  # between two polls of the action
        sim.inject(Fault(FaultKind.ALARM, alarm="9"))
        sim.inject(Fault(FaultKind.DROP))  # the answer carrying error 9 is lost
        with pytest.raises(DeviceTimeout):
            await pump.status()
        assert sim.error == 0  # the pump cleared it: nobody will ever read it
        with pytest.raises(ActionIncomplete) as short:
            await status
        truth_ul = (3000 - sim.steps()) * STEP_UL
        assert short.value.delivered_ul == pytest.approx(truth_ul, abs=STEP_UL)
        assert "lost" in short.value.message
        # Q is never sent again after a lost answer (a second Q would read "no error").
        assert repeat_policy("Q") is Repeat.NEVER
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-HIL-004")
async def test_overload_over_a_pty_with_a_poller_is_an_alarm() -> None:
    clock = RealClock()
    sim = CavroSim("s", clock)
    port = PtyPort(sim)
    port.start()
    transport = SerialTransport("cavro", serial_connector(port.path), port=port.path, clock=clock)
    pump = CavroPump("cavro", transport, clock=clock, timeout=0.5, poll_interval=0.02)
    try:
        await pump.connect()
        await pump.initialize()
        await pump.set_top_speed(6000)
        await pump.move_to(1200)
        sim.blocked = True

        async def poller() -> None:
            while True:
                await pump.is_moving()

        task = asyncio.get_running_loop().create_task(poller())
        try:
            with pytest.raises(DeviceAlarm) as overload:
                await pump.dispense("50 uL", "100 uL/s")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, DeviceError):
                await task
        assert overload.value.code == "9"
        truth_ul = (1200 - sim.steps()) * STEP_UL
        assert overload.value.delivered_ul == pytest.approx(truth_ul, abs=STEP_UL)
        assert truth_ul < 50
        assert "9" in pump.alarms.active
    finally:
        await pump.close()
        await port.close()
        await sim.aclose()


@pytest.mark.req("KA-DEV-002")
def test_stop_and_cancel_report_the_delivered_volume() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        status = pump.dispense("100 uL", "10 uL/s")
        await clock.sleep(4.0)
        await pump.stop()
        with pytest.raises(ActionIncomplete) as stopped:
            await status
        at = sim.steps()
        assert "stop()" in stopped.value.message
        assert stopped.value.delivered_ul == pytest.approx((3000 - at) * STEP_UL, abs=1e-9)

        status = pump.dispense("50 uL", "10 uL/s")
        await clock.sleep(2.0)
        status.cancel()
        with pytest.raises(asyncio.CancelledError):
            await status
        assert not sim.moving
        assert status.delivered_ul == pytest.approx((at - sim.steps()) * STEP_UL, abs=1e-9)
        assert 0 < status.delivered_ul < 50
        assert status.progress.current == status.delivered_ul
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 3: a late answer is never taken for the next request's
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-001")
def test_a_late_position_answer_is_not_taken_for_the_valve_port() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = make_pump(clock, sim.memory_connector(), retries=0)
        await pump.connect()
        await pump.initialize()
        await pump.select_port(5)
        await pump.move_to(24)
        sim.inject(Fault(FaultKind.DELAY, seconds=0.5))
        with pytest.raises(DeviceTimeout):
            await pump.position()  # its answer "24" arrives 0.2 s after the timeout
        assert await pump.current_port() == 5
        assert await pump.position() == 24
        assert pump.transport.resyncs >= 1 and pump.transport.late_frames >= 1
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-BAD-001")
def test_out_of_range_answers_are_framing_errors() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock, ports=12)
        pump = make_pump(clock, sim.memory_connector(), ports=9)  # a misconfigured station
        await pump.connect()
        await pump.initialize()
        await pump.raw("I11")
        await clock.sleep(1.0)
        with pytest.raises(FramingError):
            await pump.current_port()  # 11 on a 9-port valve
        await pump.raw("N1")  # now 24000 increments a stroke, the driver expects 3000
        await pump.raw("A20000")
        await clock.sleep(10.0)
        with pytest.raises(FramingError):
            await pump.position()
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-DRV-004")
def test_resync_query_works_in_oem_framing_without_breaking_the_repeat_flag() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        cable = Cable(sim)
        pump = await filled(clock, sim, cable.connect, oem=True)
        cable.lose_answer_to = b"D1200"
        result = await pump.dispense("100 uL", "50 uL/s")
        assert isinstance(result, PumpResult) and result.delivered_ul == pytest.approx(100.0)
        assert sim.steps() == 1800  # moved once, although the block was sent twice
        moves = [f for f in sent(pump) if b"D1200" in f]
        assert len(moves) == 2 and moves[1][2] == moves[0][2] | 0x08
        assert pump.transport.resyncs >= 1
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 4: a lost answer to a start is resolved by asking the pump
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-TRN-002")
def test_lost_answer_to_a_dt_start_continues_the_move() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        cable = Cable(sim)
        pump = await filled(clock, sim, cable.connect)
        cable.lose_answer_to = b"D1200"
        result = await pump.dispense("100 uL", "10 uL/s")
        assert cable.lost and result.delivered_ul == pytest.approx(100.0)
        assert sim.steps() == 1800
        assert sum(1 for f in sent(pump) if b"D1200" in f) == 1  # never sent again in DT
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-TRN-002")
def test_a_start_the_pump_never_heard_is_incomplete_with_nothing_delivered() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        cable = Cable(sim)
        pump = await filled(clock, sim, cable.connect)
        cable.lose_command = b"D1200"
        with pytest.raises(ActionIncomplete) as lost:
            await pump.dispense("100 uL", "10 uL/s")
        assert "not confirmed" in lost.value.message
        assert lost.value.delivered_ul == 0.0
        assert sim.steps() == 3000
        assert sum(1 for f in sent(pump) if b"D1200" in f) == 1
        assert not any(f.startswith(b"/1T") for f in sent(pump))
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 5: pause and resume, exact to one step
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-002")
def test_pause_resume_moves_exactly_the_remainder() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        status = pump.dispense("100 uL", "10 uL/s")
        assert status.can_pause
        await clock.sleep(3.3)
        await status.pause()
        held = sim.steps()
        assert not sim.moving and 2600 < held < 3000
        await clock.sleep(20.0)
        assert sim.steps() == held and not status.done
        await status.resume()
        result = await status
        assert result.delivered_ul == pytest.approx(100.0)
        assert sim.steps() == 1800
        moves = [f for f in sent(pump) if b"D" in f]
        assert moves[-1].endswith(f"D{1200 - (3000 - held)}R\r".encode())
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 6: markers, delivered_since and adopt after a crash
# ---------------------------------------------------------------------------------------------
async def crash_mid_move(
    clock: VirtualClock, sim: CavroSim, after: float
) -> tuple[ActionMarker, CavroPump]:
    """Start 150 uL at 5 uL/s, crash the host after ``after`` s; a new driver on a new line."""
    cable = Cable(sim)
    old = await filled(clock, sim, cable.connect)
    status = old.dispense("150 uL", "5 uL/s")
    while status.marker is None:
        await clock.sleep(0.01)
    stored = status.marker.to_json()  # what a journal keeps
    await clock.sleep(after)
    await cable.cut()
    await status.aclose()
    await old.close()
    new = make_pump(clock, sim.memory_connector())
    await new.connect()
    return ActionMarker.from_json(stored), new


@pytest.mark.req("KA-DEV-002")
def test_marker_holds_the_baseline_and_identity() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        marker = await pump.prepare("dispense", "100 uL", "10 uL/s")
        assert marker.baseline["position_steps"] == 3000
        assert marker.baseline["valve_port"] == 1 and marker.baseline["move_port"] == 2
        assert marker.baseline["syringe_volume_ul"] == 250.0
        assert marker.baseline["resolution"] == 0
        assert "address=1" in marker.identity and "mem:cavro" in marker.identity
        assert "XCalibur SIM 1.0" in marker.identity
        assert marker.step_ul == pytest.approx(STEP_UL)
        assert marker.epoch == "initialisations=1"
        assert not sim.moving and sim.steps() == 3000  # prepare moves nothing
        estimate = pump.estimate("dispense", "100 uL", "10 uL/s")
        assert estimate.repeatable is False
        t0 = clock.now()
        result = await pump.start(marker)
        assert result.delivered_ul == pytest.approx(100.0)
        assert estimate.duration_s == pytest.approx(clock.now() - t0, abs=0.7)
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-DEV-002")
def test_after_a_crash_a_new_driver_finds_the_move_and_adopts_it() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        marker, new = await crash_mid_move(clock, sim, after=10.0)
        delivery = await new.delivered_since(marker)
        assert delivery.moving
        assert delivery.delivered_ul == pytest.approx((3000 - sim.steps()) * STEP_UL, abs=STEP_UL)
        assert 40 < delivery.delivered_ul < 110  # 10 s at 5 uL/s, and the crash took a while
        result = await new.adopt(marker)
        assert result.delivered_ul == pytest.approx(150.0)
        assert sim.steps() == 1200
        done = await new.delivered_since(marker)
        assert done.complete and not done.moving
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-HIL-004")
def test_an_overload_while_the_host_was_down_is_raised_by_adopt() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        marker, new = await crash_mid_move(clock, sim, after=8.0)
        sim.inject(Fault(FaultKind.ALARM, alarm="9"))  # nobody listening
        with pytest.raises(DeviceAlarm) as overload:
            await new.adopt(marker)
        assert overload.value.code == "9"
        truth_ul = (3000 - sim.steps()) * STEP_UL
        assert overload.value.delivered_ul == pytest.approx(truth_ul, abs=1e-9)
        assert overload.value.marker == marker
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-DEV-002")
def test_after_a_crash_the_remainder_is_started_exactly() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        marker, new = await crash_mid_move(clock, sim, after=10.0)
        await new.terminate()  # the operator stopped the pump by hand
        delivery = await new.delivered_since(marker)
        assert not delivery.moving and not delivery.complete
        rest = marker.remainder(delivery.delivered_ul)
        result = await new.dispense(f"{rest} uL", "5 uL/s")
        assert delivery.delivered_ul + result.delivered_ul == pytest.approx(150.0)
        assert sim.steps() == 1200
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-DEV-002")
def test_reinitialised_or_power_cycled_pump_cannot_say() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        marker, new = await crash_mid_move(clock, sim, after=5.0)
        await clock.sleep(30.0)
        assert (await new.delivered_since(marker)).complete
        await new.initialize()  # somebody initialised it again: the plunger count restarted
        with pytest.raises(DeviceStateLost):
            await new.delivered_since(marker)
        await sim.aclose()

        sim = CavroSim("s", clock)
        marker, new = await crash_mid_move(clock, sim, after=5.0)
        sim.inject(Fault(FaultKind.ALARM, alarm="power"))
        with pytest.raises(DeviceStateLost) as lost:
            await new.delivered_since(marker)
        assert "not initialised" in lost.value.message
        with pytest.raises(DeviceStateLost) as adopted:
            await new.adopt(marker)
        assert adopted.value.delivered_ul is None and adopted.value.delivered_unknown
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 7: readings
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
def test_read_and_describe() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = await filled(clock, sim)
        await pump.select_port(4)
        readings = await pump.read()
        assert set(readings) == set(pump.describe())
        assert readings["plunger_volume"].value.to("uL").m == pytest.approx(250.0)
        assert readings["plunger_steps"].value.m == 3000
        assert readings["valve_port"].value.m == 4
        assert readings["busy"].value is False
        assert readings["error"].severity is Severity.OK
        assert readings["busy"].timestamp == clock.wall()
        for name, description in pump.describe().items():
            reading = readings[name]
            if description.unit:
                assert reading.value.to(description.unit) is not None
        sim.inject(Fault(FaultKind.ALARM, alarm="9"))
        readings = await pump.read()
        assert readings["error"].severity is Severity.MAJOR
        assert readings["error"].value.startswith("9")
        assert readings["error"].to_json()["severity"] == "MAJOR"
        await sim.aclose()

    virtual(main)


# ---------------------------------------------------------------------------------------------
# defect 8 and probe: typed errors only, whatever answers
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-PRB-001")
def test_identify_against_hostile_lines_raises_device_errors_only() -> None:
    async def main(clock: VirtualClock) -> None:
        other = NewEraSim("n", clock)  # a New Era pump where a Cavro was expected
        pump = make_pump(clock, other.memory_connector())
        with pytest.raises(DeviceError):
            await pump.identify()
        await pump.close()
        await other.aclose()

        sim = CavroSim("s", clock)
        sim.inject(Fault(FaultKind.GARBAGE, count=0, size=300))
        pump = make_pump(clock, sim.memory_connector())
        with pytest.raises(DeviceError):
            await pump.identify()
        await pump.close()
        await sim.aclose()

    virtual(main)


@pytest.mark.req("KA-TRN-002")
def test_repeat_policy_is_declared_once() -> None:
    assert repeat_policy("Q") is Repeat.NEVER
    assert repeat_policy("?") is Repeat.ALWAYS and repeat_policy("?6") is Repeat.ALWAYS
    assert repeat_policy("&") is Repeat.ALWAYS
    assert repeat_policy("V1200") is Repeat.ALWAYS and repeat_policy("N1") is Repeat.ALWAYS
    assert repeat_policy("T") is Repeat.ALWAYS
    assert repeat_policy("I2V1200D600") is Repeat.OEM_ONLY
    assert repeat_policy("Z0") is Repeat.OEM_ONLY and repeat_policy("A10") is Repeat.OEM_ONLY


@pytest.mark.req("KA-TRN-002")
def test_a_lost_q_answer_is_not_asked_again() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = CavroSim("s", clock)
        pump = make_pump(clock, sim.memory_connector())
        await pump.connect()
        sim.inject(Fault(FaultKind.DROP))
        before = len([f for f in sent(pump) if f == b"/1Q\r"])
        with pytest.raises(DeviceTimeout):
            await pump.status()
        assert len([f for f in sent(pump) if f == b"/1Q\r"]) == before + 1
        assert pump.lost_status_answers == 1
        await sim.aclose()

    virtual(main)
