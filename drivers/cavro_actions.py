"""Tecan Cavro: the exactly-once pump actions of :class:`~kiboauto.drivers.cavro.CavroPump`.

Markers (``prepare``), runs (``dispense``/``withdraw``/``start``), emulated pause/resume for the
exact remainder, ``delivered_since`` after a crash and ``adopt`` of a move still running. The
commands, reports and primitives these build on are the driver core in
:mod:`kiboauto.drivers.cavro`; see ``docs/protocols/cavro.md``, "After a crash: what this device
promises".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionEstimate,
    ActionIncomplete,
    ActionMarker,
    ActionStatus,
    AlarmLatch,
    Delivery,
    DeviceAlarm,
    DeviceError,
    DeviceStateLost,
    DeviceTimeout,
    FramingError,
    Progress,
    PumpResult,
    QuantityLike,
)

from .cavro_repeat import LOST_ANSWER, Repeat
from .cavro_wire import EMPTY, PULSES_PER_STROKE, CavroAnswer

if TYPE_CHECKING:
    from .transport import SerialTransport

__all__ = ["CavroPumpActions"]

# The driver's logger: these methods belong to CavroPump and log under its module's name.
log = logging.getLogger(f"{__package__}.cavro")


@dataclass
class _Run:
    """One pump action's state, shared by its body and its pause/resume hooks."""

    marker: ActionMarker
    target_steps: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False
    sent: bool = False  # a move of ours went out (it may be running: ours to stop)
    cursor: int = 0  # alarms.count when the action started
    stops: int = 0  # stop() calls before the action started
    lost_status: int = 0  # Q answers lost before the action started
    deadline: float = math.inf


@dataclass(frozen=True)
class _Base:
    """The parts of a marker's baseline the driver computes with."""

    position: int
    steps_per_stroke: int
    syringe_volume_ul: float
    port: int
    speed: int
    epoch: str

    @classmethod
    def of(cls, marker: ActionMarker) -> _Base:
        b = marker.baseline
        try:
            return cls(
                position=int(b["position_steps"]),
                steps_per_stroke=int(b["steps_per_stroke"]),
                syringe_volume_ul=float(b["syringe_volume_ul"]),
                port=int(b["move_port"]),
                speed=int(b["speed"]),
                epoch=marker.epoch,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a Cavro action marker: baseline lacks {e}") from e

    @property
    def step_ul(self) -> float:
        return self.syringe_volume_ul / self.steps_per_stroke


class CavroPumpActions:
    """The SyringePump actions of a Cavro pump: a mixin of :class:`~.cavro.CavroPump`.

    Every action is sent at most once, and ends with a :class:`PumpResult` or an error carrying
    the volume read back from the plunger (or why it could not be read).
    """

    # What the actions use of the driver core (kiboauto.drivers.cavro.CavroPump).
    name: str
    transport: SerialTransport
    clock: Clock
    syringe_volume_ul: float
    input_port: int
    output_port: int
    resolution: int
    timeout: float
    retries: int
    poll_interval: float
    alarms: AlarmLatch
    lost_status_answers: int
    _stops: int
    _firmware: str
    _start_speed: int
    _cutoff_speed: int
    _slope: int

    if TYPE_CHECKING:

        @property
        def steps_per_stroke(self) -> int: ...
        @property
        def identity(self) -> str: ...
        async def _transact(
            self,
            command: str,
            *,
            execute: bool,
            expect: re.Pattern[str],
            check: Callable[[str], None] | None = None,
            policy: Repeat | None = None,
            timeout: float | None = None,
        ) -> CavroAnswer: ...
        async def status(self) -> CavroAnswer: ...
        async def position(self) -> int: ...
        async def current_port(self) -> int: ...
        async def firmware(self) -> str: ...
        async def terminate(self) -> None: ...
        async def _epoch_or_none(self) -> int | None: ...
        async def wait_ready(
            self,
            timeout: float,
            *,
            on_poll: Callable[[], Any] | None = None,
            what: str = "move",
            cursor: int | None = None,
        ) -> None: ...
        def _move_budget(self, steps: int, speed: int | None = None) -> float: ...
        async def _ensure_idle(self, what: str) -> CavroAnswer: ...
        async def _send_move(self, command: str) -> bool: ...
        async def _started_anyway(self, baseline_steps: int | None) -> bool: ...
        def _valve_command(self, port: int) -> str: ...
        def volume_to_steps(self, volume: QuantityLike) -> int: ...
        def steps_to_volume_ul(self, steps: float) -> float: ...
        def rate_to_speed(self, rate: QuantityLike) -> int: ...

    # -- markers -------------------------------------------------------------------------------
    def _plan(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> tuple[int, int]:
        """(steps, speed) of an action; ValueError for what no pump could do."""
        if kind not in ("dispense", "withdraw"):
            raise ValueError(f"{self.name}: kind must be 'dispense' or 'withdraw', got {kind!r}")
        steps = self.volume_to_steps(volume)
        if steps < 0:
            raise ValueError(f"{self.name}: volume must be positive, got {volume}")
        return steps, self.rate_to_speed(rate)

    def estimate(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionEstimate:
        """A move is never repeatable; its time follows the plunger's ramp (plus the valve)."""
        steps, speed = self._plan(kind, volume, rate)
        pulses = steps * PULSES_PER_STROKE / self.steps_per_stroke
        ramp = _ramp_time(pulses, self._start_speed, speed, self._cutoff_speed, self._slope)
        return ActionEstimate(repeatable=False, duration_s=ramp + _VALVE_TIME_MAX)

    async def prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        """Check the action fits the syringe and read the baseline (``Q``, ``&``, ``?15``, ``?``,
        ``?6``); nothing moves. Raises :class:`DeviceBusy` while the pump moves."""
        steps, speed = self._plan(kind, volume, rate)
        answer = await self._ensure_idle(f"{kind} (prepare)")
        if answer.error in (1, 7):
            raise DeviceAlarm(self.name, str(answer.error), f"{answer.error_message}: initialise")
        self._firmware = await self.firmware()
        inits = await self._epoch_or_none()
        position = await self.position()
        valve = await self.current_port()
        target_ul = self.steps_to_volume_ul(steps)
        if kind == "dispense" and steps > position:
            raise DeviceError(
                self.name,
                f"cannot dispense {target_ul:.4g} uL: only "
                f"{self.steps_to_volume_ul(position):.4g} uL in the syringe",
            )
        if kind == "withdraw" and position + steps > self.steps_per_stroke:
            raise DeviceError(
                self.name,
                f"cannot withdraw {target_ul:.4g} uL: room for "
                f"{self.steps_to_volume_ul(self.steps_per_stroke - position):.4g} uL",
            )
        baseline: dict[str, float | int | str] = {
            "position_steps": position,
            "resolution": self.resolution,
            "steps_per_stroke": self.steps_per_stroke,
            "syringe_volume_ul": self.syringe_volume_ul,
            "valve_port": valve,
            "move_port": self.output_port if kind == "dispense" else self.input_port,
            "speed": speed,
            "initialisations": -1 if inits is None else inits,
        }
        marker = ActionMarker(
            device=self.name,
            identity=self.identity,
            kind=kind,
            target_ul=target_ul,
            rate_ul_min=speed * self.syringe_volume_ul / PULSES_PER_STROKE * 60.0,
            baseline=baseline,
            epoch="" if inits is None else f"initialisations={inits}",
            created=self.clock.wall(),
            step_ul=self.syringe_volume_ul / self.steps_per_stroke,
        )
        log.info("%s: prepared %s", self.name, marker.to_json())
        return marker

    # -- runs ----------------------------------------------------------------------------------
    def dispense(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._prepare_and_start("dispense", volume, rate)

    def withdraw(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._prepare_and_start("withdraw", volume, rate)

    def _prepare_and_start(
        self, kind: str, volume: QuantityLike, rate: QuantityLike
    ) -> ActionStatus:
        self._plan(kind, volume, rate)  # ValueError now, not from inside the task
        holder: dict[str, _Run] = {}

        async def body(status: ActionStatus) -> PumpResult:
            try:
                marker = await self.prepare(kind, volume, rate)
            except DeviceError as e:
                e.delivered_ul = status.delivered_ul = 0.0  # nothing was sent
                raise
            status.marker = marker
            run = holder["run"] = self._new_run(marker)
            return await self._drive(status, run, adopt=False)

        return self._action_status(f"{self.name}:{kind}", body, holder)

    def start(self, marker: ActionMarker) -> ActionStatus:
        """Send a prepared action: ``Q`` (idle?), ``?`` (still at the baseline?), then one string
        ``I<port>V<speed>D<steps>`` (``P`` to withdraw)."""
        return self._run_marker(marker, adopt=False)

    def adopt(self, marker: ActionMarker) -> ActionStatus:
        """Follow the move of ``marker`` (found running by :meth:`delivered_since`, e.g. after a
        crash) to its end; ends with a :class:`PumpResult` or an error carrying the volume."""
        return self._run_marker(marker, adopt=True)

    def _run_marker(self, marker: ActionMarker, *, adopt: bool) -> ActionStatus:
        """The action of a marker: sent now (``start``) or already running (``adopt``)."""
        run = self._new_run(marker)
        holder = {"run": run}

        async def body(status: ActionStatus) -> PumpResult:
            return await self._drive(status, run, adopt=adopt)

        label = f"{self.name}:{marker.kind}" + (":adopted" if adopt else "")
        status = self._action_status(label, body, holder)
        status.marker = marker
        return status

    def _new_run(self, marker: ActionMarker) -> _Run:
        if marker.kind not in ("dispense", "withdraw"):
            raise ValueError(f"{self.name}: cannot run a {marker.kind!r} marker")
        base = _Base.of(marker)
        return _Run(marker=marker, target_steps=round(marker.target_ul / base.step_ul))

    def _action_status(
        self,
        label: str,
        body: Callable[[ActionStatus], Any],
        holder: Mapping[str, _Run],
    ) -> ActionStatus:
        async def pause() -> None:
            run = holder.get("run")
            if run is None:
                raise DeviceError(self.name, "the action has not started yet")
            await self._pause(run)

        async def resume() -> None:
            await self._resume(holder["run"])

        return ActionStatus(label, body, pause=pause, resume=resume)

    # -- the action ----------------------------------------------------------------------------
    def _move_command(self, run: _Run, steps: int) -> str:
        base = _Base.of(run.marker)
        letter = "D" if run.marker.kind == "dispense" else "P"
        return f"{self._valve_command(base.port)}V{base.speed}{letter}{steps}"

    async def _drive(self, status: ActionStatus, run: _Run, *, adopt: bool) -> PumpResult:
        marker = run.marker
        try:
            if adopt:
                # An alarm the pump kept while nobody listened is read by delivered_since's Q:
                # it belongs to this action.
                self._open_account(run)
                delivery = await self.delivered_since(marker)
                run.sent = delivery.moving
                remaining = run.target_steps - round(delivery.delivered_ul / marker.step_ul)
                self._set_deadline(run, remaining)
            else:
                async with run.lock:
                    await self._begin(run)
            await self._follow(status, run)
            return await self._conclude(status, run)
        except asyncio.CancelledError:
            await self._after_cancel(status, run)
            raise
        except DeviceError as e:
            await self._after_error(status, run, e)
            raise

    def _open_account(self, run: _Run) -> None:
        """Note what the action's end is judged against: alarms, stop() calls, lost Q answers."""
        run.cursor, run.stops = self.alarms.count, self._stops
        run.lost_status = self.lost_status_answers

    def _set_deadline(self, run: _Run, steps: int) -> None:
        run.deadline = self.clock.now() + self._move_budget(steps, _Base.of(run.marker).speed)

    async def _begin(self, run: _Run) -> None:
        marker, base = run.marker, _Base.of(run.marker)
        try:
            self._check_identity(marker)
            await self._ensure_idle(f"{marker.kind} start")
            now_at = await self.position()
        except DeviceError as e:
            _attach(e, marker, 0.0)
            raise
        if now_at != base.position:
            raise _attach(
                DeviceError(
                    self.name,
                    f"the plunger is at {now_at}, not at the marker's {base.position}: "
                    "prepare the action again",
                ),
                marker,
                0.0,
            )
        self._open_account(run)
        if run.target_steps == 0:
            return
        command = self._move_command(run, run.target_steps)
        log.info("%s: %s %.6g uL: %s", self.name, marker.kind, marker.target_ul, command)
        run.sent = True
        try:
            accepted = await self._send_move(command)
            if not accepted and not await self._started_anyway(base.position):
                raise ActionIncomplete(
                    self.name,
                    f"start of {command!r} not confirmed: its answer was lost and the pump "
                    "shows no motion (idle, plunger at the baseline)",
                )
        except DeviceError as e:
            run.sent = False  # refused or provably not started: never stop the pump for it
            _attach(e, marker, 0.0)
            raise
        self._set_deadline(run, run.target_steps)

    async def _follow(self, status: ActionStatus, run: _Run) -> None:
        """Poll ``Q`` until the pump is idle and the action not paused; report progress."""
        lost = 0
        while True:
            if run.paused:
                await run.resumed.wait()
                continue
            try:
                answer = await self.status()
            except (DeviceTimeout, FramingError) as e:
                lost += 1
                if lost > self.retries:
                    raise
                log.warning("%s: status answer lost during %s: %s", self.name, status.name, e)
                await self.clock.sleep(self.poll_interval)
                continue
            lost = 0
            if run.paused:
                continue
            if answer.ready:
                return
            with contextlib.suppress(DeviceTimeout, FramingError):
                await self._report(status, run, run.marker.kind)
            if self.clock.now() > run.deadline:
                raise DeviceTimeout(self.name, f"{status.name} not finished in time")
            await self.clock.sleep(self.poll_interval)

    async def _measure(self, marker: ActionMarker) -> tuple[int, float]:
        """(steps, uL) the plunger moved in the marker's direction since its baseline."""
        base = _Base.of(marker)
        now_at = await self.position()
        in_base = now_at * base.steps_per_stroke / self.steps_per_stroke
        moved = base.position - in_base if marker.kind == "dispense" else in_base - base.position
        steps = round(moved)
        return steps, steps * base.step_ul

    async def _report(self, status: ActionStatus, run: _Run, message: str) -> float:
        _, ul = await self._measure(run.marker)
        target = run.marker.target_ul
        status.report(Progress(max(_fraction(ul, target), 0.0), ul, target, "uL", message))
        return ul

    async def _conclude(self, status: ActionStatus, run: _Run) -> PumpResult:
        marker = run.marker
        steps, ul = await self._measure(marker)
        status.delivered_ul = ul
        target = marker.target_ul
        status.report(Progress(_fraction(ul, target), ul, target, "uL", "end"))
        if steps == run.target_steps:
            log.info("%s: %s of %.6g uL done", self.name, marker.kind, ul)
            return PumpResult(delivered_ul=ul, target_ul=target, marker=marker)
        where = f"ended at {ul:.6g} of {target:.6g} uL"
        events = self.alarms.since(run.cursor)
        error: DeviceError
        if events:
            first = events[0]
            error = DeviceAlarm(self.name, first.code, f"{first.message}; {where}")
        elif self._stops != run.stops:
            error = ActionIncomplete(self.name, f"stopped by stop(): {where}")
        elif steps > run.target_steps:
            error = DeviceError(self.name, f"the plunger went past the target: {where}")
        else:
            lost = self.lost_status_answers - run.lost_status
            why = (
                f" ({lost} status answer(s) were lost: the error they carried is unknown)"
                if lost
                else ""
            )
            error = ActionIncomplete(self.name, f"{where} without an error from the pump{why}")
        raise _attach(error, marker, ul)

    async def _halt(self) -> None:
        """``T`` and wait (briefly) until the plunger stands."""
        await self.terminate()
        deadline = self.clock.now() + max(2.0, 4 * self.timeout)
        while self.clock.now() < deadline:
            with contextlib.suppress(DeviceTimeout, FramingError):
                if (await self.status()).ready:
                    return
            await self.clock.sleep(self.poll_interval)

    async def _stop_our_move(self, run: _Run, after: object) -> None:
        """``T`` for a move this action sent and that may be running (not when paused)."""
        if run.sent and not run.paused:
            try:
                await self._halt()
            except DeviceError as e:
                log.warning("%s: could not stop after %s: %s", self.name, after, e)

    async def _read_back(self, status: ActionStatus, run: _Run, error: DeviceError | None) -> None:
        try:
            _, ul = await self._measure(run.marker)
        except DeviceError as e:
            status.delivered_unknown = str(e)
            if error is not None:
                error.delivered_unknown = str(e)
                error.marker = run.marker
            return
        status.delivered_ul = ul
        if error is not None:
            _attach(error, run.marker, ul)
        target = run.marker.target_ul
        note = "cancelled" if error is None else type(error).__name__
        status.report(Progress(_fraction(ul, target), ul, target, "uL", note))

    async def _after_cancel(self, status: ActionStatus, run: _Run) -> None:
        # An exchange cut short may leave its answer on its way: get back in step first.
        self.transport.out_of_step = True
        await self._stop_our_move(run, "cancel")
        await self._read_back(status, run, None)
        log.info("%s: %s cancelled at %s uL", self.name, status.name, status.delivered_ul)

    async def _after_error(self, status: ActionStatus, run: _Run, error: DeviceError) -> None:
        if isinstance(error, DeviceStateLost) and not error.delivered_unknown:
            error.delivered_unknown = error.message
            error.marker = run.marker
        if error.delivered_ul is not None or error.delivered_unknown:
            status.delivered_ul = error.delivered_ul
            status.delivered_unknown = error.delivered_unknown
            return
        await self._stop_our_move(run, error)  # our move, and we lost track of it: stop it
        await self._read_back(status, run, error)

    # pause / resume ------------------------------------------------------------------------------
    async def _pause(self, run: _Run) -> None:
        """Emulated: ``T``, wait until the plunger stands, read where it is."""
        async with run.lock:
            if run.paused:
                return
            run.paused = True
            run.resumed.clear()
            try:
                await self._halt()
                _, ul = await self._measure(run.marker)
            except DeviceError:
                run.paused = False
                run.resumed.set()
                raise
            log.info("%s: paused at %.6g uL", self.name, ul)

    async def _resume(self, run: _Run) -> None:
        """Move exactly the remainder: a new ``D``/``P`` of the steps still missing."""
        async with run.lock:
            if not run.paused:
                return
            await self._ensure_idle("resume")
            steps, ul = await self._measure(run.marker)
            remaining = run.target_steps - steps
            if remaining < 0:
                raise DeviceError(self.name, f"paused past the target ({ul:.6g} uL): not resumed")
            if remaining:
                now_at = await self.position()
                command = self._move_command(run, remaining)
                accepted = await self._send_move(command)  # refused: raises, stays paused
                if not accepted and not await self._started_anyway(now_at):
                    raise ActionIncomplete(
                        self.name, f"resume {command!r} not confirmed: the pump shows no motion"
                    )
                run.sent = True
                self._set_deadline(run, remaining)
                log.info("%s: resumed at %.6g uL with %s", self.name, ul, command)
            run.paused = False
            run.resumed.set()

    # after a crash -----------------------------------------------------------------------------
    def _check_identity(self, marker: ActionMarker) -> None:
        if marker.device != self.name or (self._firmware and marker.identity != self.identity):
            raise DeviceError(
                self.name, f"the marker belongs to {marker.identity}, this is {self.identity}"
            )

    async def delivered_since(self, marker: ActionMarker) -> Delivery:
        """What the plunger moved since ``marker``: (baseline - position) steps in uL to
        dispense, the reverse to withdraw. Works on a new driver object after a crash.

        Raises :class:`DeviceStateLost` when the pump was initialised again (``?15`` changed) or
        is not initialised (a power cycle: it reports error 7/1, or refuses a valve command to
        the port it is at with 7), as its plunger count then starts afresh."""
        _Base.of(marker)
        self._firmware = await self.firmware()
        self._check_identity(marker)
        answer = await self.status()
        if answer.error in (1, 7):
            raise _attach(
                DeviceStateLost(self.name, f"the pump reports {answer.error_message}"), marker
            )
        expected = marker.baseline.get("initialisations", -1)
        inits = await self._epoch_or_none()
        known = isinstance(expected, int | float) and expected >= 0
        if inits is not None and known and inits != int(expected):
            raise _attach(
                DeviceStateLost(
                    self.name,
                    f"initialised again since the marker ({expected} -> {inits} "
                    "initialisations): the plunger count starts afresh",
                ),
                marker,
            )
        moving = answer.busy
        if not moving:
            await self._check_initialised(marker)
        steps, ul = await self._measure(marker)
        if steps < 0:
            raise _attach(
                DeviceStateLost(
                    self.name, f"the plunger moved the other way since the marker ({ul:.6g} uL)"
                ),
                marker,
            )
        return Delivery(delivered_ul=ul, moving=moving, marker=marker)

    async def _check_initialised(self, marker: ActionMarker) -> None:
        """A valve command to the port the valve is at: refused at once (7) by a pump that is not
        initialised (power cycle); otherwise nothing moves."""
        port = await self.current_port()
        command = self._valve_command(port)
        try:
            answer = await self._transact(command, execute=True, expect=EMPTY)
        except LOST_ANSWER as e:
            raise _attach(
                DeviceStateLost(self.name, f"cannot tell whether the pump is initialised: {e}"),
                marker,
            ) from e
        if answer.error in (1, 7):
            raise _attach(
                DeviceStateLost(
                    self.name,
                    f"the pump is not initialised ({answer.error_message}): power-cycled "
                    "since the marker",
                ),
                marker,
            )
        if not answer.error:
            with contextlib.suppress(DeviceError):
                await self.wait_ready(2.0, what=command)


_VALVE_TIME_MAX = 0.6
"""Longest valve move before a plunger move (s): 0.15 + 0.035 s per port, 12 ports away."""


def _attach(
    error: DeviceError, marker: ActionMarker, delivered_ul: float | None = None
) -> DeviceError:
    error.marker = marker
    if delivered_ul is not None:
        error.delivered_ul = delivered_ul
    return error


def _fraction(ul: float, target: float) -> float:
    """Progress of ``ul`` of ``target`` (at most 1; 1 for a target of nothing)."""
    return min(ul / target, 1.0) if target else 1.0


def _ramp_time(pulses: float, start: float, top: float, cutoff: float, slope: int) -> float:
    """Time of a plunger move of ``pulses`` with the manual's trapezoidal speed profile."""
    if pulses <= 0:
        return 0.0
    a = slope * 2500.0
    v0, v2 = min(start, top), min(cutoff, top)
    up, down = (top**2 - v0**2) / (2 * a), (top**2 - v2**2) / (2 * a)
    if up + down <= pulses:
        return (top - v0) / a + (pulses - up - down) / top + (top - v2) / a
    peak = math.sqrt((2 * a * pulses + v0**2 + v2**2) / 2)
    if peak < max(v0, v2):
        return 2 * pulses / (v0 + v2)
    return (peak - v0) / a + (peak - v2) / a
