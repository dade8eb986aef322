"""One clock for everything that waits: protocols, drivers' timeouts and simulators' physics.

Three clocks share one small interface:

* :class:`RealClock`: seconds as they pass.
* :class:`ScaledClock`: protocol time runs ``factor`` times faster than the wall
  (``hil serve --speed``).
* :class:`VirtualClock`: time stands still while any task has work to do and jumps straight to the
  next pending timer as soon as every task is waiting, so a 14-day protocol finishes in
  milliseconds, in the same order every time.

Code that waits never calls ``asyncio.sleep`` or ``time.time`` directly for protocol timing; it asks
the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

__all__ = [
    "Clock",
    "ClockMisuse",
    "RealClock",
    "ScaledClock",
    "VirtualClock",
]


class ClockMisuse(RuntimeError):
    """A clock was used outside the event loop it governs."""


@runtime_checkable
class Clock(Protocol):
    """Protocol time: what every wait, timeout and physics model in kiboauto reads."""

    def now(self) -> float:
        """Seconds of protocol time since an arbitrary origin (monotonic)."""
        ...

    def wall(self) -> float:
        """Protocol time as seconds since the Unix epoch, for timestamps in traces and journals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of protocol time."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until :meth:`now` reaches ``deadline``."""
        ...

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Async context manager that raises ``TimeoutError`` after ``seconds`` of protocol time."""
        ...

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        """Await ``aw`` within ``seconds`` of protocol time (``TimeoutError`` when spent)."""
        ...

    def real_io(self, active: bool = True) -> contextlib.AbstractContextManager[None]:
        """Mark a stretch during which real I/O (a port, a socket, a worker thread) is pending.

        Real and scaled clocks need nothing; a :class:`VirtualClock` does not jump while it is
        held, it follows real time instead, so a reply travelling through the kernel is waited for.
        """
        ...


_NOTHING_TO_HOLD: contextlib.nullcontext[None] = contextlib.nullcontext()
"""Real and scaled time cannot jump: holding them is a no-op (one shared, reusable manager)."""


class _LoopClock:
    """Shared behaviour of clocks whose protocol time is an affine map of the loop's time."""

    factor: float = 1.0

    def __init__(self) -> None:
        self._loop_origin: float | None = None
        self._wall_origin = time.time()
        self._now_origin = 0.0

    def _loop_time(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def now(self) -> float:
        t = self._loop_time()
        if self._loop_origin is None:
            self._loop_origin = t
        return self._now_origin + (t - self._loop_origin) * self.factor

    def wall(self) -> float:
        return self._wall_origin + self.now()

    def _to_loop_seconds(self, seconds: float) -> float:
        return max(0.0, seconds) / self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self._to_loop_seconds(seconds))

    async def sleep_until(self, deadline: float) -> None:
        await self.sleep(deadline - self.now())

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float | None) -> AsyncIterator[None]:
        limit = None if seconds is None else self._to_loop_seconds(seconds)
        async with asyncio.timeout(limit):
            yield

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        limit = None if seconds is None else self._to_loop_seconds(seconds)
        return await asyncio.wait_for(aw, limit)

    def real_io(self, active: bool = True) -> contextlib.AbstractContextManager[None]:
        return _NOTHING_TO_HOLD


class RealClock(_LoopClock):
    """Wall-clock time: one protocol second is one real second."""

    def __repr__(self) -> str:
        return "RealClock()"


class ScaledClock(_LoopClock):
    """Protocol time that runs ``factor`` times faster than real time (``factor`` > 0)."""

    def __init__(self, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"ScaledClock factor must be > 0, got {factor!r}")
        super().__init__()
        self.factor = float(factor)

    def __repr__(self) -> str:
        return f"ScaledClock({self.factor:g})"


class _AutojumpSelector(selectors.BaseSelector):
    """Wraps the loop's selector: when the loop would block waiting for a timer, jump instead.

    The loop asks its selector to wait ``timeout`` seconds only when it has nothing ready to run;
    that is exactly the moment every task is waiting. If no file descriptor is ready right now,
    the virtual clock is advanced by ``timeout`` (to the next timer) and the loop goes on at once.
    """

    def __init__(self, inner: selectors.BaseSelector, clock: VirtualClock) -> None:
        self._inner = inner
        self._clock = clock

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:  # pragma: no cover - thin delegation
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:  # pragma: no cover
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:  # pragma: no cover
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled at all: only outside events (another thread, a signal) can wake us.
            return self._inner.select(None)
        if self._clock.real_io_pending:
            # Real I/O in flight: no jump. Wait for it in real time and let virtual time follow.
            started = time.monotonic()
            ready = self._inner.select(timeout)
            self._clock._advance(min(timeout, time.monotonic() - started))
            return ready
        self._clock._advance(timeout)
        return []

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:  # pragma: no cover
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()


class VirtualClock:
    """Deterministic simulated time for tests and fast-forward runs.

    A ``VirtualClock`` owns an event loop whose notion of time is virtual: ``asyncio.sleep``,
    ``asyncio.timeout`` and every library timer on that loop run in virtual time too. Time stands
    still while any task is runnable; when every task is waiting, the clock jumps to the next
    timer. Use :meth:`run` as you would ``asyncio.run``.

    Time never jumps while real I/O is pending: a driver's exchange over a real port or socket
    (:meth:`real_io`) and any work in the loop's executor (a port opened in a worker thread) hold
    the clock, which then follows real time until the I/O is done. Wire devices to drivers
    in-process (memory pipes) to keep a run fully virtual.
    """

    def __init__(self, start: float = 0.0, *, wall_origin: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._wall_origin = wall_origin
        self._loop: asyncio.AbstractEventLoop | None = None
        self._real_io = 0

    @property
    def real_io_pending(self) -> bool:
        """True while real I/O holds the clock (see :meth:`real_io`)."""
        return self._real_io > 0

    @contextlib.contextmanager
    def real_io(self, active: bool = True) -> Iterator[None]:
        """Hold the clock (no jumps; it follows real time) while the block runs."""
        if not active:
            yield
            return
        self._real_io += 1
        try:
            yield
        finally:
            self._real_io -= 1

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:g})"

    # -- time -------------------------------------------------------------------------------
    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_origin + self._now

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    # -- the loop ----------------------------------------------------------------------------
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A fresh event loop that runs in this clock's virtual time."""
        if self._loop is not None and not self._loop.is_closed():
            raise ClockMisuse("this VirtualClock already drives an open event loop")
        selector = _AutojumpSelector(selectors.DefaultSelector(), self)
        loop = asyncio.SelectorEventLoop(selector)
        loop.time = self.now  # type: ignore[method-assign]
        plain_run_in_executor = loop.run_in_executor

        def run_in_executor(executor: Any, func: Callable[..., T], *args: Any) -> Any:
            # Work in a thread is real I/O: hold the clock until it is done.
            future = plain_run_in_executor(executor, func, *args)
            self._real_io += 1

            def release(_: Any) -> None:
                self._real_io -= 1

            future.add_done_callback(release)
            return future

        loop.run_in_executor = run_in_executor  # type: ignore[method-assign,assignment]
        # Timers due within the resolution run together; keep it tiny so order is exact.
        loop._clock_resolution = 1e-9  # type: ignore[attr-defined]
        self._loop = loop
        return loop

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to completion on a new virtual-time loop (like ``asyncio.run``)."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)

    def _check_loop(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise ClockMisuse("VirtualClock waits need a running loop; use clock.run()") from None
        if running is not self._loop:
            raise ClockMisuse(
                "VirtualClock used on a loop it does not govern; start it with clock.run(main())"
            )

    # -- waiting -----------------------------------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        self._check_loop()
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await self.sleep(deadline - self._now)

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float | None) -> AsyncIterator[None]:
        self._check_loop()
        async with asyncio.timeout(None if seconds is None else max(0.0, seconds)):
            yield

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        self._check_loop()
        return await asyncio.wait_for(aw, None if seconds is None else max(0.0, seconds))


def default_clock() -> Clock:
    """The clock to use when none is injected: real time."""
    return RealClock()


ClockFactory = Callable[[], Clock]
