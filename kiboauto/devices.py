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
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ActionStatus",
    "Camera",
    "DeviceAlarm",
    "DeviceBusy",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceInfo",
    "DeviceTimeout",
    "FramingError",
    "Progress",
    "SyringePump",
    "ThermalController",
    "Valve",
]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class DeviceError(Exception):
    """Anything that went wrong talking to, or inside, a device. ``device`` names which one."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


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

    def __init__(self, name: str, body: Callable[[ActionStatus], Coroutine[Any, Any, Any]]) -> None:
        self.name = name
        self._progress = Progress(0.0, 0.0, 0.0, "", "starting")
        self._watchers: list[Callable[[Progress], None]] = []
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            body(self), name=f"action:{name}"
        )

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
    """Common to every device: a name, connect/close and an identity for `kiboauto probe`."""

    name: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def identify(self) -> DeviceInfo: ...


@runtime_checkable
class SyringePump(Device, Protocol):
    """A syringe pump that dispenses and withdraws volumes at a rate."""

    async def set_diameter(self, diameter: Any) -> None:
        """Syringe inside diameter (length quantity, e.g. ``"4.78 mm"``)."""
        ...

    def dispense(self, volume: Any, rate: Any) -> ActionStatus:
        """Push ``volume`` at ``rate``; the status reports dispensed volume as progress."""
        ...

    def withdraw(self, volume: Any, rate: Any) -> ActionStatus:
        """Draw ``volume`` at ``rate`` into the syringe."""
        ...

    async def stop(self) -> None:
        """Stop pumping now."""
        ...

    async def is_moving(self) -> bool: ...


@runtime_checkable
class ThermalController(Device, Protocol):
    """A controller that holds a temperature (incubator, cold plate)."""

    async def read_temperature(self) -> Any:
        """Process value, as a temperature quantity."""
        ...

    async def read_setpoint(self) -> Any: ...

    async def set_setpoint(self, temperature: Any) -> None: ...

    async def run(self, on: bool = True) -> None:
        """Start (``True``) or stop (``False``) the control loop."""
        ...

    def settle(self, target: Any, tolerance: Any, hold: Any, timeout: Any) -> ActionStatus:
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
