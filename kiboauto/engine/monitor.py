"""The limit monitor: samples devices, checks yellow/red limits, runs the watchdogs.

A :class:`Monitor` reads each monitored device role at the rate its protocol ``monitor:`` entry
sets (one owned task per role, all started at the same instant so the samples of different rates
line up on one grid), checks the readings against their yellow and red limits and evaluates the
protocol's watchdogs over the latest values. It knows nothing of the journal or of the run's
state machine: everything it notices goes to a :class:`MonitorSink`:

* ``on_samples(rows)``: the telemetry of one sample of one role (``device`` is the **role**,
  ``t`` is protocol time);
* ``on_limit(role, reading, level, value, limits)``: a reading entered ``yellow`` or ``red``, or
  came back to ``green`` (reported once, on the way back);
* ``on_watchdog(spec, values)``: a watchdog's condition was true at every sample for at least its
  duration. It fires once, and is re-armed when the condition is seen false again;
* ``on_device_event(role, event)``: an alarm latched by the device's driver (its
  :class:`~kiboauto.devices.AlarmLatch` ``alarms``), whoever's read saw it, while :meth:`run`
  runs;
* ``on_sample_error(role, error)``: a read failed. Failures are counted; the first of a streak is
  reported, the streak ends at the next good read. A failed read never stops the monitor.

Reads are queries: sampling a pump while it dispenses does not disturb the action (each driver
serialises its own line). A read that hangs is bounded by ``read_timeout`` seconds of the
injected clock. A sink callback that raises is logged and the monitor goes on.

Watchdog timing follows the samples: a condition first seen true at a sample at protocol second
``t`` fires at the first sample at or after ``t + duration`` at which it is still true. Names a
condition reads that have no value yet make it not true (no error).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pint

from kiboauto.clock import Clock
from kiboauto.devices import AlarmLatch, Device, DeviceError, DeviceEvent, DeviceTimeout
from kiboauto.journal import TelemetryRow
from kiboauto.protocol.expressions import ExpressionError, Watchdog, parse_watchdog
from kiboauto.protocol.model import Limits, MonitorSpec, WatchdogSpec
from kiboauto.units import Q_, UnitError, as_quantity

__all__ = ["LimitLevel", "Monitor", "MonitorSink"]

log = logging.getLogger(__name__)

LimitLevel = Literal["green", "yellow", "red"]
"""Where a reading stands against its limits."""

DEFAULT_READ_TIMEOUT_S = 30.0
"""How long one device read may take before it counts as failed (protocol seconds)."""

_TIME_EPSILON = 1e-6
"""Seconds of slack when comparing a held duration with a watchdog's (float arithmetic)."""


class MonitorSink(Protocol):
    """Where a :class:`Monitor` reports: telemetry, limit crossings, watchdogs, device alarms
    and read failures (the engine journals them and drives the run's state machine)."""

    def on_samples(self, rows: list[TelemetryRow]) -> None:
        """The readings of one sample of one role (``device`` = role, ``t`` = protocol time)."""
        ...

    async def on_limit(
        self, role: str, reading: str, level: LimitLevel, value: object, limits: Limits
    ) -> None:
        """``role.reading`` entered ``yellow``/``red``, or came back to ``green``."""
        ...

    async def on_watchdog(self, spec: WatchdogSpec, values: dict[str, object]) -> None:
        """``spec``'s condition held for its duration; ``values``: the names it reads, now."""
        ...

    async def on_device_event(self, role: str, event: DeviceEvent) -> None:
        """An alarm the device's driver latched."""
        ...

    async def on_sample_error(self, role: str, error: DeviceError) -> None:
        """The first failed read of a streak (later failures of the streak are only counted)."""
        ...


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
Bound = float | Any  # a plain number (in the reading's own unit) or a pint quantity


@dataclass(frozen=True)
class _Range:
    """One ``[low, high]`` pair of a limit, parsed (either side may be missing)."""

    low: Bound | None
    high: Bound | None

    def outside(self, value: Any) -> bool:
        return (self.low is not None and _less(value, self.low)) or (
            self.high is not None and _less(self.high, value)
        )


def _less(a: Any, b: Any) -> bool:
    """``a < b`` where one side may be a quantity and the other a plain number in its unit."""
    a_q, b_q = isinstance(a, pint.Quantity), isinstance(b, pint.Quantity)
    if a_q and not b_q:
        return bool(float(a.magnitude) < float(b))
    if b_q and not a_q:
        return bool(float(a) < float(b.magnitude))
    return bool(a < b)


def _parse_bound(text: Any, unit: str, where: str) -> Bound | None:
    """A limit bound: ``None``, a number (in ``unit``) or a quantity of ``unit``'s dimension."""
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        number = float(text)
    else:
        s = str(text).strip()
        try:
            number = float(s)
        except ValueError:
            try:
                q: Any = as_quantity(s)
            except UnitError as e:
                raise ValueError(f"{where}: {e}") from None
            magnitude = float(q.magnitude)
            if not math.isfinite(magnitude):
                raise ValueError(f"{where}: {s!r} is not finite") from None
            if unit:
                try:
                    q.to(unit)
                except pint.errors.PintError:
                    raise ValueError(
                        f"{where}: {s!r} is a {q.dimensionality}, but the reading is in {unit}"
                    ) from None
            return q
    if not math.isfinite(number):
        raise ValueError(f"{where}: {text!r} is not finite")
    return Q_(number, unit) if unit else number


def _parse_range(pair: tuple[Any, Any] | None, unit: str, where: str) -> _Range | None:
    if pair is None:
        return None
    low = _parse_bound(pair[0], unit, f"{where} low")
    high = _parse_bound(pair[1], unit, f"{where} high")
    if low is None and high is None:
        return None
    if low is not None and high is not None and _less(high, low):
        raise ValueError(f"{where}: low {pair[0]!r} is above high {pair[1]!r}")
    return _Range(low, high)


@dataclass
class _LimitCheck:
    """The limits of one reading of one role, parsed, and where the reading stands now."""

    reading: str
    limits: Limits
    yellow: _Range | None
    red: _Range | None
    level: LimitLevel = "green"
    complained: bool = False

    def classify(self, value: Any) -> LimitLevel | None:
        """The level of ``value``; ``None`` when it cannot be judged (text, NaN, wrong unit)."""
        if isinstance(value, bool | str):
            return None
        try:
            magnitude = float(value.magnitude if isinstance(value, pint.Quantity) else value)
            if not math.isfinite(magnitude):
                return None
            if self.red is not None and self.red.outside(value):
                return "red"
            if self.yellow is not None and self.yellow.outside(value):
                return "yellow"
        except (pint.errors.PintError, TypeError, ValueError) as e:
            if not self.complained:
                self.complained = True
                log.warning("limits of %s cannot judge %r: %s", self.reading, value, e)
            return None
        return "green"


# ---------------------------------------------------------------------------------------------
# per role and per watchdog state
# ---------------------------------------------------------------------------------------------
@dataclass
class _Role:
    """One device role: how often it is sampled, its limits, its error streak."""

    role: str
    device: Device
    period: float | None
    checks: dict[str, _LimitCheck] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    samples: int = 0
    errors: int = 0
    in_error: bool = False
    overruns: int = 0


@dataclass
class _Dog:
    """One watchdog: its parsed condition, since when it holds, whether it fired."""

    spec: WatchdogSpec
    watchdog: Watchdog
    since: float | None = None
    fired: bool = False
    complaint: str = ""


_Report = Callable[[], Awaitable[None]]


class Monitor:
    """Samples device roles at their monitor rates, checks limits, runs watchdogs and reports
    everything to a :class:`MonitorSink` (see the module text for what is reported when).

    ``devices`` maps role -> device; every role a spec names must be there (others can still be
    sampled with :meth:`sample_now`). ``protocol_time`` gives the run's protocol time for the
    telemetry rows; ``extra_values`` (optional) gives more names for watchdog conditions
    (parameters, ``run.elapsed``). Construction checks limits against each device's
    ``describe()``: unknown readings, bounds of the wrong dimension and low above high raise
    ``ValueError``; a plain number as a bound is in the reading's own unit.
    """

    def __init__(
        self,
        devices: Mapping[str, Device],
        specs: Sequence[MonitorSpec],
        watchdogs: Sequence[WatchdogSpec],
        clock: Clock,
        *,
        protocol_time: Callable[[], float],
        sink: MonitorSink,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        extra_values: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        if not (math.isfinite(read_timeout) and read_timeout > 0):
            raise ValueError(f"read_timeout must be finite and > 0, got {read_timeout!r}")
        self._clock = clock
        self._protocol_time = protocol_time
        self._sink = sink
        self.read_timeout = float(read_timeout)
        self._extra_values = extra_values
        self._roles: dict[str, _Role] = {
            role: _Role(role, device, None) for role, device in devices.items()
        }
        for spec in specs:
            self._add_spec(spec)
        self._dogs = [_Dog(spec, parse_watchdog(spec.when)) for spec in watchdogs]
        self._values: dict[str, object] = {}
        self._last_sample_time: float | None = None
        self._events: deque[tuple[str, DeviceEvent]] = deque()
        self._event_ready = asyncio.Event()
        self._event_lock = asyncio.Lock()
        self._running = False

    def _add_spec(self, spec: MonitorSpec) -> None:
        state = self._roles.get(spec.device)
        if state is None:
            known = ", ".join(sorted(self._roles)) or "none"
            raise ValueError(f"monitor: no device for role {spec.device!r} (roles: {known})")
        period = float(as_quantity(str(spec.every)).to("s").magnitude)
        state.period = period if state.period is None else min(state.period, period)
        try:
            described = state.device.describe()
        except Exception as e:  # a device that cannot describe itself: limits stay unchecked
            log.warning("monitor %s: describe() failed (%r); limits not checked", spec.device, e)
            described = {}
        for reading, limits in spec.limits.items():
            where = f"monitor {spec.device}.{reading}"
            if reading in state.checks:
                raise ValueError(f"{where}: limits given twice")
            if described and reading not in described:
                raise ValueError(
                    f"{where}: the device has no reading {reading!r} "
                    f"(it gives: {', '.join(sorted(described))})"
                )
            unit = described[reading].unit if reading in described else ""
            state.checks[reading] = _LimitCheck(
                reading,
                limits,
                _parse_range(limits.yellow, unit, f"{where} yellow"),
                _parse_range(limits.red, unit, f"{where} red"),
            )

    # -- what the engine reads -------------------------------------------------------------------
    def values(self) -> dict[str, object]:
        """The latest value of every ``role.reading`` sampled so far (quantity, text or flag)."""
        return dict(self._values)

    @property
    def last_sample_time(self) -> float | None:
        """Protocol time of the latest good sample of any role (``None`` before the first)."""
        return self._last_sample_time

    @property
    def levels(self) -> dict[str, LimitLevel]:
        """Where every limited ``role.reading`` stands now."""
        return {
            f"{state.role}.{check.reading}": check.level
            for state in self._roles.values()
            for check in state.checks.values()
        }

    @property
    def error_counts(self) -> dict[str, int]:
        """Failed reads so far, by role."""
        return {role: state.errors for role, state in self._roles.items()}

    @property
    def periods(self) -> dict[str, float]:
        """The sampling period (s) of every monitored role."""
        return {r: s.period for r, s in self._roles.items() if s.period is not None}

    # -- sampling --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sample every monitored role at its rate and deliver device alarms until cancelled.

        One owned task per role (plus one delivering latched alarms), in a task group: cancel
        ``run()`` and every one of them is cancelled and awaited before it returns.
        """
        if self._running:
            raise RuntimeError("this Monitor is already running")
        self._running = True
        unsubscribe: list[Callable[[], None]] = []
        try:
            for role, state in self._roles.items():
                latch = getattr(state.device, "alarms", None)
                if isinstance(latch, AlarmLatch):
                    unsubscribe.append(latch.subscribe(self._latched_callback(role)))
            start = self._clock.now()
            async with asyncio.TaskGroup() as tasks:
                for role, state in self._roles.items():
                    if state.period is not None:
                        tasks.create_task(self._sample_loop(state, start), name=f"monitor:{role}")
                tasks.create_task(self._event_loop(), name="monitor:events")
        finally:
            for undo in unsubscribe:
                undo()
            self._running = False

    async def sample_now(self, role: str | None = None) -> None:
        """Sample ``role`` (any role given at construction), or every monitored role, now;
        returns once the sample is reported."""
        if role is not None:
            if role not in self._roles:
                raise KeyError(f"no device for role {role!r}")
            states = [self._roles[role]]
        else:
            states = [s for s in self._roles.values() if s.period is not None]
        async with asyncio.TaskGroup() as tasks:
            for state in states:
                tasks.create_task(self._sample(state), name=f"monitor:now:{state.role}")
        await self._deliver_events()

    async def _sample_loop(self, state: _Role, start: float) -> None:
        assert state.period is not None
        period = state.period
        tick = 0
        while True:
            await self._clock.sleep_until(start + tick * period)
            await self._sample(state)
            tick += 1
            late = self._clock.now() - (start + tick * period)
            if late > _TIME_EPSILON:  # the read overran the period: skip the ticks it covered
                skipped = math.floor(late / period) + 1
                state.overruns += skipped
                tick += skipped

    async def _sample(self, state: _Role) -> None:
        reports: list[_Report] = []
        async with state.lock:
            error: DeviceError | None = None
            try:
                async with self._clock.timeout(self.read_timeout):
                    readings = await state.device.read()
            except TimeoutError:
                error = DeviceTimeout(
                    state.role, f"read did not answer within {self.read_timeout:g} s"
                )
            except DeviceError as e:
                error = e
            except Exception as e:  # a driver bug must not stop the monitoring
                error = DeviceError(state.role, f"read failed: {e!r}")
                error.__cause__ = e
            if error is not None:
                state.errors += 1
                if not state.in_error:
                    state.in_error = True
                    log.warning("monitor %s: read failed: %s", state.role, error)
                    reports.append(self._report_error(state.role, error))
            else:
                reports.extend(self._took(state, readings))
        for report in reports:
            await report()

    def _took(self, state: _Role, readings: Mapping[str, Any]) -> list[_Report]:
        """Record one good sample; the reports it calls for (limits, then watchdogs)."""
        t = self._protocol_time()
        state.samples += 1
        if state.in_error:
            state.in_error = False
            log.info("monitor %s: reads good again (%d failed so far)", state.role, state.errors)
        self._last_sample_time = t
        rows: list[TelemetryRow] = []
        reports: list[_Report] = []
        for name, reading in readings.items():
            rows.append(TelemetryRow.from_reading(state.role, name, reading)._replace(t=t))
            self._values[f"{state.role}.{name}"] = reading.value
            check = state.checks.get(name)
            if check is None:
                continue
            level = check.classify(reading.value)
            if level is None or level == check.level:
                continue
            check.level = level
            reports.append(self._report_limit(state.role, check, level, reading.value))
        try:
            self._sink.on_samples(rows)
        except Exception:
            log.exception("monitor %s: on_samples failed", state.role)
        reports.extend(self._check_watchdogs())
        return reports

    def _check_watchdogs(self) -> list[_Report]:
        if not self._dogs:
            return []
        env: dict[str, object] = {}
        if self._extra_values is not None:
            try:
                env.update(self._extra_values())
            except Exception:
                log.exception("monitor: extra_values failed")
        env.update(self._values)
        now = self._clock.now()
        reports: list[_Report] = []
        for dog in self._dogs:
            try:
                holds = dog.watchdog.holds(env)
            except ExpressionError as e:
                holds = False
                missing = dog.watchdog.names() - env.keys()
                if not missing and str(e) != dog.complaint:
                    dog.complaint = str(e)
                    log.warning("watchdog %s cannot be evaluated: %s", dog.spec.name, e)
            if not holds:
                dog.since = None
                dog.fired = False  # re-armed
                continue
            if dog.since is None:
                dog.since = now
            if not dog.fired and now - dog.since >= dog.watchdog.seconds - _TIME_EPSILON:
                dog.fired = True
                values = {n: env[n] for n in sorted(dog.watchdog.names()) if n in env}
                log.warning("watchdog %s fired: %s (%s)", dog.spec.name, dog.spec.when, values)
                reports.append(self._report_watchdog(dog.spec, values))
        return reports

    # -- reports ---------------------------------------------------------------------------------
    def _report_error(self, role: str, error: DeviceError) -> _Report:
        async def report() -> None:
            await self._call(self._sink.on_sample_error(role, error), "on_sample_error")

        return report

    def _report_limit(
        self, role: str, check: _LimitCheck, level: LimitLevel, value: object
    ) -> _Report:
        async def report() -> None:
            await self._call(
                self._sink.on_limit(role, check.reading, level, value, check.limits), "on_limit"
            )

        return report

    def _report_watchdog(self, spec: WatchdogSpec, values: dict[str, object]) -> _Report:
        async def report() -> None:
            await self._call(self._sink.on_watchdog(spec, values), "on_watchdog")

        return report

    async def _call(self, aw: Awaitable[None], what: str) -> None:
        try:
            await aw
        except Exception:
            log.exception("monitor: sink %s failed", what)

    # -- device alarms ---------------------------------------------------------------------------
    def _latched_callback(self, role: str) -> Callable[[DeviceEvent], None]:
        def latched(event: DeviceEvent) -> None:
            self._events.append((role, event))
            self._event_ready.set()

        return latched

    async def _event_loop(self) -> None:
        while True:
            await self._event_ready.wait()
            self._event_ready.clear()
            await self._deliver_events()

    async def _deliver_events(self) -> None:
        async with self._event_lock:
            while self._events:
                role, event = self._events.popleft()
                await self._call(self._sink.on_device_event(role, event), "on_device_event")
