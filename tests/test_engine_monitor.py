"""The limit monitor on the in-process station: real drivers, simulators on memory pipes, and
virtual time. The incubator's limits and watchdogs are driven physically (set points, a heater
stuck on), read failures by line faults injected into the simulators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from kiboauto.clock import VirtualClock
from kiboauto.devices import Device, DeviceError, DeviceEvent, DeviceTimeout, Severity
from kiboauto.engine.monitor import LimitLevel, Monitor
from kiboauto.hil.base import Fault
from kiboauto.journal import TelemetryRow
from kiboauto.protocol.model import Limits, MonitorSpec, WatchdogSpec
from kiboauto.station import OpenStation, StationFile, default_station, open_station
from kiboauto.units import Q_, Quantity

INCUBATOR_LIMITS = {
    "temperature": Limits(yellow=(None, "25 degC"), red=(None, "30 degC")),
}


class Sink:
    """Records every report with the protocol time it arrived at."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.rows: list[TelemetryRow] = []
        self.limits: list[tuple[float, str, str, LimitLevel, Any]] = []
        self.watchdogs: list[tuple[float, str, dict[str, object]]] = []
        self.events: list[tuple[float, str, DeviceEvent]] = []
        self.errors: list[tuple[float, str, DeviceError]] = []

    def on_samples(self, rows: list[TelemetryRow]) -> None:
        self.rows.extend(rows)

    async def on_limit(
        self, role: str, reading: str, level: LimitLevel, value: object, limits: Limits
    ) -> None:
        self.limits.append((self.now(), role, reading, level, value))

    async def on_watchdog(self, spec: WatchdogSpec, values: dict[str, object]) -> None:
        self.watchdogs.append((self.now(), spec.name, values))

    async def on_device_event(self, role: str, event: DeviceEvent) -> None:
        self.events.append((self.now(), role, event))

    async def on_sample_error(self, role: str, error: DeviceError) -> None:
        self.errors.append((self.now(), role, error))

    def times(self, role: str) -> list[float]:
        return sorted({r.t for r in self.rows if r.device == role})

    def temperatures(self) -> list[tuple[float, float]]:
        return [
            (r.t, float(r.value))
            for r in self.rows
            if r.device == "incubator" and r.name == "temperature" and r.value is not None
        ]


def _run(body: Callable[[VirtualClock], Coroutine[Any, Any, None]]) -> None:
    clock = VirtualClock()
    clock.run(body(clock))


@contextlib.asynccontextmanager
async def station(
    clock: VirtualClock, edit: Callable[[StationFile], None] | None = None
) -> AsyncIterator[OpenStation]:
    spec = default_station()
    if edit is not None:
        edit(spec)
    async with open_station(spec, clock) as opened:
        assert not opened.failures
        yield opened


def monitor_for(
    opened: OpenStation,
    clock: VirtualClock,
    specs: list[MonitorSpec],
    watchdogs: list[WatchdogSpec] | None = None,
    **options: Any,
) -> tuple[Monitor, Sink]:
    t0 = clock.now()

    def protocol_time() -> float:
        return clock.now() - t0

    sink = Sink(protocol_time)
    devices: dict[str, Device] = dict(opened.devices)
    monitor = Monitor(
        devices,
        specs,
        watchdogs or [],
        clock,
        protocol_time=protocol_time,
        sink=sink,
        **options,
    )
    return monitor, sink


@contextlib.asynccontextmanager
async def running(monitor: Monitor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(monitor.run(), name="test:monitor")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def monitor_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("monitor:") and not t.done()]


# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-ENG-006")
def test_samples_two_rates_at_their_protocol_times() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            specs = [
                MonitorSpec(device="incubator", every="10 s"),
                MonitorSpec(device="pump1", every="30 s"),
            ]
            monitor, sink = monitor_for(opened, clock, specs)
            assert monitor.periods == {"incubator": 10.0, "pump1": 30.0}
            assert monitor.last_sample_time is None and monitor.values() == {}
            async with running(monitor):
                await clock.sleep(95)
            assert sink.times("incubator") == pytest.approx([10.0 * k for k in range(10)])
            assert sink.times("pump1") == pytest.approx([0.0, 30.0, 60.0, 90.0])
            assert {r.device for r in sink.rows} == {"incubator", "pump1"}  # roles, not drivers
            assert monitor.last_sample_time == pytest.approx(90.0)
            # units are carried through to the rows and to the values conditions read
            row = next(r for r in sink.rows if r.device == "incubator" and r.name == "temperature")
            assert row.unit == str(Q_(1, "degC").units)
            assert row.value == pytest.approx(22.0)
            values = monitor.values()
            temperature = values["incubator.temperature"]
            assert isinstance(temperature, Quantity)
            assert temperature.to("degC").magnitude == pytest.approx(22.0)
            assert values["incubator.running"] is True
            assert isinstance(values["pump1.infused"], Quantity)
            assert not sink.errors and not sink.limits
            assert not monitor_tasks()

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_incubator_heating_goes_yellow_then_red_and_back_to_green() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            incubator = opened.devices["incubator"]
            specs = [MonitorSpec(device="incubator", every="10 s", limits=INCUBATOR_LIMITS)]
            monitor, sink = monitor_for(opened, clock, specs)
            async with running(monitor):
                await clock.sleep(60)
                assert sink.limits == []  # 22 degC: green, nothing to say
                await incubator.set_setpoint("40 degC")  # the heater drives it up
                await clock.sleep(15 * 60)
                assert [e[3] for e in sink.limits] == ["yellow", "red"]
                assert monitor.levels == {"incubator.temperature": "red"}
                await incubator.set_setpoint("20 degC")  # the cooler brings it back
                await clock.sleep(30 * 60)
            levels = [e[3] for e in sink.limits]
            assert levels == ["yellow", "red", "yellow", "green"]
            assert all(e[1:3] == ("incubator", "temperature") for e in sink.limits)
            (t_y, *_, v_y), (t_r, *_, v_r) = sink.limits[0], sink.limits[1]
            assert v_y > Q_(25, "degC") and v_r > Q_(30, "degC")
            # reported at the first sample beyond each limit
            before_yellow = [v for t, v in sink.temperatures() if t < t_y - 1e-6]
            assert before_yellow and max(before_yellow) <= 25.0
            assert min(t for t, v in sink.temperatures() if v > 30.0) == pytest.approx(t_r)
            assert sink.limits[-1][4] <= Q_(25, "degC")
            assert monitor.levels == {"incubator.temperature": "green"}

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_watchdog_fires_once_after_its_duration_and_rearms_after_clearing() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            incubator = opened.devices["incubator"]
            specs = [MonitorSpec(device="incubator", every="10 s")]
            dogs = [
                WatchdogSpec(name="too_warm", when="incubator.temperature > 25 degC for 5 min"),
                # a name nothing provides: simply never true, never an error
                WatchdogSpec(name="ghost", when="freezer.temperature > -80 degC for 1 s"),
            ]
            monitor, sink = monitor_for(opened, clock, specs, dogs)

            def first_above(after: float) -> float:
                return min(t for t, v in sink.temperatures() if v > 25.0 and t >= after)

            async with running(monitor):
                await incubator.set_setpoint("30 degC")
                await clock.sleep(4 * 60)
                assert any(v > 25.0 for _, v in sink.temperatures())
                assert sink.watchdogs == []  # warm, but not for 5 min yet
                await clock.sleep(11 * 60)
                assert len(sink.watchdogs) == 1
                t_fire, name, values = sink.watchdogs[0]
                assert name == "too_warm"
                assert t_fire == pytest.approx(first_above(0.0) + 300.0)  # not a sample earlier
                seen = values["incubator.temperature"]
                assert isinstance(seen, Quantity) and seen > Q_(25, "degC")
                assert set(values) == {"incubator.temperature"}

                await incubator.set_setpoint("20 degC")  # clears: the watchdog re-arms
                await clock.sleep(30 * 60)
                assert len(sink.watchdogs) == 1  # it stayed warm a while: still fired once
                cooled, temperature = sink.temperatures()[-1]
                assert temperature < 25.0

                await incubator.set_setpoint("30 degC")
                await clock.sleep(20 * 60)
            assert [w[1] for w in sink.watchdogs] == ["too_warm", "too_warm"]
            second_above = first_above(cooled)
            assert sink.watchdogs[1][0] == pytest.approx(second_above + 300.0)
            assert not sink.errors

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_read_errors_are_counted_reported_once_per_streak_and_sampling_goes_on() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            sim = opened.simulators["incubator"]
            specs = [
                MonitorSpec(device="incubator", every="10 s"),
                MonitorSpec(device="pump1", every="10 s"),
            ]
            monitor, sink = monitor_for(opened, clock, specs)
            async with running(monitor) as task:
                await clock.sleep(25)
                sim.inject(Fault.from_dict({"kind": "drop", "count": 0}))  # line goes silent
                await clock.sleep(60)
                assert len(sink.errors) == 1
                t_err, role, error = sink.errors[0]
                assert role == "incubator" and isinstance(error, DeviceTimeout)
                assert t_err == pytest.approx(30.0, abs=5.0)  # the first read after the fault
                assert monitor.error_counts["incubator"] >= 5
                silent_from = clock.now()
                sim.faults.clear()  # the line answers again
                await clock.sleep(60)
                assert not task.done()
                resumed = [t for t in sink.times("incubator") if t > silent_from - 0.5]
                assert len(resumed) >= 5
                sim.inject(Fault.from_dict({"kind": "drop", "count": 0}))  # a second streak
                await clock.sleep(30)
                sim.faults.clear()
                await clock.sleep(30)
            assert [e[1] for e in sink.errors] == ["incubator", "incubator"]
            assert monitor.error_counts["pump1"] == 0
            ticks = [10.0 * k for k in range(21)]  # 0..200 s
            assert sink.times("pump1") == pytest.approx(ticks)  # the other role never missed
            # every tick of the incubator was either a sample or a counted failure
            good = len(sink.times("incubator"))
            assert good + monitor.error_counts["incubator"] == len(ticks)

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_a_hanging_read_is_bounded_by_the_monitor_timeout() -> None:
    def patient_driver(spec: StationFile) -> None:
        # the driver would wait 10 min for a reply: only the monitor's own bound stops the read
        spec.devices["incubator"].options.update(timeout=600.0, retries=0)

    async def body(clock: VirtualClock) -> None:
        async with station(clock, patient_driver) as opened:
            sim = opened.simulators["incubator"]
            specs = [MonitorSpec(device="incubator", every="10 s")]
            monitor, sink = monitor_for(opened, clock, specs, read_timeout=20.0)
            async with running(monitor) as task:
                await clock.sleep(5)
                sim.inject(Fault.from_dict({"kind": "delay", "seconds": 45}))  # one late reply
                await clock.sleep(120)
                assert not task.done()
            assert len(sink.errors) == 1
            t_err, _, error = sink.errors[0]
            assert isinstance(error, DeviceTimeout) and "20 s" in str(error)
            assert t_err == pytest.approx(10.0 + 20.0)  # the 10 s read, cut at 20 s
            assert len([t for t in sink.times("incubator") if t > 60.0]) >= 5

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_latched_controller_alarm_is_delivered_after_a_heater_runaway() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            sim = opened.simulators["incubator"]
            limits = {"temperature": Limits(red=(None, "40 degC"))}
            specs = [MonitorSpec(device="incubator", every="30 s", limits=limits)]
            monitor, sink = monitor_for(opened, clock, specs)
            async with running(monitor):
                await clock.sleep(60)
                sim.inject(Fault.from_dict({"kind": "alarm", "alarm": "runaway"}))  # heater stuck
                await clock.sleep(30 * 60)
            assert sim.truth()["tripped"]  # the controller's over-temperature trip cut it
            assert [e[3] for e in sink.limits][:1] == ["red"]
            assert sink.events, "the latched over-temperature alarm was not delivered"
            t_event, role, event = sink.events[0]
            assert role == "incubator" and event.device == "incubator"
            assert event.code in {"AL1", "SYS"}
            assert event.severity >= Severity.MAJOR
            assert t_event > sink.limits[0][0]  # red at 40 degC came first, the trip at 45

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_sampling_a_pump_while_it_dispenses_does_not_disturb_the_action() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            pump = opened.devices["pump1"]
            specs = [MonitorSpec(device="pump1", every="1 s")]
            monitor, sink = monitor_for(opened, clock, specs)
            async with running(monitor):
                await clock.sleep(2)
                result = await pump.dispense("10 uL", "10 uL/min")  # 60 s of pumping
                await clock.sleep(5)
            assert result.delivered_ul == pytest.approx(10.0)
            assert opened.simulators["pump1"].truth()["infused_ul"] == pytest.approx(10.0)
            moving = [r.t for r in sink.rows if r.name == "moving" and r.value == 1.0]
            assert len(moving) >= 50  # sampled all along the dispense
            assert not sink.errors

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_monitor_cancels_cleanly_even_mid_read_and_can_run_again() -> None:
    def patient_driver(spec: StationFile) -> None:
        spec.devices["incubator"].options.update(timeout=600.0, retries=0)

    async def body(clock: VirtualClock) -> None:
        async with station(clock, patient_driver) as opened:
            sim = opened.simulators["incubator"]
            latch = opened.devices["incubator"].alarms
            specs = [
                MonitorSpec(device="incubator", every="10 s"),
                MonitorSpec(device="pump1", every="1 min"),
            ]
            monitor, sink = monitor_for(opened, clock, specs)
            sim.inject(Fault.from_dict({"kind": "delay", "seconds": 100}))
            task = asyncio.get_running_loop().create_task(monitor.run())
            await clock.sleep(5)  # the incubator read is hanging now
            assert len(monitor_tasks()) == 3 and len(latch._subscribers) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            assert monitor_tasks() == []
            assert latch._subscribers == []  # no alarm goes to a stopped monitor
            await clock.sleep(200)  # the late reply comes and goes
            async with running(monitor):
                await clock.sleep(30)
            assert len([t for t in sink.times("incubator") if t >= 205.0]) >= 3
            assert monitor_tasks() == []
            await monitor.sample_now("incubator")  # no run needed for one sample
            assert monitor.last_sample_time == pytest.approx(sink.now())

    _run(body)


@pytest.mark.req("KA-ENG-006")
def test_limits_are_checked_against_the_devices_when_the_monitor_is_built() -> None:
    async def body(clock: VirtualClock) -> None:
        async with station(clock) as opened:
            bad_reading = {"temprature": Limits(red=(None, "30 degC"))}
            with pytest.raises(ValueError, match="no reading 'temprature'"):
                monitor_for(opened, clock, [MonitorSpec(device="incubator", limits=bad_reading)])
            bad_unit = {"temperature": Limits(red=(None, "30 uL"))}
            with pytest.raises(ValueError, match=r"30 uL.* but the reading is in degC"):
                monitor_for(opened, clock, [MonitorSpec(device="incubator", limits=bad_unit)])
            with pytest.raises(ValueError, match="no device for role 'freezer'"):
                monitor_for(opened, clock, [MonitorSpec(device="freezer")])
            # a plain number is in the reading's own unit (degC here)
            plain = {"temperature": Limits(yellow=(None, 21))}
            monitor, sink = monitor_for(
                opened, clock, [MonitorSpec(device="incubator", limits=plain)]
            )
            await monitor.sample_now()
            assert [e[3] for e in sink.limits] == ["yellow"]

    _run(body)
