"""Property tests of the device layer's promise, against the simulators' ground truth.

Random interleavings of a telemetry poller and a pump action under random line and device faults
(dropped, late, corrupted and garbage replies, a stall or overload alarm mid-action). Whatever
happens, an action that reports success delivered what the simulator says it delivered (to one
motor step), an error that states a delivered volume states the true one, and a query never
returns a wrong value. Runs in virtual time over in-process memory pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiboauto.clock import VirtualClock
from kiboauto.devices import DeviceError, PumpResult
from kiboauto.drivers.transport import SerialTransport
from kiboauto.hil.base import Fault, FaultKind

FAULT_KINDS = ["drop", "delay", "corrupt", "garbage", "alarm"]
faults_strategy = st.lists(
    st.tuples(st.floats(0.0, 15.0), st.sampled_from(FAULT_KINDS)), min_size=0, max_size=5
)


def _fault(kind: str, alarm: str) -> Fault:
    if kind == "alarm":
        return Fault(FaultKind.ALARM, alarm=alarm)
    if kind == "delay":
        return Fault(FaultKind.DELAY, seconds=2.5)  # past the driver's 1 s reply timeout
    if kind == "garbage":
        return Fault(FaultKind.GARBAGE, size=40)
    return Fault(FaultKind(kind))


async def _exercise(
    clock: VirtualClock,
    sim: Any,
    pump: Any,
    action: Any,
    faults: list[tuple[float, str]],
    alarm: str,
    poll_every: float,
    query: Any,
    expected: Any,
    truth_moved: Any,
) -> tuple[bool, float | None, float, list[Any], float]:
    """Run ``action`` with a poller and a fault injector; return what the driver and truth say."""
    wrong: list[Any] = []

    async def poller() -> None:
        while True:
            try:
                value = await query()
                if value != expected:
                    wrong.append(value)
                await pump.read()
            except DeviceError:
                pass
            await clock.sleep(poll_every)

    async def injector() -> None:
        for at, kind in sorted(faults):
            await clock.sleep_until(at)
            sim.inject(_fault(kind, alarm))

    step = [0.0]
    before = truth_moved()
    tasks = [asyncio.get_running_loop().create_task(c) for c in (poller(), injector())]
    ok = False
    delivered: float | None = None
    try:
        # A 10 s action: an hour of virtual time without an answer means it hung.
        result = await clock.wait_for(action(), 3600.0)
        assert isinstance(result, PumpResult)
        ok, delivered = True, result.delivered_ul
        step[0] = result.marker.step_ul
    except DeviceError as e:
        delivered = e.delivered_ul
        if e.marker is not None:
            step[0] = e.marker.step_ul
        if delivered is None:
            assert e.delivered_unknown, f"an action error must say what was delivered: {e!r}"
    moved = truth_moved() - before  # the same virtual instant as the driver's answer
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, DeviceError):
            await task
    return ok, delivered, moved, wrong, step[0]


@pytest.mark.req("KA-DEV-004")
@pytest.mark.req("KA-DEV-005")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults_strategy, poll_every=st.floats(0.25, 5.0), seed=st.integers(0, 10_000))
def test_new_era_results_match_truth_under_random_faults(
    faults: list[tuple[float, str]], poll_every: float, seed: int
) -> None:
    from kiboauto.drivers.newera import NewEraPump
    from kiboauto.hil.newera_sim import NewEraSim

    clock = VirtualClock()

    async def main() -> tuple[bool, float | None, float, list[Any], float]:
        sim = NewEraSim("pump1", clock, seed=seed, diameter_mm=4.78)
        transport = SerialTransport("pump1", sim.memory_connector(), port="mem:ne", clock=clock)
        pump = NewEraPump("pump1", transport, clock=clock, diameter_mm=4.78)
        try:
            await pump.connect()

            async def diameter() -> float:
                return round(float((await pump.diameter()).m_as("mm")), 3)

            return await _exercise(
                clock,
                sim,
                pump,
                lambda: pump.dispense("10 uL", "60 uL/min"),  # 10 s
                faults,
                "S",
                poll_every,
                diameter,
                4.78,
                lambda: float(sim.truth()["infused_ul"]),
            )
        finally:
            await pump.close()
            await sim.aclose()

    ok, delivered, moved, wrong, step = clock.run(main())
    if step == 0.0:  # failed before a marker was taken: nothing may have moved
        assert not ok and moved == 0.0 and delivered in (None, 0.0)
        return
    # The pump's counter shows 4 digits: the marker's step is what it can tell apart.
    assert step <= 0.01
    assert not wrong, f"a query returned a wrong value: {wrong}"
    if ok:
        assert delivered == pytest.approx(moved, abs=step)
        assert delivered == pytest.approx(10.0, abs=step)
    elif delivered is not None:
        assert delivered == pytest.approx(moved, abs=step)


@pytest.mark.req("KA-DEV-004")
@pytest.mark.req("KA-DEV-005")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults_strategy, poll_every=st.floats(0.25, 5.0), seed=st.integers(0, 10_000))
def test_cavro_results_match_truth_under_random_faults(
    faults: list[tuple[float, str]], poll_every: float, seed: int
) -> None:
    from kiboauto.drivers.cavro import CavroPump
    from kiboauto.hil.cavro_sim import CavroSim

    clock = VirtualClock()

    async def main() -> tuple[bool, float | None, float, list[Any], float]:
        sim = CavroSim("valve1", clock, seed=seed)
        transport = SerialTransport("valve1", sim.memory_connector(), port="mem:cv", clock=clock)
        pump = CavroPump("valve1", transport, clock=clock)
        try:
            await pump.connect()
            await pump.initialize()
            await pump.select_port(pump.input_port)
            await pump.move_to(pump.steps_per_stroke)
            await pump.select_port(pump.output_port)

            return await _exercise(
                clock,
                sim,
                pump,
                lambda: pump.dispense("100 uL", "600 uL/min"),  # 10 s
                faults,
                "9",
                poll_every,
                pump.current_port,
                pump.output_port,
                lambda: float(sim.truth()["dispensed_ul"]),
            )
        finally:
            await pump.close()
            await sim.aclose()

    ok, delivered, moved, wrong, step = clock.run(main())
    if step == 0.0:  # failed before a marker was taken: nothing may have moved
        assert not ok and moved == 0.0 and delivered in (None, 0.0)
        return
    assert step == pytest.approx(250.0 / 3000)
    assert not wrong, f"a query returned a wrong value: {wrong}"
    if ok:
        assert delivered == pytest.approx(moved, abs=step)
        assert delivered == pytest.approx(100.0, abs=step)
    elif delivered is not None:
        assert delivered == pytest.approx(moved, abs=step)
