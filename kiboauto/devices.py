"""What the runtime may ask of hardware: device protocols, one error family, and action statuses.

The engine, protocols and the ground link see hardware only through these types. Drivers (real
bytes on a serial line) and simulators satisfy them; which one is used is chosen by the station
file, never by the code that runs an experiment.

Quantities carry units (:mod:`kiboauto.units`): volumes, rates, temperatures and durations are
``pint`` quantities or strings such as ``"10 uL"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

from kiboauto.units import Quantity

__all__ = [
    "ActionEstimate",
    "ActionIncomplete",
    "ActionMarker",
    "ActionStatus",
    "AlarmLatch",
    "AnyQuantity",
    "Camera",
    "Delivery",
    "DeviceAlarm",
    "DeviceBusy",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceEvent",
    "DeviceInfo",
    "DeviceStateLost",
    "DeviceTimeout",
    "FramingError",
    "Progress",
    "PumpResult",
    "QuantityLike",
    "Reading",
    "ReadingDescription",
    "Severity",
    "SyringePump",
    "ThermalController",
    "Valve",
]

log = logging.getLogger(__name__)

AnyQuantity = Quantity[Any]
"""A pint quantity of any magnitude type (for annotations; use ``Quantity`` for isinstance)."""
QuantityLike = Quantity[Any] | str
"""What a device method takes for a physical value: a pint quantity or text like ``"10 uL"``."""


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class DeviceError(Exception):
    """Anything that went wrong talking to, or inside, a device. ``device`` names which one.

    When the error ends a pump action, ``delivered_ul`` is the volume the device really moved
    (read back from the device after the failure; ``None`` only if it could not be read, in which
    case ``delivered_unknown`` says why) and ``marker`` is the action's marker.
    """

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message
        self.delivered_ul: float | None = None
        self.delivered_unknown: str = ""
        self.marker: ActionMarker | None = None

    def __str__(self) -> str:
        text = super().__str__()
        if self.delivered_ul is not None:
            text += f" [delivered {self.delivered_ul:.6g} uL]"
        elif self.delivered_unknown:
            text += f" [delivered volume unknown: {self.delivered_unknown}]"
        return text


class DeviceTimeout(DeviceError):
    """The device did not answer (completely) within the time budget."""


class DeviceAlarm(DeviceError):
    """The device reports a fault of its own; ``code`` is the device's own alarm/error code."""

    def __init__(self, device: str, code: str, message: str) -> None:
        super().__init__(device, f"alarm {code}: {message}")
        self.code = code
        self.alarm_message = message


class FramingError(DeviceError):
    """Bytes on the line do not form a valid reply (garbled, truncated, oversized, bad checksum)."""

    def __init__(self, device: str, message: str, data: bytes = b"") -> None:
        shown = data[:64].hex(" ") + (" ..." if len(data) > 64 else "")
        super().__init__(device, f"{message}" + (f" [bytes: {shown}]" if data else ""))
        self.data = bytes(data)


class DeviceDisconnected(DeviceError):
    """The line to the device is down (port missing, hung up, closed) and could not be reopened."""


class DeviceBusy(DeviceError):
    """The device refused a command because it is still carrying out a previous one."""


class DeviceStateLost(DeviceError):
    """The device cannot say what happened to an earlier action: it was power-cycled or
    re-initialised since the action's marker was taken, so its counters start afresh."""


class ActionIncomplete(DeviceError):
    """An action ended short of its target: stopped, cancelled, or for no reason the device
    gave. ``delivered_ul`` holds what was really moved."""


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """Who a device says it is: what `kiboauto probe` prints for each device of a station."""

    name: str
    kind: str
    protocol: str
    model: str
    firmware: str
    port: str
    status: str
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Readings and events
# ---------------------------------------------------------------------------------------------
class Severity(IntEnum):
    """How bad a reading or an event is (the idea of an EPICS/Bluesky alarm severity)."""

    OK = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3


@dataclass(frozen=True)
class Reading:
    """One value read from a device, when it was read (``clock.wall()``) and how healthy it is."""

    value: AnyQuantity | str | bool
    timestamp: float
    severity: Severity = Severity.OK
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        value: Any = self.value
        if isinstance(value, Quantity):
            magnitude = float(value.magnitude)
            value = {
                "value": magnitude if math.isfinite(magnitude) else None,
                "unit": str(value.units),
            }
        return {
            "value": value,
            "timestamp": self.timestamp,
            "severity": self.severity.name,
            "message": self.message,
        }


@dataclass(frozen=True)
class ReadingDescription:
    """What a reading means: its unit (``""`` for text and flags), limits and a sentence."""

    unit: str
    limits: tuple[float, float] | None = None
    description: str = ""


@dataclass(frozen=True)
class DeviceEvent:
    """Something a device reported once (an alarm, a reset); kept and published by its driver."""

    device: str
    code: str
    message: str
    severity: Severity
    timestamp: float


class AlarmLatch:
    """Alarms a device reported, kept by its driver whoever polled first.

    A device often reports an alarm in exactly one reply (and clears it by reporting it). The
    driver calls :meth:`latch` from every reply it parses, so the alarm is kept even when a
    telemetry poller, not the action it stopped, read that reply. The action asks
    :meth:`since` for the alarms that arrived while it ran; subscribers get every alarm as an
    event at once. Nothing is dropped until :meth:`acknowledge` (bounded history).
    """

    def __init__(self, device: str, *, history: int = 256) -> None:
        self.device = device
        self._events: deque[tuple[int, DeviceEvent]] = deque(maxlen=history)
        self._count = 0
        self._active: dict[str, DeviceEvent] = {}
        self._subscribers: list[Callable[[DeviceEvent], None]] = []

    @property
    def count(self) -> int:
        """How many alarms were latched so far (a cursor for :meth:`since`)."""
        return self._count

    def latch(
        self, code: str, message: str, timestamp: float, severity: Severity = Severity.MAJOR
    ) -> DeviceEvent:
        event = DeviceEvent(self.device, code, message, severity, timestamp)
        self._count += 1
        self._events.append((self._count, event))
        self._active[code] = event
        log.info("%s: alarm %s latched: %s", self.device, code, message)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not hide the alarm from the action
                log.exception("%s: alarm subscriber failed", self.device)
        return event

    def since(self, cursor: int) -> list[DeviceEvent]:
        """Alarms latched after ``cursor`` (a value of :attr:`count` taken earlier)."""
        return [event for n, event in self._events if n > cursor]

    @property
    def active(self) -> dict[str, DeviceEvent]:
        """Alarms latched and not yet acknowledged, by code."""
        return dict(self._active)

    def acknowledge(self, code: str | None = None) -> None:
        """Forget an active alarm (all of them without ``code``); the history stays."""
        if code is None:
            self._active.clear()
        else:
            self._active.pop(code, None)

    def subscribe(self, callback: Callable[[DeviceEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every alarm from now on; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def severity(self) -> Severity:
        return max((e.severity for e in self._active.values()), default=Severity.OK)


# ---------------------------------------------------------------------------------------------
# Exactly-once pump actions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionMarker:
    """Everything needed to find out later what a pump action really did.

    Taken by :meth:`SyringePump.prepare` before anything moves and stored (journaled, committed)
    before the start is sent. After a crash, a new process gives it to
    :meth:`SyringePump.delivered_since` on a fresh connection. ``baseline`` is the device's own
    counter or position at the start (New Era DIS counters, Cavro plunger steps); ``identity``
    ties the marker to one physical device and ``epoch`` to one power-on/initialisation of it.
    """

    device: str
    identity: str
    kind: str  # "dispense" | "withdraw"
    target_ul: float
    rate_ul_min: float
    baseline: Mapping[str, float | int | str]
    epoch: str
    created: float
    step_ul: float  # the smallest volume the device can tell apart (one motor step or one count)

    def to_json(self) -> str:
        data = asdict(self)
        data["baseline"] = dict(self.baseline)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> ActionMarker:
        data = dict(text) if isinstance(text, Mapping) else json.loads(text)
        try:
            return cls(
                device=str(data["device"]),
                identity=str(data["identity"]),
                kind=str(data["kind"]),
                target_ul=float(data["target_ul"]),
                rate_ul_min=float(data["rate_ul_min"]),
                baseline=dict(data["baseline"]),
                epoch=str(data["epoch"]),
                created=float(data["created"]),
                step_ul=float(data["step_ul"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an action marker: {e}") from e

    def remainder(self, delivered_ul: float) -> float:
        """What is left to move after ``delivered_ul`` (0 within one step of the target)."""
        left = self.target_ul - delivered_ul
        return 0.0 if left <= self.step_ul / 2 else left


@dataclass(frozen=True)
class Delivery:
    """What the device says an action moved so far: the answer to ``delivered_since``."""

    delivered_ul: float
    moving: bool
    marker: ActionMarker

    @property
    def complete(self) -> bool:
        return not self.moving and self.marker.remainder(self.delivered_ul) == 0.0


@dataclass(frozen=True)
class PumpResult:
    """The result of a pump action that reached its target (read back from the device)."""

    delivered_ul: float
    target_ul: float
    marker: ActionMarker

    @property
    def delivered(self) -> AnyQuantity:
        from kiboauto.units import Q_

        return Q_(self.delivered_ul, "uL")


@dataclass(frozen=True)
class ActionEstimate:
    """What an engine plans with: can the action be sent again safely, and how long it takes."""

    repeatable: bool
    duration_s: float


# ---------------------------------------------------------------------------------------------
# Long actions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """A snapshot of a long action: how far it is, in its own units, and what it is doing."""

    fraction: float
    current: float
    target: float
    unit: str
    message: str = ""


class ActionStatus(Awaitable[Any]):
    """A long device action under way: await it for the result, watch it for progress.

    Created by a device for "dispense V at rate R" or "bring to T and hold within ±tol"; the action
    runs as a task owned by the status. ``await status`` returns the result or raises the device
    error; :meth:`cancel` stops the action (the device's coroutine is expected to stop the
    hardware in its ``finally``).
    """

    def __init__(
        self,
        name: str,
        body: Callable[[ActionStatus], Coroutine[Any, Any, Any]],
        *,
        pause: Callable[[], Awaitable[None]] | None = None,
        resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._progress = Progress(0.0, 0.0, 0.0, "", "starting")
        self._watchers: list[Callable[[Progress], None]] = []
        self._pause = pause
        self._resume = resume
        self.paused = False
        self.marker: ActionMarker | None = None
        # A pump action's account once it has ended (success, error, stop or cancel): the volume
        # read back from the device, or None with the reason it could not be read.
        self.delivered_ul: float | None = None
        self.delivered_unknown: str = ""
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            body(self), name=f"action:{name}"
        )

    # pause / resume ---------------------------------------------------------------------------
    @property
    def can_pause(self) -> bool:
        return self._pause is not None and self._resume is not None

    async def pause(self) -> None:
        """Hold the action where it is (the device stops moving; nothing is lost)."""
        if self._pause is None:
            raise DeviceError(self.name, "this action cannot be paused")
        if self.done:
            raise DeviceError(self.name, "the action has already ended")
        if not self.paused:
            await self._pause()
            self.paused = True

    async def resume(self) -> None:
        """Go on with a paused action for exactly the remainder."""
        if self._resume is None:
            raise DeviceError(self.name, "this action cannot be resumed")
        if self.done:
            raise DeviceError(self.name, "the action has already ended")
        if self.paused:
            await self._resume()
            self.paused = False

    # progress ---------------------------------------------------------------------------------
    @property
    def progress(self) -> Progress:
        return self._progress

    def report(self, progress: Progress) -> None:
        """Called by the device while the action runs."""
        self._progress = progress
        for watcher in list(self._watchers):
            watcher(progress)

    def watch(self, callback: Callable[[Progress], None]) -> None:
        """Call ``callback`` with every progress update (and once now)."""
        self._watchers.append(callback)
        callback(self._progress)

    # completion -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def success(self) -> bool:
        return self._task.done() and not self._task.cancelled() and self._task.exception() is None

    def cancel(self) -> None:
        self._task.cancel()

    async def wait(self) -> Any:
        return await self._task

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    async def aclose(self) -> None:
        """Cancel if still running and wait until the action has cleaned up."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


# ---------------------------------------------------------------------------------------------
# Device protocols
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Device(Protocol):
    """Common to every device: a name, connect/close, an identity for `kiboauto probe`, and
    readings (values with units, timestamps and severities) for telemetry."""

    name: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def identify(self) -> DeviceInfo: ...

    async def read(self) -> dict[str, Reading]:
        """Current values, each with a clock timestamp and a severity."""
        ...

    def describe(self) -> dict[str, ReadingDescription]:
        """Units and limits of what :meth:`read` returns."""
        ...


@runtime_checkable
class SyringePump(Device, Protocol):
    """A syringe pump that dispenses and withdraws volumes at a rate, exactly once.

    An action that cannot be repeated goes in three steps: :meth:`prepare` reads the device's
    baseline into an :class:`ActionMarker` (nothing moves), the caller stores the marker, then
    :meth:`start` sends it. After a crash, :meth:`delivered_since` asks the device what the
    action moved, and :meth:`adopt` follows a move found still running. ``dispense`` and
    ``withdraw`` do prepare + start in one call for callers that keep no journal.
    """

    async def set_diameter(self, diameter: QuantityLike) -> None:
        """Syringe inside diameter (length quantity, e.g. ``"4.78 mm"``)."""
        ...

    async def prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        """Check the action is possible and read its baseline; nothing moves."""
        ...

    def start(self, marker: ActionMarker) -> ActionStatus:
        """Send the prepared action; the status's result is a :class:`PumpResult`."""
        ...

    async def delivered_since(self, marker: ActionMarker) -> Delivery:
        """What the device moved since ``marker`` was taken (:class:`DeviceStateLost` if it
        cannot say)."""
        ...

    def adopt(self, marker: ActionMarker) -> ActionStatus:
        """Follow a move of ``marker`` found still running to its end."""
        ...

    def estimate(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionEstimate:
        """Whether the action may be sent again safely, and how long it should take."""
        ...

    def dispense(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        """Push ``volume`` at ``rate``; the status reports dispensed volume as progress."""
        ...

    def withdraw(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        """Draw ``volume`` at ``rate`` into the syringe."""
        ...

    async def stop(self) -> None:
        """Stop pumping now."""
        ...

    async def is_moving(self) -> bool: ...


@runtime_checkable
class ThermalController(Device, Protocol):
    """A controller that holds a temperature (incubator, cold plate)."""

    async def read_temperature(self) -> AnyQuantity:
        """Process value, as a temperature quantity."""
        ...

    async def read_setpoint(self) -> AnyQuantity: ...

    async def set_setpoint(self, temperature: QuantityLike) -> None: ...

    async def run(self, on: bool = True) -> None:
        """Start (``True``) or stop (``False``) the control loop."""
        ...

    def settle(
        self,
        target: QuantityLike,
        tolerance: QuantityLike,
        hold: QuantityLike,
        timeout: QuantityLike,
    ) -> ActionStatus:
        """Set ``target`` and finish once within ±``tolerance`` continuously for ``hold``;
        raise :class:`DeviceTimeout` if that has not happened within ``timeout``."""
        ...


@runtime_checkable
class Valve(Device, Protocol):
    """A distribution valve with numbered ports (1..``port_count``)."""

    @property
    def port_count(self) -> int: ...

    async def select_port(self, port: int) -> None: ...

    async def current_port(self) -> int: ...


@runtime_checkable
class Camera(Device, Protocol):
    """A camera that returns one frame (a numpy array, grey or BGR) per capture."""

    async def capture(self) -> Any: ...


SettleCheck = Callable[[], Awaitable[float]]
