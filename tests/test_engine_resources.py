"""Station resources: the power budget sequences real pump actions on the in-process station
(virtual time), refuses a device that can never fit, and the tally gives a payload engineer's
figures against the station's allocations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kiboauto.clock import VirtualClock
from kiboauto.config import ConfigError
from kiboauto.engine.resources import PowerBudget, PowerBudgetError, ResourceTally
from kiboauto.protocol.model import CrewArgs, CrewStep
from kiboauto.station import (
    Allocations,
    PowerDraw,
    StationFile,
    default_station,
    load_station,
    open_station,
    write_station,
)

HOUR = 3600.0


def powered_station(allocation_w: float) -> StationFile:
    """The default station, every device 5 W idle, the two pumps 10 W while they move."""
    station = default_station()
    for name, device in station.devices.items():
        active = 10.0 if name in ("pump1", "valve1") else 5.0
        device.power_w = PowerDraw(idle=5.0, active=active)
    station.allocations = Allocations(power_w=allocation_w)
    return station


@pytest.mark.req("KA-ENG-007")
def test_second_pump_waits_for_power_until_the_first_has_finished() -> None:
    clock = VirtualClock()

    async def body() -> None:
        station = powered_station(25.0)
        async with open_station(station, clock) as opened:
            assert not opened.failures
            t0 = clock.now()
            budget = PowerBudget.from_station(station, protocol_time=lambda: clock.now() - t0)
            assert budget.allocation_w == 25.0
            assert budget.idle_w == 20.0 and budget.unknown == []
            pump, cavro = opened.devices["pump1"], opened.devices["valve1"]
            await cavro.initialize()
            log: list[tuple[float, str, str]] = []

            async def act(role: str, what: str, action: Any) -> None:
                async with budget.active(role, what=what):
                    log.append((clock.now() - t0, role, "start"))
                    await action()
                    log.append((clock.now() - t0, role, "end"))

            async with asyncio.TaskGroup() as tasks:
                # 10 uL at 10 uL/min: 60 s; then 50 uL at 100 uL/min: 30 s
                tasks.create_task(
                    act("pump1", "dispense", lambda: pump.dispense("10 uL", "10 uL/min"))
                )
                await clock.sleep(1)
                assert budget.acting == {"pump1": "dispense"}
                asked = clock.now() - t0
                tasks.create_task(
                    act("valve1", "withdraw", lambda: cavro.withdraw("50 uL", "100 uL/min"))
                )
                await clock.sleep(10)
                assert budget.waiting == ["valve1"]  # 20 W idle + 5 W + 5 W would be 30 W
                truth = opened.simulators["valve1"].truth()
                assert truth["aspirated_ul"] == 0.0  # the cavro has not moved

            order = [(role, what) for _, role, what in log]
            assert order == [
                ("pump1", "start"),
                ("pump1", "end"),
                ("valve1", "start"),
                ("valve1", "end"),
            ]
            pump_end, valve_start = log[1][0], log[2][0]
            assert valve_start == pytest.approx(pump_end)
            assert pump_end == pytest.approx(60.0, abs=2.0)
            assert opened.simulators["pump1"].truth()["infused_ul"] == pytest.approx(10.0)
            assert opened.simulators["valve1"].truth()["aspirated_ul"] == pytest.approx(50.0)
            assert budget.peak_w == 25.0 and budget.peak_w <= 25.0
            assert max(w for _, w in budget.timeline) <= 25.0
            assert budget.current_w == 20.0 and budget.acting == {}
            (wait,) = budget.waits
            assert (wait.role, wait.what) == ("valve1", "withdraw")
            assert wait.since == pytest.approx(asked)
            assert wait.waited_s == pytest.approx(valve_start - asked)

    clock.run(body())


@pytest.mark.req("KA-ENG-007")
def test_budget_is_first_come_first_served_and_a_cancelled_waiter_leaves_the_queue() -> None:
    clock = VirtualClock()

    async def body() -> None:
        draws = {"a": (5.0, 15.0), "b": (5.0, 15.0), "c": (5.0, 15.0), "d": (5.0, 6.0)}
        budget = PowerBudget(draws, 31.0, protocol_time=clock.now)  # 20 W idle, 11 W to spare
        started: list[str] = []

        async def hold(role: str, seconds: float) -> None:
            async with budget.active(role, what="move"):
                started.append(role)
                await clock.sleep(seconds)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(hold("a", 10))
            await clock.sleep(0)
            b = tasks.create_task(hold("b", 10))
            await clock.sleep(0)
            tasks.create_task(hold("d", 10))  # would fit beside a, but b asked first
            tasks.create_task(hold("a", 1))  # already active: no extra power, no wait
            await clock.sleep(1)
            assert budget.waiting == ["b", "d"]
            assert started == ["a", "a"]
            b.cancel()
            await clock.sleep(0.5)
            assert budget.waiting == []  # d goes on as soon as b stops waiting
            assert started == ["a", "a", "d"]
        assert b.cancelled()
        assert started == ["a", "a", "d"]  # b never acted
        assert budget.peak_w == pytest.approx(31.0)  # a active, d active, b and c idle
        assert budget.current_w == pytest.approx(20.0)
        assert [w.role for w in budget.waits] == ["d"]

    clock.run(body())


@pytest.mark.req("KA-ENG-007")
def test_a_device_that_can_never_fit_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PowerBudgetError, match=r"pump2 draws 30 W active.*over the 25 W"):
        PowerBudget({"pump1": (5.0, 10.0), "pump2": (5.0, 30.0)}, 25.0)
    with pytest.raises(PowerBudgetError, match=r"pump1 draws 22 W active.*9 W.*31 W"):
        PowerBudget({"pump1": (1.0, 22.0), "inc": (9.0, 9.0)}, 25.0)
    with pytest.raises(PowerBudgetError, match="devices draw 30 W idle"):
        PowerBudget({"inc": (30.0, 30.0)}, 25.0)
    # from a station file: a device without power_w counts 0 W and is listed as unknown
    station = powered_station(25.0)
    station.devices["camera1"].power_w = None
    budget = PowerBudget.from_station(station)
    assert budget.unknown == ["camera1"] and budget.idle_w == 15.0
    station.devices["pump1"].power_w = PowerDraw(idle=5.0, active=40.0)
    with pytest.raises(PowerBudgetError, match="pump1 draws 40 W active"):
        PowerBudget.from_station(station)
    # the allocations round-trip through a station file and are checked like the rest
    path = tmp_path / "station.yaml"
    write_station(powered_station(25.0), path)
    loaded = load_station(path)
    assert loaded.allocations == Allocations(power_w=25.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n  pump1: {driver: newera, port: sim}\n"
        "allocations:\n  power_w: -1\n  crew_min: 5\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_station(bad)
    assert "allocations.power_w" in str(info.value)
    assert "allocations.crew_min" in str(info.value)


@pytest.mark.req("KA-ENG-007")
def test_tally_of_a_small_plan_against_the_allocations() -> None:
    allocations = Allocations(power_w=25.0, crew_min_per_day=30.0, downlink_mb_per_day=1.0)
    budget = PowerBudget({"pump1": (5.0, 10.0), "pump2": (5.0, 10.0)}, 25.0)
    tally = ResourceTally(allocations, budget=budget)

    def crew(minutes: int) -> CrewStep:
        return CrewStep(crew=CrewArgs(procedure="swap the cassette", expected=f"{minutes} min"))

    # a two-day plan: 20 min of crew on day 0, 15 + 20 min on day 1
    assert tally.add_crew_step(crew(20), at=1 * HOUR) == pytest.approx(20.0)
    tally.add_crew_step(crew(15), at=25 * HOUR)
    tally.add_crew_step(crew(20).crew, at=26 * HOUR)
    for _ in range(10):
        tally.add_image(150_000)
    tally.add_telemetry(10_000)
    tally.add_event(100)
    summary = tally.summary(2 * 24 * HOUR)

    assert summary["days"] == pytest.approx(2.0)
    assert summary["power"]["peak_w"] == 10.0  # nothing acted: idle only
    assert summary["power"]["verdict"] == "ok"
    crew_figures = summary["crew"]
    assert crew_figures["total_min"] == pytest.approx(55.0)
    assert crew_figures["per_day_min"] == pytest.approx(27.5)
    assert crew_figures["busiest_day_min"] == pytest.approx(35.0)
    assert crew_figures["verdict"] == "over by 5 min/day"
    downlink = summary["downlink"]
    # 1.5 MB of images + 10,000 rows x 100 B + 100 events x 300 B
    assert downlink["total_mb"] == pytest.approx(2.53)
    assert downlink["per_day_mb"] == pytest.approx(1.265)
    assert downlink["image_mb"] == pytest.approx(1.5)
    assert downlink["over_by"] == pytest.approx(0.265)
    assert downlink["verdict"] == "over by 0.265 MB/day"
    assert summary["ok"] is False

    # a short run counts as one day; no allocations: figures only
    short = ResourceTally()
    short.add_crew(10.0)
    short.note_power(12.5)
    figures = short.summary(2 * HOUR)
    assert figures["crew"]["per_day_min"] == pytest.approx(10.0)
    assert figures["crew"]["verdict"] == "no allocation"
    assert figures["power"]["peak_w"] == 12.5
    assert figures["ok"] is True
    with pytest.raises(ValueError):
        short.summary(float("nan"))
