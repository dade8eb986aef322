"""Station resources a run uses: electrical power (budgeted live), crew time and downlink.

* :class:`PowerBudget` counts every device at its idle draw and a device at its active draw while
  an action on it runs (``async with budget.active("pump1", what="dispense")``). When one more
  active device would take the total over the station's power allocation, the action waits, on
  an :class:`asyncio.Condition`, until others have ended: the engine sequences actions instead of
  exceeding the allocation. Requests are served first come, first served. A device that could
  not be active even with every other device idle is refused when the budget is built.
* :class:`ResourceTally` adds up crew minutes, the data a run sends down (images, telemetry rows,
  events) and the peak power, and :meth:`ResourceTally.summary` gives the figures a payload
  engineer requests, each compared with the station's allocation.

The allocations come from the station file (``allocations:``, :class:`kiboauto.station.Allocations`)
and the draws from each station device's ``power_w``; this module only reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kiboauto.protocol.model import CrewArgs, CrewStep
from kiboauto.units import as_quantity

if TYPE_CHECKING:
    from kiboauto.station import Allocations, StationFile

__all__ = [
    "BYTES_PER_EVENT",
    "BYTES_PER_TELEMETRY_ROW",
    "PowerBudget",
    "PowerBudgetError",
    "PowerWait",
    "ResourceTally",
]

BYTES_PER_TELEMETRY_ROW = 100.0
"""Downlink estimate of one telemetry row (a JSON object: role, name, value, unit, severity, t)."""
BYTES_PER_EVENT = 300.0
"""Downlink estimate of one journaled event (code, severity, message, times)."""
BYTES_PER_MB = 1_000_000.0
SECONDS_PER_DAY = 86_400.0
_WATT_SLACK = 1e-9


class PowerBudgetError(ValueError):
    """The power figures make the budget impossible: a device cannot ever be active within the
    allocation, or a figure is negative or not finite."""


class _Draw(Protocol):
    """Anything with ``idle`` and ``active`` watts (a station device's ``power_w``)."""

    @property
    def idle(self) -> float: ...

    @property
    def active(self) -> float: ...


DrawLike = _Draw | tuple[float, float] | None


@dataclass(frozen=True)
class PowerWait:
    """An action that had to wait for power: which role, what, and for how long (protocol s)."""

    role: str
    what: str
    since: float
    waited_s: float


class _Ticket:
    """One request for power, queued first come, first served."""

    __slots__ = ("role", "what")

    def __init__(self, role: str, what: str) -> None:
        self.role = role
        self.what = what


def _watts(value: Any, what: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise PowerBudgetError(f"{what}: {value!r} is not a number of watts") from None
    if not math.isfinite(w) or w < 0:
        raise PowerBudgetError(f"{what}: {value!r} W must be finite and >= 0")
    return w


class PowerBudget:
    """Live power accounting of a station: idle draw of every device plus the active share of
    the devices acting now, kept within the allocation by making actions wait their turn.

    ``draws`` maps role -> ``(idle W, active W)`` (or an object with ``idle``/``active``, such as
    a station device's ``power_w``); ``None`` means the figure is unknown: the role counts 0 W
    and is listed in :attr:`unknown`, as is a role :meth:`active` is asked for that ``draws``
    does not name. ``allocation_w`` ``None`` means no limit (the budget still tracks the peak and
    the timeline). ``protocol_time`` stamps the :attr:`timeline`.
    """

    def __init__(
        self,
        draws: Mapping[str, DrawLike],
        allocation_w: float | None = None,
        *,
        protocol_time: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._protocol_time = protocol_time
        self.allocation_w = None if allocation_w is None else _watts(allocation_w, "allocation")
        self._idle: dict[str, float] = {}
        self._active: dict[str, float] = {}
        unknown: list[str] = []
        for role, draw in draws.items():
            if draw is None:
                unknown.append(role)
                self._idle[role] = self._active[role] = 0.0
                continue
            idle, active = draw if isinstance(draw, tuple) else (draw.idle, draw.active)
            self._idle[role] = _watts(idle, f"{role} idle")
            self._active[role] = _watts(active, f"{role} active")
        self._unknown = unknown
        self.idle_w = sum(self._idle.values())
        self._check_feasible()
        self._count: dict[str, int] = {}
        self._doing: dict[str, str] = {}
        self._queue: deque[_Ticket] = deque()
        self._cond = asyncio.Condition()
        self._current = self.idle_w
        self.peak_w = self.idle_w
        self.timeline: list[tuple[float, float]] = [(self._protocol_time(), self.idle_w)]
        self.waits: list[PowerWait] = []

    @classmethod
    def from_station(
        cls,
        station: StationFile,
        *,
        roles: Mapping[str, str] | None = None,
        allocation_w: float | None = None,
        protocol_time: Callable[[], float] = lambda: 0.0,
    ) -> PowerBudget:
        """A budget for ``station``'s devices (``roles``: role -> station device name; default
        every device under its own name) and its ``allocations.power_w`` (unless
        ``allocation_w`` is given)."""
        names = roles if roles is not None else {name: name for name in station.devices}
        draws: dict[str, DrawLike] = {}
        for role, device in names.items():
            spec = station.devices.get(device)
            draws[role] = None if spec is None else spec.power_w
        if allocation_w is None and station.allocations is not None:
            allocation_w = station.allocations.power_w
        return cls(draws, allocation_w, protocol_time=protocol_time)

    def _check_feasible(self) -> None:
        limit = self.allocation_w
        if limit is None:
            return
        if self.idle_w > limit + _WATT_SLACK:
            raise PowerBudgetError(
                f"the devices draw {self.idle_w:g} W idle, over the {limit:g} W allocation"
            )
        for role, active in self._active.items():
            total = self.idle_w - self._idle[role] + active
            if total > limit + _WATT_SLACK:
                raise PowerBudgetError(
                    f"{role} draws {active:g} W active; with every other device idle "
                    f"({self.idle_w - self._idle[role]:g} W) that is {total:g} W, over the "
                    f"{limit:g} W allocation: {role} could never act"
                )

    # -- state -----------------------------------------------------------------------------------
    @property
    def current_w(self) -> float:
        """Watts drawn now (idle of every device, active of the devices acting)."""
        return self._current

    @property
    def unknown(self) -> list[str]:
        """Roles whose draw is not known (counted 0 W)."""
        return list(self._unknown)

    @property
    def acting(self) -> dict[str, str]:
        """Roles active now, with what they do."""
        return dict(self._doing)

    @property
    def waiting(self) -> list[str]:
        """Roles waiting for power, in the order they will go."""
        return [t.role for t in self._queue]

    def draw(self, role: str) -> tuple[float, float]:
        """``(idle W, active W)`` of ``role`` (0, 0 when unknown)."""
        return self._idle.get(role, 0.0), self._active.get(role, 0.0)

    def _total(self) -> float:
        return sum(
            self._active[r] if self._count.get(r, 0) > 0 else self._idle[r] for r in self._idle
        )

    def _fits(self, role: str) -> bool:
        if self.allocation_w is None or self._count.get(role, 0) > 0:
            return True
        after = self._current - self._idle[role] + self._active[role]
        return after <= self.allocation_w + _WATT_SLACK

    def _record(self) -> None:
        self._current = self._total()
        self.peak_w = max(self.peak_w, self._current)
        self.timeline.append((self._protocol_time(), self._current))

    # -- acting ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def active(self, role: str, what: str = "action") -> AsyncIterator[None]:
        """Count ``role`` at its active draw while the block runs; first wait (first come, first
        served) until that fits in the allocation. A role already active does not wait."""
        if role not in self._idle:
            self._unknown.append(role)
            self._idle[role] = self._active[role] = 0.0
        await self._enter(role, what)
        try:
            yield
        finally:
            await self._leave(role)

    async def _enter(self, role: str, what: str) -> None:
        ticket = _Ticket(role, what)
        asked = self._protocol_time()
        async with self._cond:
            if self._count.get(role, 0) == 0:
                self._queue.append(ticket)
                try:
                    await self._cond.wait_for(lambda: self._queue[0] is ticket and self._fits(role))
                except BaseException:
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    raise
                self._queue.popleft()
            self._count[role] = self._count.get(role, 0) + 1
            self._doing[role] = what
            self._record()
            waited = self._protocol_time() - asked
            if waited > 0:
                self.waits.append(PowerWait(role, what, asked, waited))
            self._cond.notify_all()  # the next in the queue may fit as well

    async def _leave(self, role: str) -> None:
        self._count[role] -= 1
        if self._count[role] == 0:
            del self._count[role]
            self._doing.pop(role, None)
        self._record()
        # Hand the freed power over even if this task is being cancelled meanwhile.
        cancelled = False
        while True:
            try:
                async with self._cond:
                    self._cond.notify_all()
                break
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


# ---------------------------------------------------------------------------------------------
# tally
# ---------------------------------------------------------------------------------------------
def _verdict(value: float, allowed: float | None, unit: str) -> dict[str, Any]:
    if allowed is None:
        return {"allocation": None, "over_by": None, "verdict": "no allocation"}
    over = value - allowed
    if over > 1e-9:
        return {"allocation": allowed, "over_by": over, "verdict": f"over by {over:.4g} {unit}"}
    return {"allocation": allowed, "over_by": 0.0, "verdict": "ok"}


class ResourceTally:
    """What a run (or its dry run) uses of the station: crew minutes, downlink bytes and peak
    power, summed up and compared with the station's allocations for the payload engineer."""

    def __init__(
        self,
        allocations: Allocations | None = None,
        *,
        budget: PowerBudget | None = None,
        bytes_per_row: float = BYTES_PER_TELEMETRY_ROW,
        bytes_per_event: float = BYTES_PER_EVENT,
    ) -> None:
        if not (math.isfinite(bytes_per_row) and bytes_per_row >= 0):
            raise ValueError(f"bytes_per_row must be finite and >= 0, got {bytes_per_row!r}")
        if not (math.isfinite(bytes_per_event) and bytes_per_event >= 0):
            raise ValueError(f"bytes_per_event must be finite and >= 0, got {bytes_per_event!r}")
        self.allocations = allocations
        self.budget = budget
        self.bytes_per_row = float(bytes_per_row)
        self.bytes_per_event = float(bytes_per_event)
        self.crew_min = 0.0
        self._crew_by_day: dict[int, float] = {}
        self.images = 0
        self.image_bytes = 0
        self.telemetry_rows = 0
        self.events = 0
        self._peak_w = 0.0

    # -- adding ----------------------------------------------------------------------------------
    def add_crew(self, minutes: float, *, at: float | None = None) -> None:
        """Crew time of one procedure; ``at`` (protocol seconds) puts it on its day."""
        if not (math.isfinite(minutes) and minutes >= 0):
            raise ValueError(f"crew minutes must be finite and >= 0, got {minutes!r}")
        self.crew_min += minutes
        if at is not None:
            day = int(max(0.0, at) // SECONDS_PER_DAY)
            self._crew_by_day[day] = self._crew_by_day.get(day, 0.0) + minutes

    def add_crew_step(self, step: CrewStep | CrewArgs, *, at: float | None = None) -> float:
        """Add a crew step's ``expected`` time; returns it in minutes."""
        args = step.crew if isinstance(step, CrewStep) else step
        minutes = float(as_quantity(str(args.expected)).to("min").magnitude)
        self.add_crew(minutes, at=at)
        return minutes

    def add_image(self, nbytes: int) -> None:
        """An image saved (and to be sent down) of ``nbytes`` bytes."""
        if nbytes < 0:
            raise ValueError(f"image size must be >= 0 bytes, got {nbytes!r}")
        self.images += 1
        self.image_bytes += int(nbytes)

    def add_telemetry(self, rows: int = 1) -> None:
        """Telemetry rows journaled (and sent down)."""
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows!r}")
        self.telemetry_rows += int(rows)

    def add_event(self, count: int = 1) -> None:
        """Events journaled (and sent down)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        self.events += int(count)

    def note_power(self, watts: float) -> None:
        """A power figure seen (the peak is the largest of these and the budget's peak)."""
        if math.isfinite(watts):
            self._peak_w = max(self._peak_w, float(watts))

    # -- figures ---------------------------------------------------------------------------------
    @property
    def peak_w(self) -> float:
        """The highest power drawn, W."""
        budget = self.budget.peak_w if self.budget is not None else 0.0
        return max(self._peak_w, budget)

    @property
    def downlink_bytes(self) -> float:
        """Bytes to send down: images, plus the estimates per telemetry row and per event."""
        return (
            self.image_bytes
            + self.telemetry_rows * self.bytes_per_row
            + self.events * self.bytes_per_event
        )

    def summary(self, duration_s: float) -> dict[str, Any]:
        """The figures to request from the station for a run of ``duration_s`` seconds.

        Per-day figures divide by the run's length in days, counting a run shorter than a day as
        one day; crew time on the busiest day (from the ``at`` times given) is compared with the
        allocation too. Each section has ``allocation``, ``over_by`` and ``verdict`` (``"ok"``,
        ``"over by X unit"`` or ``"no allocation"``); ``ok`` is false when any figure is over.
        """
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration must be finite and >= 0 s, got {duration_s!r}")
        alloc = self.allocations
        days = duration_s / SECONDS_PER_DAY
        span = max(days, 1.0)
        crew_per_day = self.crew_min / span
        busiest = max(self._crew_by_day.values(), default=None)
        crew_day = max(crew_per_day, busiest or 0.0)
        mb = self.downlink_bytes / BYTES_PER_MB
        mb_per_day = mb / span
        power: dict[str, Any] = {
            "peak_w": self.peak_w,
            "unknown_devices": self.budget.unknown if self.budget is not None else [],
            **_verdict(self.peak_w, alloc.power_w if alloc else None, "W"),
        }
        crew: dict[str, Any] = {
            "total_min": self.crew_min,
            "per_day_min": crew_per_day,
            "busiest_day_min": busiest,
            **_verdict(crew_day, alloc.crew_min_per_day if alloc else None, "min/day"),
        }
        downlink: dict[str, Any] = {
            "total_mb": mb,
            "per_day_mb": mb_per_day,
            "images": self.images,
            "image_mb": self.image_bytes / BYTES_PER_MB,
            "telemetry_rows": self.telemetry_rows,
            "events": self.events,
            **_verdict(mb_per_day, alloc.downlink_mb_per_day if alloc else None, "MB/day"),
        }
        over = any(section["over_by"] for section in (power, crew, downlink))
        return {
            "duration_s": duration_s,
            "days": days,
            "power": power,
            "crew": crew,
            "downlink": downlink,
            "ok": not over,
        }
