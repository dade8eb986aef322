"""The one clock: real, scaled and virtual time."""

from __future__ import annotations

import asyncio
import time

import pytest

from kiboauto.clock import Clock, ClockMisuse, RealClock, ScaledClock, VirtualClock

DAY = 86_400.0


@pytest.mark.req("KA-CLK-001")
def test_fourteen_day_wait_returns_at_once_under_virtual_clock() -> None:
    clock = VirtualClock()

    async def main() -> float:
        await clock.sleep(14 * DAY)
        return clock.now()

    started = time.perf_counter()
    assert clock.run(main()) == pytest.approx(14 * DAY)
    assert time.perf_counter() - started < 20.0  # no real waiting (a real one takes 14 days)


@pytest.mark.req("KA-CLK-002")
def test_timers_fire_in_time_order_and_identically_every_run() -> None:
    def one_run() -> list[tuple[str, float]]:
        clock = VirtualClock()
        fired: list[tuple[str, float]] = []

        async def waiter(label: str, delay: float) -> None:
            await clock.sleep(delay)
            fired.append((label, clock.now()))

        async def main() -> None:
            delays = {"a": 3600.0, "b": 5.0, "c": 2 * DAY, "d": 5.0, "e": 0.5, "f": 3600.0}
            await asyncio.gather(*(waiter(k, v) for k, v in delays.items()))

        clock.run(main())
        return fired

    first = one_run()
    assert [t for _, t in first] == sorted(t for _, t in first)
    assert first[0] == ("e", 0.5)
    assert first[-1] == ("c", 2 * DAY)
    assert all(one_run() == first for _ in range(5))


@pytest.mark.req("KA-CLK-002")
def test_virtual_time_stands_still_while_tasks_compute() -> None:
    clock = VirtualClock(start=100.0)

    async def main() -> tuple[float, float]:
        before = clock.now()
        for _ in range(1000):
            await asyncio.sleep(0)  # runnable work: no jump
        return before, clock.now()

    before, after = clock.run(main())
    assert before == after == 100.0


@pytest.mark.req("KA-CLK-001")
def test_virtual_timeout_raises_after_the_budget_in_protocol_time() -> None:
    clock = VirtualClock()

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with clock.timeout(30.0):
                await clock.sleep(DAY)
        with pytest.raises(TimeoutError):
            await clock.wait_for(clock.sleep(DAY), 10.0)
        assert await clock.wait_for(asyncio.sleep(1.0, result="ok"), 10.0) == "ok"
        return clock.now()

    assert clock.run(main()) == pytest.approx(41.0)


@pytest.mark.req("KA-CLK-001")
def test_sleep_until_and_wall_time() -> None:
    clock = VirtualClock(start=10.0, wall_origin=1_000.0)

    async def main() -> None:
        await clock.sleep_until(250.0)
        assert clock.now() == 250.0
        await clock.sleep_until(100.0)  # already past: returns at once
        assert clock.now() == 250.0
        assert clock.wall() == 1_250.0

    clock.run(main())


def test_virtual_clock_refuses_a_foreign_loop() -> None:
    clock = VirtualClock()

    async def main() -> None:
        await clock.sleep(1)

    with pytest.raises(ClockMisuse, match=r"clock\.run"):
        asyncio.run(main())


@pytest.mark.req("KA-CLK-003")
async def test_scaled_clock_runs_faster_than_real_time() -> None:
    clock = ScaledClock(600.0)  # ten minutes a second
    t0, w0 = clock.now(), time.perf_counter()
    await clock.sleep(30.0)  # 30 s of protocol time = 50 ms of real time
    real = time.perf_counter() - w0
    assert clock.now() - t0 >= 30.0
    assert real < 10.0  # scaled: 30 s of protocol time took far less than 30 s
    with pytest.raises(TimeoutError):
        async with clock.timeout(6.0):  # 10 ms real
            await clock.sleep(600.0)


def test_scaled_clock_rejects_nonpositive_factor() -> None:
    with pytest.raises(ValueError, match="factor"):
        ScaledClock(0)


async def test_real_clock_satisfies_the_protocol() -> None:
    for clock in (RealClock(), ScaledClock(2), VirtualClock()):
        assert isinstance(clock, Clock)
    real = RealClock()
    a = real.now()
    await real.sleep(0.01)
    assert real.now() - a >= 0.009
    assert abs(real.wall() - time.time()) < 5
