"""New Era driver: exactly-once actions, matched replies, latched alarms, markers after a crash.

Every test here was written against a defect a reviewer reproduced on the earlier driver
(numbered as in the issue's New Era brief) and fails on it. All run in virtual time over the
simulator's in-process memory pipe; the simulator's own counters (``truth()``, ``commands``)
are the ground truth. Where a test needs the line or the firmware to misbehave in one precise
way (lose exactly the reply to ``RUN``, answer ``DIS`` with a malformed number) it uses a small
subclass of the simulator that does that one thing on top of the real model.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from kiboauto.clock import VirtualClock
from kiboauto.devices import (
    ActionIncomplete,
    ActionMarker,
    DeviceAlarm,
    DeviceBusy,
    DeviceError,
    DeviceEvent,
    DeviceStateLost,
    DeviceTimeout,
    FramingError,
    PumpResult,
    Reading,
    Severity,
    SyringePump,
)
from kiboauto.drivers.newera import COMMANDS, NewEraAction, NewEraPump, is_idempotent
from kiboauto.drivers.newera_wire import encode_basic_reply, encode_reply_data, strict_number
from kiboauto.drivers.transport import BadFrame, SerialTransport
from kiboauto.hil.base import Fault, FaultKind
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.units import Quantity


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class QuirkySim(NewEraSim):
    """The real model, plus one precise misbehaviour chosen by a test.

    ``deaf_to``: commands the pump never hears (the bytes are lost on the way in, no reply).
    ``mute_after``: commands carried out whose reply is lost on the way back.
    ``garble``: command -> data the (buggy) firmware answers with instead of the right data.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deaf_to: set[str] = set()
        self.mute_after: set[str] = set()
        self.garble: dict[str, str] = {}

    def handle_bytes(self, data: bytes) -> list[bytes]:
        text = data.decode("ascii", "replace").strip().lstrip("0123456789")
        if text in self.deaf_to:
            self.deaf_to.discard(text)
            return []
        replies = super().handle_bytes(data)
        last = self.commands[-1] if self.commands else None
        if replies and last in self.mute_after:
            self.mute_after.discard(last)
            return []
        if replies and last in self.garble and self.alarm is None:
            raw = encode_reply_data(self.address, self.state, self.garble[last])
            return [encode_basic_reply(raw)]
        return replies


def memory_pump(sim: NewEraSim, clock: VirtualClock, **options: Any) -> NewEraPump:
    transport = SerialTransport(
        "pump1", sim.memory_connector(), port=f"mem:{id(object())}", clock=clock
    )
    return NewEraPump("pump1", transport, clock=clock, address=sim.address, **options)


def tx(pump: NewEraPump) -> list[bytes]:
    return [e.data for e in pump.transport.trace if e.direction == "tx"]


def run(coro_fn: Any) -> Any:
    clock = VirtualClock()
    return clock.run(coro_fn(clock))


# ---------------------------------------------------------------------------------------------
# 1. replies matched to requests
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock, retries=0)
        await pump.connect()
        await pump.set_rate("10 uL/min")
        # The reply to DIA arrives after its time-out, while the next request waits.
        sim.inject(Fault(FaultKind.DELAY, seconds=1.5))
        with pytest.raises(DeviceTimeout):
            await pump.diameter()
        assert (await pump.rate()).m_as("uL/min") == pytest.approx(10)  # not "14.43"
        # A late status-only reply (to a setting) must not pass for RUN's answer.
        await pump.set_volume("10 uL")
        sim.inject(Fault(FaultKind.DELAY, seconds=1.5))
        with pytest.raises(DeviceTimeout):
            await pump.command("DIA14.43")
        assert (await pump.run()).status == "I"  # RUN's own reply, not the late "S"
        assert pump.transport.resyncs == 2 and pump.transport.late_frames >= 2
        # The resync query is VER in a safe packet (understood in either mode).
        assert b"\x02\x080VER" in b"".join(tx(pump))
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
@pytest.mark.parametrize(
    ("command", "data"),
    [
        ("DIS", "I..W0.000UL"),
        ("DIS", "I1.0.0W0.000UL"),
        ("DIS", "I-1.00W0.000UL"),
        ("DIS", "I12345W0UL"),
        ("RAT", "1.2.3UM"),
        ("RAT", "UM"),
        ("DIA", "1.2.3"),
        ("DIA", "-4.7"),
        ("DIA", "."),
        ("DIR", "REV"),
        ("VER", "NE1000V3.9x"),
        ("SAF", "999"),
    ],
)
def test_malformed_numbers_are_framing_errors(command: str, data: str) -> None:
    async def main(clock: VirtualClock) -> None:
        sim = QuirkySim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        sim.garble[command] = data
        # (a garbled VER cannot even resynchronise: the line stays out of step, a timeout)
        expected = FramingError if command != "VER" else DeviceError
        with pytest.raises(expected):
            await pump.query(command)
        if command != "SAF":  # identify() too: `kiboauto probe` gets a DeviceError
            with pytest.raises(expected):
                await pump.identify()
        del sim.garble[command]
        assert (await pump.identify()).firmware == "NE1000V3.928"
        await pump.close()
        await sim.aclose()

    run(main)


def test_strict_numbers() -> None:
    assert strict_number("0.012") == 0.012 and strict_number("1234") == 1234
    for bad in ("1.2.3", ".", "", "-1", "12345", "1.2345", "1e3"):
        with pytest.raises(BadFrame):
            strict_number(bad)


# ---------------------------------------------------------------------------------------------
# 2. only what is idempotent is ever repeated
# ---------------------------------------------------------------------------------------------
def test_the_idempotence_table() -> None:
    for command in ("", "VER", "DIS", "DIA", "DIA14.43", "RAT10UM", "VOL5", "VOLUL", "DIRINF",
                    "DIR WDR", "SAF30", "AL1"):  # fmt: skip
        assert is_idempotent(command), command
    for command in ("DIRREV", "RUN", "RUN1", "STP", "CLDINF", "CLD WDR", "PUR", "XYZ"):
        assert not is_idempotent(command), command
    assert set(COMMANDS) >= {"DIA", "RAT", "VOL", "DIR", "RUN", "STP", "DIS", "CLD", "VER"}


@pytest.mark.req("KA-DEV-001")
def test_reverse_direction_is_sent_exactly_once() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock, retries=3)
        await pump.connect()
        await pump.set_direction("INF")
        sim.inject(Fault(FaultKind.DELAY, seconds=1.5))
        with pytest.raises(DeviceTimeout):
            await pump.set_direction("REV")
        assert list(sim.commands).count("DIRREV") == 1
        assert sim.direction == "WDR" and await pump.direction() == "WDR"
        # An absolute direction is repeated after a lost reply: same end state.
        sim.inject(Fault(FaultKind.DROP))
        await pump.set_direction("INF")
        assert list(sim.commands).count("DIRINF") == 3 and sim.direction == "INF"
        # CLD is not repeated either.
        sim.inject(Fault(FaultKind.DROP))
        with pytest.raises(DeviceTimeout):
            await pump.clear_dispensed("INF")
        assert list(sim.commands).count("CLDINF") == 1
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DRV-002")
def test_time_out_alarm_never_resends_a_command_that_is_not_idempotent() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock, power_on_alarm=False)
        pump = memory_pump(sim, clock, safe_mode=True, safe_timeout=10)
        await pump.connect()
        await clock.sleep(30)  # silent host: alarm T
        with pytest.raises(DeviceAlarm) as alarm:
            await pump.set_direction("REV")
        assert alarm.value.code == "T"
        assert list(sim.commands).count("DIRREV") == 1 and sim.direction == "INF"
        await clock.sleep(30)
        await pump.set_direction("WDR")  # idempotent: acknowledged, then sent again
        assert list(sim.commands).count("DIRWDR") == 2 and sim.direction == "WDR"
        assert [e.code for e in pump.alarms.since(0)] == ["T", "T"]
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 3. a lost reply to RUN is resolved by asking the pump
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-004")
def test_lost_reply_to_run_follows_the_pump_that_moved() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = QuirkySim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        sim.mute_after.add("RUN")
        result = await pump.dispense("100 uL", "10 uL/min")
        assert isinstance(result, PumpResult)
        assert result.delivered_ul == pytest.approx(100, abs=0.1)
        assert sim.infused_ul == pytest.approx(100)
        assert list(sim.commands).count("RUN") == 1
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-HIL-004")
def test_run_that_never_arrived_is_start_not_confirmed() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = QuirkySim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        sim.deaf_to.add("RUN")
        status = pump.dispense("100 uL", "10 uL/min")
        with pytest.raises(ActionIncomplete, match="start not confirmed") as failed:
            await status
        assert failed.value.delivered_ul == 0.0 and failed.value.marker is status.marker
        assert sim.state == "S" and sim.infused_ul == 0.0
        assert tx(pump).count(b"0RUN\r") == 1  # never sent again
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
def test_busy_pump_is_refused_and_left_running() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock, power_on_alarm=False)
        for cmd in (b"RAT 10 UM\r", b"VOL 500\r", b"RUN\r"):  # someone else's program
            sim.handle_bytes(cmd)
        pump = memory_pump(sim, clock)
        await pump.connect()
        with pytest.raises(DeviceBusy) as busy:
            await pump.dispense("10 uL", "10 uL/min")
        assert busy.value.delivered_ul == 0.0
        assert sim.state == "I" and "STP" not in sim.commands
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 4. latched alarms: the action gets the alarm even when a poller read it
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-001")
def test_stall_alarm_read_by_a_concurrent_poller_ends_the_action() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        events: list[DeviceEvent] = []
        pump.alarms.subscribe(events.append)
        poller_saw: list[str] = []
        readings: list[dict[str, Reading]] = []

        async def poller() -> None:
            while True:
                try:
                    await pump.is_moving()
                    readings.append(await pump.read())
                except DeviceAlarm as e:
                    poller_saw.append(e.code)
                await clock.sleep(0.25)

        task = asyncio.get_running_loop().create_task(poller())
        status = pump.dispense("100 uL", "10 uL/min")
        await clock.sleep(120)
        sim.blocked = True
        with pytest.raises(DeviceAlarm) as alarm:
            await status
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert poller_saw == ["S"]  # the poller, not the action, read the alarm
        assert alarm.value.code == "S" and "stalled" in str(alarm.value)
        assert alarm.value.delivered_ul == pytest.approx(sim.infused_ul, abs=0.01)
        assert sim.infused_ul == pytest.approx(20, abs=0.5)
        assert [e.code for e in events] == ["S"]
        assert readings[-1]["alarm"].severity == Severity.MAJOR
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 5. the DIS counter saturates; its unit follows VOL UL / VOL ML
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-001")
def test_counter_near_saturation_is_cleared_before_the_marker() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        sim.infused_ul = 9990.0  # the display counter was left near 9999 uL
        marker = await pump.prepare("dispense", "20 uL", "10 uL/min")
        assert marker.baseline["infused_ul"] == 0.0 and marker.baseline["unit"] == "UL"
        assert "CLDINF" in sim.commands and "CLDWDR" not in sim.commands
        result = await pump.start(marker)
        assert result.delivered_ul == pytest.approx(20, abs=marker.step_ul)
        assert sim.truth()["infused_ul"] == pytest.approx(20)
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-HIL-001")
def test_counter_units_ml_and_ul() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock, diameter_mm=26.59, syringe_volume_ul=60_000)
        assert sim.volume_units == "ML"
        pump = memory_pump(sim, clock)
        await pump.connect()
        sim.withdrawn_ul = 1500.0  # shown as W1.500 ML
        marker = await pump.prepare("dispense", "12 mL", "100 mL/h")  # programmed in mL
        assert marker.baseline["unit"] == "ML" and marker.baseline["withdrawn_ul"] == 1500.0
        assert marker.step_ul == pytest.approx(10.0)  # 12.00 mL: one count is 0.01 mL
        result = await pump.start(marker)
        assert result.delivered_ul == pytest.approx(12_000, abs=10)
        assert sim.truth()["infused_ul"] == pytest.approx(12_000)
        small = await pump.prepare("dispense", "20 uL", "10 uL/min")  # now in uL
        assert small.baseline["unit"] == "UL"
        await pump.start(small)
        await pump.command("VOLML")  # someone switches the display unit afterwards
        delivery = await pump.delivered_since(small)
        assert delivery.delivered_ul == pytest.approx(20, abs=1.0) and delivery.complete
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 7. markers: delivered_since from a new driver after a crash
# ---------------------------------------------------------------------------------------------
async def _crash_mid_dispense(
    sim: NewEraSim, clock: VirtualClock, volume: str = "100 uL"
) -> ActionMarker:
    """Driver 1 prepares and starts a dispense, then its process dies (line closed, pump left
    running); returns the marker it had journaled (as JSON)."""
    pump = memory_pump(sim, clock)
    await pump.connect()
    marker = await pump.prepare("dispense", volume, "10 uL/min")
    journaled = marker.to_json()
    await pump.run()  # what start() sends; then the process dies
    await clock.sleep(300)
    await pump.transport.close()
    return ActionMarker.from_json(journaled)


@pytest.mark.req("KA-DEV-001")
def test_new_driver_after_a_crash_adopts_the_running_dispense() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        sim.infused_ul = 40.0
        marker = await _crash_mid_dispense(sim, clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        delivery = await pump.delivered_since(marker)
        assert delivery.moving and not delivery.complete
        assert delivery.delivered_ul == pytest.approx(50, abs=0.1)  # 300 s at 10 uL/min
        status = pump.adopt(marker)
        result = await status
        assert result.delivered_ul == pytest.approx(100, abs=0.1)
        assert sim.infused_ul == pytest.approx(140) and list(sim.commands).count("RUN") == 1
        assert (await pump.delivered_since(marker)).complete
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
def test_new_driver_after_a_crash_starts_the_remainder() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        marker = await _crash_mid_dispense(sim, clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        await pump.stop()  # the operator stops it first
        delivery = await pump.delivered_since(marker)
        assert not delivery.moving
        rest = marker.remainder(delivery.delivered_ul)
        assert rest == pytest.approx(50, abs=0.1)
        second = await pump.prepare("dispense", f"{rest} uL", "10 uL/min")
        await pump.start(second)
        assert sim.truth()["infused_ul"] == pytest.approx(100, abs=0.1)
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
def test_power_cycle_after_the_marker_is_state_lost() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        marker = await _crash_mid_dispense(sim, clock)
        sim.power_cycle()
        pump = memory_pump(sim, clock)
        await pump.connect()  # acknowledges alarm R: recorded
        assert pump.reset_seen_at is not None and pump.reset_seen_at > marker.created
        assert "R" in pump.alarms.active
        with pytest.raises(DeviceStateLost):
            await pump.delivered_since(marker)
        with pytest.raises(DeviceStateLost):
            await pump.adopt(marker)
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
def test_counters_cleared_since_the_marker_is_state_lost() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        sim.infused_ul = 500.0
        marker = await _crash_mid_dispense(sim, clock)
        sim.handle_bytes(b"CLDINF\r")  # someone at the keypad / another program
        pump = memory_pump(sim, clock)
        await pump.connect()
        with pytest.raises(DeviceStateLost, match="below"):
            await pump.delivered_since(marker)
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-DEV-001")
def test_start_refuses_a_stale_marker() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        marker = await pump.prepare("dispense", "10 uL", "10 uL/min")
        await pump.dispense("5 uL", "10 uL/min")  # the counters move after the marker
        with pytest.raises(DeviceError, match="prepare the action again"):
            await pump.start(marker)
        assert list(sim.commands).count("RUN") == 1
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 8. pause / resume / stop / cancel with the hardware
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-001")
def test_pause_and_resume_deliver_exactly_the_volume() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        t0 = clock.now()
        status = pump.dispense("100 uL", "10 uL/min")
        assert status.can_pause
        await clock.sleep(120)
        await status.pause()
        assert sim.state == "P"
        held = sim.truth()["infused_ul"]
        await clock.sleep(1000)
        assert sim.truth()["infused_ul"] == held and not status.done
        await status.resume()
        result = await status
        assert result.delivered_ul == pytest.approx(100, abs=0.01)
        assert sim.truth()["infused_ul"] == pytest.approx(100, abs=1e-6)
        assert list(sim.commands).count("RUN") == 2  # start, resume
        assert clock.now() - t0 == pytest.approx(1600, abs=15)
        # Paused before the start: nothing is sent until resume.
        status = pump.dispense("10 uL", "10 uL/min")
        await status.pause()
        await clock.sleep(100)
        assert list(sim.commands).count("RUN") == 2 and not status.done
        await status.resume()
        assert (await status).delivered_ul == pytest.approx(10, abs=0.01)
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-HIL-001")
def test_stop_and_cancel_report_the_delivered_volume() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        status = pump.dispense("1 mL", "10 uL/min")
        await clock.sleep(30)
        await pump.stop()
        with pytest.raises(ActionIncomplete, match="stop requested") as stopped:
            await status
        assert stopped.value.delivered_ul == pytest.approx(5, abs=0.01)
        assert stopped.value.delivered_ul == pytest.approx(sim.infused_ul, abs=0.001)

        status = pump.dispense("1 mL", "10 uL/min")
        await clock.sleep(60)
        status.cancel()
        with pytest.raises(asyncio.CancelledError):
            await status
        assert sim.state == "S"
        assert isinstance(status, NewEraAction)
        assert status.delivered_ul == pytest.approx(10, abs=0.01)
        assert status.progress.current == status.delivered_ul
        await pump.close()
        await sim.aclose()

    run(main)


# ---------------------------------------------------------------------------------------------
# 9. readings, estimate
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
def test_read_describe_estimate() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        assert isinstance(pump, SyringePump)
        await pump.connect()
        await pump.dispense("25 uL", "10 uL/min")
        readings = await pump.read()
        assert set(readings) == set(pump.describe())
        assert readings["status"].value == "stopped" and readings["moving"].value is False
        assert isinstance(readings["rate"].value, Quantity)
        assert readings["rate"].value.m_as("uL/min") == pytest.approx(10)
        assert readings["direction"].value == "INF"
        assert readings["infused"].value.m_as("uL") == pytest.approx(25)
        assert readings["volume_unit"].value == "UL"
        assert readings["infused"].timestamp == clock.wall()
        assert readings["alarm"].severity == Severity.MINOR  # the power-up reset seen
        pump.alarms.acknowledge()
        assert (await pump.read())["alarm"].severity == Severity.OK
        estimate = pump.estimate("withdraw", "50 uL", "10 uL/min")
        assert estimate.repeatable is False and estimate.duration_s == pytest.approx(300)
        with pytest.raises(ValueError):
            pump.estimate("suck", "1 uL", "1 uL/min")
        await pump.close()
        await sim.aclose()

    run(main)


@pytest.mark.req("KA-HIL-004")
def test_line_faults_during_a_dispense_change_nothing_delivered() -> None:
    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        pump = memory_pump(sim, clock)
        await pump.connect()
        status = pump.dispense("100 uL", "10 uL/min")
        for fault in (
            Fault(FaultKind.DROP, count=2),
            Fault(FaultKind.CORRUPT, count=2),
            Fault(FaultKind.DELAY, seconds=1.5),
            Fault(FaultKind.GARBAGE, size=40),
        ):
            await clock.sleep(100)
            sim.inject(fault)
            with contextlib.suppress(DeviceError):
                await pump.read()  # a poller meets the fault as often as the action does
        result = await status
        assert result.delivered_ul == pytest.approx(100, abs=0.1)
        assert sim.truth()["infused_ul"] == pytest.approx(100)
        assert list(sim.commands).count("RUN") == 1 and sim.state == "S"
        await pump.close()
        await sim.aclose()

    run(main)
