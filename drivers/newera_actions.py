"""Exactly-once dispense/withdraw actions of a New Era pump: markers, run, adopt, pause, resume.

:class:`NewEraActions` is the part of :class:`~kiboauto.drivers.newera.NewEraPump` that moves
liquid. :meth:`~NewEraActions.prepare` reads the pump's own volume counters (``DIS``) into an
:class:`~kiboauto.devices.ActionMarker`; everything said later about the action (progress,
results, errors, :meth:`~NewEraActions.delivered_since` after a crash) is the difference of those
counters read back from the pump. ``RUN`` and ``STP`` are never repeated: after a lost reply the
pump is asked what it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from kiboauto.devices import (
    ActionEstimate,
    ActionIncomplete,
    ActionMarker,
    ActionStatus,
    AlarmLatch,
    Delivery,
    DeviceAlarm,
    DeviceBusy,
    DeviceError,
    DeviceStateLost,
    Progress,
    PumpResult,
    QuantityLike,
)
from kiboauto.units import UnitError, magnitude_in

from .newera_commands import LINE_ERRORS, is_idempotent, rate_text, rate_value, volume_text
from .newera_counters import Counters, needs_clear
from .newera_wire import ALARMS, VOLUME_UNITS, Reply, display_resolution

if TYPE_CHECKING:
    import re

    from kiboauto.clock import Clock

    from .transport import SerialTransport

__all__ = ["NewEraAction", "NewEraActions"]

log = logging.getLogger("kiboauto.drivers.newera")

#: kept for old imports: the pump's actions are plain :class:`~kiboauto.devices.ActionStatus`
NewEraAction = ActionStatus

_KINDS: Final = {"dispense": "INF", "withdraw": "WDR"}


class NewEraActions:
    """The dispense/withdraw actions of :class:`~kiboauto.drivers.newera.NewEraPump`.

    A mixin: the driver core (the line, commands, queries) provides the attributes and methods
    declared below; this class adds the exactly-once actions on top of them.
    """

    name: str
    address: int
    transport: SerialTransport
    clock: Clock
    alarms: AlarmLatch
    reset_seen_at: float | None
    firmware_version: str | None
    poll_interval: float
    max_poll_interval: float
    poll_failures: int
    _action: ActionStatus | None
    _stop_requested: bool
    _paused: bool
    _hold: asyncio.Event | None
    _started: bool

    if TYPE_CHECKING:

        async def _send(
            self,
            command: str,
            *,
            retries: int | None = None,
            expect: re.Pattern[str] | None = None,
            framing: str | None = None,
            safe: bool | None = None,
            timeout: float | None = None,
        ) -> Reply: ...

        async def _send_through_alarm(
            self,
            command: str,
            *,
            retries: int | None = None,
            framing: str | None = None,
            safe: bool | None = None,
        ) -> Reply: ...

        def _check(self, reply: Reply, command: str) -> Reply: ...

        async def command(
            self,
            command: str,
            *,
            retries: int | None = None,
            expect: re.Pattern[str] | None = None,
        ) -> Reply: ...

        async def firmware(self) -> str: ...

        async def counters(self) -> Counters: ...

        async def stop(self) -> None: ...

    # -- planning --------------------------------------------------------------------------------
    def estimate(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionEstimate:
        """A move is never repeatable; it lasts volume / rate."""
        self._direction_of(kind)
        ul = magnitude_in(volume, "uL")
        ul_min = magnitude_in(rate, "uL/min")
        if ul <= 0 or ul_min <= 0:
            raise UnitError(f"volume and rate must be positive, got {volume!r} at {rate!r}")
        return ActionEstimate(repeatable=False, duration_s=ul / ul_min * 60.0)

    @staticmethod
    def _direction_of(kind: str) -> str:
        try:
            return _KINDS[kind]
        except KeyError:
            raise ValueError(f"kind must be 'dispense' or 'withdraw', got {kind!r}") from None

    def _busy_check(self) -> None:
        if self._action is not None and not self._action.done:
            raise DeviceBusy(self.name, f"{self._action.name} is still running")

    async def _identity(self) -> str:
        if self.firmware_version is None:
            await self.firmware()
        return f"{self.firmware_version}@{self.address}"

    async def _check_identity(self, marker: ActionMarker) -> None:
        """:class:`DeviceError` unless this is the pump (firmware and address) of ``marker``."""
        identity = await self._identity()
        if identity != marker.identity:
            raise DeviceError(self.name, f"marker is for {marker.identity}, pump is {identity}")

    def _epoch(self) -> str:
        seen = "none" if self.reset_seen_at is None else f"{self.reset_seen_at:.3f}"
        return f"reset-seen:{seen}"

    # -- markers ---------------------------------------------------------------------------------
    async def prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        """Program the pump for the action and read its baseline; nothing moves.

        Sends (all absolute, idempotent settings) ``DIR INF``/``DIR WDR``, ``RAT``, ``VOL UL``/
        ``VOL ML`` and ``VOL``, then reads ``DIS``. When the counter of this direction could not
        hold the action's volume (it saturates at 9999 of its unit) or its last digit would be
        coarser than a thousandth of the volume, it is cleared first (``CLD INF``/``CLD WDR``)
        and read again, so the marker's baseline is exact. A paused program is stopped (``STP``,
        nothing moves); a moving pump is :class:`DeviceBusy` (and left alone).
        """
        self._busy_check()
        return await self._prepare(kind, volume, rate)

    async def _prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        direction = self._direction_of(kind)
        target_ul = magnitude_in(volume, "uL")
        rate_ul_min = magnitude_in(rate, "uL/min")
        if target_ul <= 0 or rate_ul_min <= 0:
            raise UnitError(f"volume and rate must be positive, got {volume!r} at {rate!r}")
        identity = await self._identity()
        await self._end_paused_program(await self._send_through_alarm(""))
        vol_text, vol_unit = volume_text(target_ul)
        programmed_ul = float(vol_text) * VOLUME_UNITS[vol_unit]
        rate_txt = rate_text(rate_ul_min)
        await self._program(direction, rate_txt, vol_text, vol_unit)
        c = await self.counters()
        size = VOLUME_UNITS[vol_unit]
        if needs_clear(c.counter_ul(kind), programmed_ul, size):
            log.info(
                "%s: clearing the %s counter (%s %s) before a %g uL %s",
                self.name,
                direction,
                c.counter_text(kind),
                c.unit,
                programmed_ul,
                kind,
            )
            await self.command(f"CLD{direction}")
            c = await self.counters()
        end = (c.counter_ul(kind) + programmed_ul) / size
        step_ul = max(c.resolution_ul, display_resolution(end) * size)
        marker = ActionMarker(
            device=self.name,
            identity=identity,
            kind=kind,
            target_ul=programmed_ul,
            rate_ul_min=rate_value(rate_txt),
            baseline={
                "infused_ul": c.infused_ul,
                "withdrawn_ul": c.withdrawn_ul,
                "infused": c.infused_text,
                "withdrawn": c.withdrawn_text,
                "unit": c.unit,
                "direction": direction,
                "rate": rate_txt,
                "volume": vol_text,
                "volume_unit": vol_unit,
            },
            epoch=self._epoch(),
            created=self.clock.wall(),
            step_ul=step_ul,
        )
        log.info("%s: prepared %s", self.name, marker.to_json())
        return marker

    async def _end_paused_program(self, first: Reply) -> None:
        """Given the pump's status: a moving pump is :class:`DeviceBusy` (left alone); a paused
        program would resume, not start afresh, so it is ended (``STP``, nothing moves)."""
        if first.moving:
            raise DeviceBusy(self.name, f"pump is already {first.status_text}")
        if first.status == "P":
            await self.command("STP")

    async def _program(self, direction: str, rate_txt: str, vol_text: str, vol_unit: str) -> None:
        for command in (f"DIR{direction}", f"RAT{rate_txt}", f"VOL{vol_unit}", f"VOL{vol_text}"):
            assert is_idempotent(command), command
            await self.command(command)

    def _check_marker_device(self, marker: ActionMarker) -> None:
        if marker.device != self.name:
            raise DeviceError(self.name, f"marker belongs to {marker.device!r}")
        self._direction_of(marker.kind)

    def _refuse_if_reset(self, marker: ActionMarker) -> None:
        if self.reset_seen_at is not None and self.reset_seen_at > marker.created:
            e = DeviceStateLost(
                self.name,
                "the pump reported a power-up reset (alarm R) after the marker was taken; "
                "its volume counters started afresh",
            )
            e.delivered_unknown = "the pump was reset"
            e.marker = marker
            raise e

    def _delivered(self, marker: ActionMarker, c: Counters) -> float:
        """What the action of ``marker`` moved, from a ``DIS`` reading."""
        b = marker.baseline
        try:
            base_in = float(b["infused_ul"])
            base_wd = float(b["withdrawn_ul"])
        except (KeyError, TypeError, ValueError):
            raise DeviceError(self.name, "marker has no New Era counter baseline") from None
        tolerance = max(marker.step_ul, c.resolution_ul)
        if c.infused_ul < base_in - tolerance or c.withdrawn_ul < base_wd - tolerance:
            raise DeviceStateLost(
                self.name,
                f"counters I{c.infused_text} W{c.withdrawn_text} {c.unit} are below the "
                f"marker's baseline ({base_in:g} / {base_wd:g} uL): cleared or reset since",
            )
        if c.saturated(marker.kind):
            raise DeviceError(self.name, f"the {marker.kind} counter is saturated at 9999 {c.unit}")
        base = base_in if marker.kind == "dispense" else base_wd
        return max(0.0, c.counter_ul(marker.kind) - base)

    async def delivered_since(self, marker: ActionMarker) -> Delivery:
        """What the pump moved for ``marker``, from its ``DIS`` counters; works from a new driver
        object after a crash. :class:`DeviceStateLost` when the pump reported a power-up reset
        after the marker was taken, or its counters are below the baseline (cleared)."""
        return (await self._delivery(marker))[0]

    async def _delivery(self, marker: ActionMarker) -> tuple[Delivery, Counters]:
        self._check_marker_device(marker)
        await self._check_identity(marker)
        reply = await self._send_through_alarm("DIS")
        self._refuse_if_reset(marker)
        c = Counters.from_reply(reply)
        delivered = self._delivered(marker, c)
        return Delivery(delivered, c.moving, marker), c

    # -- starting and following ------------------------------------------------------------------
    def start(self, marker: ActionMarker) -> ActionStatus:
        """Send a prepared action (``RUN``, never repeated); the result is a PumpResult."""
        return self._marker_action(marker, f"{self.name}:{marker.kind}", self._run_marker)

    def dispense(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._move("dispense", volume, rate)

    def withdraw(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._move("withdraw", volume, rate)

    def _move(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        self._busy_check()
        self.estimate(kind, volume, rate)  # checks kind, units and signs before anything is sent

        async def body(status: ActionStatus) -> PumpResult:
            try:
                marker = await self._prepare(kind, volume, rate)
            except DeviceError as e:
                e.delivered_ul = 0.0  # nothing was started
                self._record(status, 0.0, "")
                raise
            status.marker = marker
            return await self._guard(status, marker, self._run_marker(status, marker))

        return self._new_action(f"{self.name}:{kind}", body)

    def adopt(self, marker: ActionMarker) -> ActionStatus:
        """Follow an action of ``marker`` (found running, paused or ended) to its end.

        Nothing is started: a paused program stays paused until ``resume()`` of the returned
        status. Alarms the pump reported after the marker was taken count for the action.
        """
        return self._marker_action(marker, f"{self.name}:adopt-{marker.kind}", self._adopt)

    def _marker_action(
        self,
        marker: ActionMarker,
        name: str,
        work: Callable[[ActionStatus, ActionMarker], Coroutine[Any, Any, PumpResult]],
    ) -> ActionStatus:
        """The action that runs ``work`` for an existing ``marker`` (start or adopt)."""
        self._busy_check()
        self._check_marker_device(marker)

        async def body(status: ActionStatus) -> PumpResult:
            status.marker = marker
            return await self._guard(status, marker, work(status, marker))

        return self._new_action(name, body)

    async def _adopt(self, status: ActionStatus, marker: ActionMarker) -> PumpResult:
        delivery, c = await self._delivery(marker)
        self._started = delivery.moving or c.status == "P"  # ours to stop from now on
        self._record(status, delivery.delivered_ul, "adopted")
        if c.status == "P":
            self._paused = True
            status.paused = True  # stays paused until the status's resume()
        return await self._follow(status, marker, 0, check_now=True, after=marker.created)

    def _new_action(
        self, name: str, body: Callable[[ActionStatus], Coroutine[Any, Any, PumpResult]]
    ) -> ActionStatus:
        self._stop_requested = False
        self._paused = False
        self._hold = None
        action = ActionStatus(name, body, pause=self._pause_action, resume=self._resume_action)
        self._action = action
        log.info("%s: %s begins", self.name, name)
        return action

    def _record(self, status: ActionStatus, delivered_ul: float | None, why: str) -> None:
        status.delivered_ul = delivered_ul
        status.delivered_unknown = why if delivered_ul is None else ""
        if delivered_ul is not None and status.marker is not None:
            target = status.marker.target_ul
            fraction = min(1.0, delivered_ul / target) if target > 0 else 1.0
            status.report(Progress(fraction, delivered_ul, target, "uL", why))

    async def _read_back(self, marker: ActionMarker) -> tuple[float | None, str]:
        """The delivered volume read back from the pump now (None and why if it cannot be)."""
        try:
            c = Counters.from_reply(await self._send_through_alarm("DIS"))
            return self._delivered(marker, c), ""
        except DeviceError as e:
            return None, f"read-back failed: {e.message}"

    async def _guard(
        self, status: ActionStatus, marker: ActionMarker, work: Coroutine[Any, Any, PumpResult]
    ) -> PumpResult:
        """Run an action body; every error leaves with the delivered volume read back, and a
        cancel stops the pump (when ours was started) and records it before propagating."""
        try:
            result = await work
        except asyncio.CancelledError:
            # A request cut off by the cancel may still be answered: never take that answer.
            self.transport.out_of_step = True
            if self._started:
                with contextlib.suppress(DeviceError):
                    await self.stop()
            delivered, why = await self._read_back(marker)
            self._record(status, delivered, why or "cancelled")
            log.info("%s: %s cancelled after %s uL", self.name, status.name, delivered)
            raise
        except DeviceError as e:
            if e.marker is None:
                e.marker = marker
            if e.delivered_ul is None and not e.delivered_unknown:
                if self._started:
                    if not isinstance(e, DeviceAlarm | ActionIncomplete | DeviceStateLost):
                        with contextlib.suppress(DeviceError):
                            await self.stop()  # something failed while ours was running
                    e.delivered_ul, e.delivered_unknown = await self._read_back(marker)
                else:
                    e.delivered_ul = 0.0
            self._record(status, e.delivered_ul, e.delivered_unknown or str(e.message))
            log.info("%s: %s ended: %s", self.name, status.name, e)
            raise
        finally:
            self._started = False
        self._record(status, result.delivered_ul, "done")
        log.info("%s: %s delivered %.6g uL", self.name, status.name, result.delivered_ul)
        return result

    async def _run_marker(self, status: ActionStatus, marker: ActionMarker) -> PumpResult:
        """Check the pump still holds the marker's program and baseline, then RUN once."""
        self._started = False
        await self._check_identity(marker)
        first = await self._send_through_alarm("")
        self._refuse_if_reset(marker)
        await self._end_paused_program(first)
        b = marker.baseline
        direction = str(b["direction"])
        await self._program(direction, str(b["rate"]), str(b["volume"]), str(b["volume_unit"]))
        c = await self.counters()
        self._refuse_if_reset(marker)
        self._delivered(marker, c)  # DeviceStateLost when below the baseline
        tolerance = max(marker.step_ul, c.resolution_ul)
        if (
            abs(c.infused_ul - float(b["infused_ul"])) > tolerance
            or abs(c.withdrawn_ul - float(b["withdrawn_ul"])) > tolerance
        ):
            raise DeviceError(
                self.name,
                f"the counters moved since the marker was taken (I{c.infused_text} "
                f"W{c.withdrawn_text} {c.unit}): prepare the action again",
            )
        while self._hold is not None:
            status.report(Progress(0.0, 0.0, marker.target_ul, "uL", "held before the start"))
            await self._hold.wait()
        # No await between the hold check and this flag: a pause from now on sends STP.
        self._started = True
        cursor = self.alarms.count
        status.report(Progress(0.0, 0.0, marker.target_ul, "uL", "starting"))
        log.info("%s: RUN for %s", self.name, status.name)
        try:
            run: Reply | None = await self._send("RUN")
            failure: DeviceError | None = None
        except LINE_ERRORS as lost:
            run, failure = None, lost
        if run is not None and run.alarm is None and run.error is None and run.moving:
            return await self._follow(status, marker, cursor)
        if run is not None and run.error is not None:
            self._started = False  # refused: nothing started, nothing to stop
            self._check(run, "RUN")
        # No usable reply (lost, garbled, an alarm, or a status that is not moving): ask the pump
        # what happened; RUN is never sent again.
        if failure is not None:
            why = f"no reply to RUN ({failure.message})"
        else:
            why = f"RUN answered {run.status_text if run is not None else 'nothing'}"
        c = Counters.from_reply(await self._send_through_alarm("DIS"))
        delivered = self._delivered(marker, c)
        if c.moving or delivered > marker.step_ul / 2:
            log.info("%s: %s; the pump moved, following it", self.name, why)
            return await self._follow(status, marker, cursor, check_now=True)
        self._started = False
        if run is not None and run.alarm is not None:
            e: DeviceError = DeviceAlarm(self.name, run.alarm, ALARMS.get(run.alarm, "alarm"))
        else:
            e = ActionIncomplete(
                self.name, f"start not confirmed: {why}; the pump did not move ({c.status_text})"
            )
        e.delivered_ul = 0.0
        e.marker = marker
        raise e

    def _alarms_for(self, cursor: int, after: float | None) -> list[str]:
        """Alarms latched after ``cursor`` (and, when following a move found running, reported
        after the marker was taken): what may have stopped the action. A reset is handled apart
        (:class:`DeviceStateLost`)."""
        return [
            e.code
            for e in self.alarms.since(cursor)
            if (after is None or e.timestamp > after) and e.code != "R"
        ]

    async def _follow(
        self,
        status: ActionStatus,
        marker: ActionMarker,
        cursor: int,
        *,
        check_now: bool = False,
        after: float | None = None,
    ) -> PumpResult:
        """Poll ``DIS`` until the pump stops; the result or the error that says why it stopped."""
        target = marker.target_ul
        rate = max(marker.rate_ul_min, 1e-9)
        moved = 0.0
        failures = 0
        # About 50 progress reports per action, never closer than poll_interval nor further
        # apart than max_poll_interval, and one poll timed for the expected end.
        step = target / rate * 60.0 / 50
        step = min(self.max_poll_interval, max(self.poll_interval, step))
        first = check_now
        while True:
            if not first:
                remaining_s = max(0.0, (target - moved) / rate * 60.0)
                if self._paused:
                    wait = step
                elif remaining_s >= self.poll_interval:
                    wait = min(step, remaining_s)
                else:
                    wait = self.poll_interval
                await self.clock.sleep(wait)
            first = False
            try:
                reply = await self._send("DIS")
            except LINE_ERRORS:
                failures += 1
                if failures > self.poll_failures:
                    raise
                continue
            failures = 0
            if reply.alarm is not None:
                # Latched by the parser; the pump has stopped. Read what it delivered.
                reply = await self._send_through_alarm("DIS")
            self._check(reply, "DIS")
            self._refuse_if_reset(marker)
            c = Counters.from_reply(reply)
            moved = self._delivered(marker, c)
            fraction = min(1.0, moved / target)
            status.report(Progress(fraction, moved, target, "uL", c.status_text))
            if c.moving or c.status in ("P", "T", "U"):
                continue
            # Stopped: either the volume was reached or something stopped it.
            if moved >= target - marker.step_ul:
                return PumpResult(moved, target, marker)
            alarms = self._alarms_for(cursor, after)
            if alarms:
                code = alarms[-1]
                e: DeviceError = DeviceAlarm(self.name, code, ALARMS.get(code, "unknown alarm"))
            else:
                why = "stop requested" if self._stop_requested else "pump stopped, no reason given"
                e = ActionIncomplete(
                    self.name, f"{why} after {moved:g} of {target:g} uL ({c.status_text})"
                )
            e.delivered_ul = moved
            e.marker = marker
            raise e

    # -- pause / resume --------------------------------------------------------------------------
    async def _pause_action(self) -> None:
        """``STP`` once: a running program pauses (``P``) and keeps its remainder."""
        if not self._started:
            if self._hold is None:
                self._hold = asyncio.Event()  # not started yet: hold before RUN
            return
        try:
            reply = await self._send("STP")
        except LINE_ERRORS:
            reply = await self._send_through_alarm("")  # did the STP land?
            if reply.moving:
                raise DeviceError(
                    self.name, "pause not confirmed: the pump is still moving"
                ) from None
        self._check(reply, "STP")
        self._paused = True
        log.info("%s: paused (%s)", self.name, reply.status_text)

    async def _resume_action(self) -> None:
        """``RUN`` once on a paused program: the pump goes on with the same program's
        remainder. Never sent twice: a lost reply is resolved by asking the status."""
        if self._hold is not None and not self._started:
            hold, self._hold = self._hold, None
            hold.set()
            return
        state = await self._send_through_alarm("")
        if state.status != "P":
            self._paused = False
            if state.moving:
                return
            raise DeviceError(self.name, f"nothing to resume: the pump is {state.status_text}")
        try:
            reply = await self._send("RUN")
        except LINE_ERRORS as e:
            state = await self._send_through_alarm("")
            if not state.moving:
                raise DeviceError(
                    self.name, f"resume not confirmed ({e.message}); pump is {state.status_text}"
                ) from None
            reply = state
        self._check(reply, "RUN")
        self._paused = False
        log.info("%s: resumed (%s)", self.name, reply.status_text)
