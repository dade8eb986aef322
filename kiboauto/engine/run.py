"""One experiment run: protocol, devices, journal, state machine, commands, monitoring, steps.

:class:`Run` is what ``kiboauto run``, ``resume`` and ``demo`` drive. It opens (or reopens) the
run directory's journal, rebuilds the run's state from it when the run was interrupted (state,
cursor, timers, parameters, inspection results), settles every open device action by asking the
device (never by sending it again), then runs the executor and the monitor side by side until the
run reaches a terminal state. It implements the command path's :class:`RunControl` and the
monitor's :class:`MonitorSink`: commands and alarms reach the executor through it.

It sees hardware only through :mod:`kiboauto.devices` protocols; the caller chooses real or
simulated devices (``station.py``, ``cli.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiboauto.clock import Clock, VirtualClock
from kiboauto.devices import (
    DeviceError,
    DeviceEvent,
    DeviceStateLost,
    SyringePump,
    ThermalController,
)
from kiboauto.engine.commands import CommandPath, CommandRefused
from kiboauto.engine.executor import Executor, RunAborted, RunFailed
from kiboauto.engine.machine import Reason, RunMachine, RunState, Verdict
from kiboauto.engine.monitor import LimitLevel, Monitor
from kiboauto.engine.parameters import (
    check_parameter_value,
    limits_for_report,
    param_text,
    param_value,
)
from kiboauto.engine.program import Program, Values
from kiboauto.engine.steps import LeafSteps
from kiboauto.journal import Journal, JournalError, TelemetryRow
from kiboauto.protocol.model import Limits, MonitorSpec, Protocol, WatchdogSpec
from kiboauto.units import Q_, as_quantity

__all__ = ["Run", "RunOptions", "RunOutcome", "check_parameter_value"]  # the last: re-exported

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run: parameter overrides, simulated crew, and what to do with holds (dry runs)."""

    params: dict[str, str] = field(default_factory=dict)
    auto_crew: bool = False
    auto_release: bool = False
    control_socket: bool = True
    on_step: Callable[[Run], None] | None = None
    sample_every: dict[str, str] = field(default_factory=dict)
    """Station device -> period: devices the station asks to sample besides the protocol's
    monitor (telemetry only, no limits)."""
    stop_holding_after_s: float | None = None
    """Stop the process (the run stays holding, resumable) after this long holding: for virtual
    time, where nobody would answer before the end of time."""


@dataclass
class RunOutcome:
    """How a run ended (or stopped: a run left holding can be resumed)."""

    state: RunState
    message: str
    steps_run: int
    protocol_time_s: float


class Run:
    """An experiment run in its run directory (see the module text)."""

    def __init__(
        self,
        protocol: Protocol,
        protocol_text: str,
        devices: Mapping[str, Any],
        station_text: str,
        run_dir: Path,
        clock: Clock,
        options: RunOptions | None = None,
        *,
        power: Callable[[str, str], contextlib.AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.protocol = protocol
        self.protocol_text = protocol_text
        self.station_text = station_text
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.options = options or RunOptions()
        self.station_devices = dict(devices)
        self.roles: dict[str, Any] = {}
        for role in protocol.roles:
            name = protocol.device_for(role)
            if name not in self.station_devices:
                raise ValueError(f"role {role!r}: the station has no device {name!r}")
            self.roles[role] = self.station_devices[name]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal.open(self.run_dir)
        self.program = Program(protocol)
        self.values = Values()
        self._t_offset = 0.0
        self._clock_origin = clock.now()
        self.resumed = False
        self._lost_acknowledged: set[int] = set()
        self._ticked = float("-inf")
        self._body: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._power = power

        initial = RunState.IDLE
        if self.journal.has_run:
            if self.journal.run().protocol_sha256 != _sha(protocol_text):
                raise ValueError(
                    f"{self.run_dir} holds a run of another protocol; use a new --run-dir"
                )
            initial = self._restore()
        else:
            self.journal.start_run(protocol_text, station_text, t_wall=clock.wall())
            self.journal.set_checkpoint("limits", limits_for_report(protocol))
        self.journal.group_commits(max_pending=4096)
        self.machine = RunMachine(initial=initial, on_transition=self._journal_transition)
        self.commands = CommandPath(self, self.journal, clock)
        self.steps = LeafSteps(
            protocol,
            self.roles,
            self.journal,
            clock,
            self.values,
            self.run_dir,
            protocol_time=self.protocol_time,
            timers={},
            save_timers=lambda: None,
            hold=self._hold_from_step,
            wait_released=self._wait_released,
            event=self.event,
            power=power,
            auto_crew=self.options.auto_crew,
            confirm=self._crew_confirms,
            acknowledged_lost=lambda: self._lost_acknowledged,
        )
        self.executor = Executor(
            self.program,
            self.journal,
            clock,
            self.machine,
            self.values,
            protocol_time=self.protocol_time,
            run_leaf=self._leaf,
            on_hold=self._hold_from_step,
            on_event=self.event,
        )
        self.steps.timers = self.executor.timers
        self.steps.save_timers = self.executor.save_timers
        if self.resumed:
            checkpoints = self.journal.checkpoints()
            self.executor.load_cursor(checkpoints.get("cursor"), checkpoints.get("timers", {}))
            self.steps.timers = self.executor.timers
        specs = list(protocol.monitor)
        sampled = {self.protocol.device_for(s.device) for s in specs}
        for role in protocol.roles:
            device = protocol.device_for(role)
            every = self.options.sample_every.get(device)
            if every is not None and device not in sampled:
                specs.append(MonitorSpec(device=role, every=every))
                sampled.add(device)
        self.monitor = Monitor(
            {r: d for r, d in self.roles.items() if r in {s.device for s in specs}},
            specs,
            protocol.watchdogs,
            clock,
            protocol_time=self.protocol_time,
            sink=self,
            extra_values=lambda: self.values.env(),
        )
        self.values.telemetry = self.monitor.values()

    # ------------------------------------------------------------------ time and state

    def protocol_time(self) -> float:
        """Seconds since the run started, on the protocol's own time base."""
        return self._t_offset + (self.clock.now() - self._clock_origin)

    def _restore(self) -> RunState:
        """Rebuild what the journal knows; returns the state to continue in."""
        self.resumed = True
        transitions = self.journal.rows("transitions")
        state = RunState(transitions[-1]["to_state"]) if transitions else RunState.IDLE
        checkpoints = self.journal.checkpoints()
        self._t_offset = float(checkpoints.get("t_protocol", 0.0))
        last_real = checkpoints.get("t_real")
        if last_real is not None and not isinstance(self.clock, VirtualClock):
            # on real or scaled time the protocol went on while no process was running it (the
            # crystals kept growing): the real seconds since the last checkpoint count, scaled
            self._t_offset += max(0.0, _real_time() - float(last_real)) * _speed(self.clock)
        self._clock_origin = self.clock.now()
        params = checkpoints.get("params", {})
        self._apply_params({**self.options.params, **params}, journal=False)
        for k, v in checkpoints.get("cells", {}).items():
            self.values.set_cell(int(k), v)
        self._lost_acknowledged = set(checkpoints.get("lost_acknowledged", []))
        return state

    def _apply_params(self, overrides: Mapping[str, str], *, journal: bool = True) -> None:
        for name, spec in self.protocol.parameters.items():
            self.values.params.setdefault(name, spec.quantity())
        for name, text in overrides.items():
            verdict = self.check_parameter(name, str(text))
            if verdict is not None:
                raise ValueError(f"--set {name}={text}: {verdict.message}")
            self.values.params[name] = param_value(str(text))
        if journal:
            self._save_params()

    def _save_params(self) -> None:
        self.journal.set_checkpoint(
            "params", {k: param_text(v) for k, v in self.values.params.items()}
        )

    async def _journal_transition(
        self, from_state: RunState, to_state: RunState, trigger: str, why: str
    ) -> None:
        self.journal.record_transition(
            from_state.value, to_state.value, trigger, why, self.protocol_time(), self.clock.wall()
        )
        log.info("run: %s -> %s (%s%s)", from_state, to_state, trigger, f": {why}" if why else "")

    def event(self, code: str, severity: str, message: str) -> None:
        """Journal an event (and log it)."""
        self.journal.record_event(code, severity, message, self.protocol_time())
        serious = severity in ("warning", "alarm", "critical")
        if serious:
            self.journal.flush()  # rare and what the ground needs first: committed at once
        level = logging.WARNING if serious else logging.INFO
        log.log(level, "event %s [%s]: %s", code, severity, message)

    def _tick(self, *, force: bool = False) -> None:
        """Checkpoint the protocol time (for a resume on virtual time), at most once per
        protocol second unless forced."""
        now = self.protocol_time()
        if not force and now - self._ticked < 1.0:
            return
        self._ticked = now
        self.journal.set_checkpoint("t_protocol", now)
        self.journal.set_checkpoint("t_wall", self.clock.wall())
        virtual = isinstance(self.clock, VirtualClock)
        self.journal.set_checkpoint("t_real", None if virtual else _real_time())

    # ------------------------------------------------------------------ the run

    async def execute(self) -> RunOutcome:
        """Run (or go on with) the run until it is completed, aborted or failed."""
        if not self.values.params:
            self._apply_params(self.options.params)
        server = None
        if self.options.control_socket:
            # first: the live socket is also what keeps a second process off this run
            from kiboauto.engine.control import ControlError, ControlServer

            server = ControlServer(self.run_dir, self.commands)
            try:
                await server.start()
            except (ControlError, OSError) as e:
                raise ValueError(f"{self.run_dir}: {e}") from None
        try:
            return await self._execute(server)
        finally:
            if server is not None:
                await server.aclose()

    async def _execute(self, server: Any) -> RunOutcome:
        if self.machine.state is RunState.IDLE:
            await self.machine.fire("load", "protocol validated")
        if self.machine.state is RunState.LOADED:
            await self.machine.fire("start", "run started")
        elif self.machine.state.terminal:
            return self._outcome(f"the run is already {self.machine.state.value}")
        else:
            await self.machine.fire("recover", f"resumed in {self.machine.state.value}")
            await self._reconcile()
        self.event("run_started" if not self.resumed else "run_resumed", "info", self.run_dir.name)
        monitor = asyncio.create_task(self.monitor.run(), name="monitor")
        limits = asyncio.create_task(self._time_limits(), name="time-limits")
        self._tasks |= {monitor, limits}
        body = asyncio.create_task(self.executor.run(), name="executor")
        self._body = body
        watch = asyncio.create_task(self._stop_if_held(), name="hold-watch")
        self._tasks |= {body, watch}
        try:
            await asyncio.wait({body, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not body.done():
                body.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await body
                message = (
                    f"stopped while holding (nobody answered for "
                    f"{self.options.stop_holding_after_s:g} s of protocol time); the run is "
                    "still holding: 'kiboauto resume' it and release, skip or abort"
                )
                self.event("run_stopped_holding", "alarm", message)
                return self._outcome(message)
            if body.cancelled():
                if self.machine.state is not RunState.ABORTED:
                    raise asyncio.CancelledError
                raise RunAborted("by command")
            await body
            await self.machine.fire("complete", "every step done")
            message = "completed"
        except RunAborted as e:
            message = f"aborted: {e}"
            await self._safe_state(message)
            if not self.machine.state.terminal:
                await self.machine.fire("abort", str(e))
        except RunFailed as e:
            message = f"failed: {e}"
            await self._safe_state(message)
            if not self.machine.state.terminal:
                await self.machine.fire("fail", str(e))
        except JournalError as e:
            # nothing more can be recorded, so nothing more may be done: stop, hardware safe,
            # the journal as it was last committed (a resume goes on from there)
            log.critical("journal failed, the run stops: %s", e)
            with contextlib.suppress(Exception):
                await self._safe_state(f"journal failed: {e}")
            raise
        finally:
            self._closing = True
            for task in self._tasks:
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                self._tick(force=True)
                self.journal.flush()
        self.event("run_ended", "info", message)
        self.journal.flush()  # (a JournalError here propagates: the caller says so)
        return self._outcome(message)

    def _outcome(self, message: str) -> RunOutcome:
        return RunOutcome(
            self.machine.state, message, self.executor.steps_run, self.protocol_time()
        )

    def close(self) -> None:
        self.journal.close()

    async def _leaf(self, step: Any, label: str, key: str) -> None:
        self._tick()
        if self.options.on_step is not None:
            self.options.on_step(self)
        await self.steps(step, label, key)

    async def _restore_setpoints(self) -> None:
        """Re-send the last set point of each thermal controller when it differs (a controller
        power-cycled with the computer forgets it): a repeatable action, re-issued."""
        for role, degc in self.journal.get_checkpoint("setpoints", {}).items():
            device = self.roles.get(role)
            if not isinstance(device, ThermalController):
                continue
            try:
                now = float((await device.read_setpoint()).to("degC").magnitude)
                if abs(now - float(degc)) > 0.05:
                    await device.set_setpoint(Q_(float(degc), "degC"))
                    await device.run(True)
                    self.event(
                        "setpoint_restored",
                        "warning",
                        f"{role} was at {now:g} degC after the restart: set {degc:g} degC again",
                    )
            except DeviceError as e:
                self.event("setpoint_unknown", "alarm", f"{role}: cannot restore {degc} degC: {e}")

    async def _reconcile(self) -> None:
        """Settle every action whose intent is journaled but whose end is not, by asking the
        device what it did (following it if it is still moving). Never sends it again."""
        if self.machine.state is not RunState.HOLDING:
            await self._restore_setpoints()
        by_name = {getattr(d, "name", n): d for n, d in self.station_devices.items()}
        for intent in self.journal.open_intents():
            marker = intent.marker
            pump = by_name.get(marker.device)
            t = self.protocol_time()
            if not isinstance(pump, SyringePump):
                self.journal.mark_lost(
                    intent.action_id, f"no device {marker.device} now", t_protocol=t
                )
                continue
            try:
                delivery = await pump.delivered_since(marker)
                if delivery.moving:
                    self.event(
                        "action_followed",
                        "info",
                        f"{marker.device}: {marker.kind} of {marker.target_ul:g} uL still moving "
                        f"after the restart ({delivery.delivered_ul:g} uL so far): following it",
                    )
                    with contextlib.suppress(DeviceError):
                        await pump.adopt(marker)
                    delivery = await pump.delivered_since(marker)
            except DeviceStateLost as e:
                self.journal.mark_lost(intent.action_id, str(e), t_protocol=t)
                self.event(
                    "action_lost",
                    "alarm",
                    f"{marker.device} cannot say what its {marker.kind} of {marker.target_ul:g} uL "
                    f"(step {intent.step}) delivered: {e}. The ground must decide: 'skip' the "
                    "step, or 'release' to move the rest counting it as 0 uL",
                )
                continue
            except DeviceError as e:
                self.event("action_unknown", "alarm", f"{marker.device}: {e}; will ask again")
                continue
            self.journal.end_action(
                intent.action_id,
                {"reconciled": True, "delivered_ul": delivery.delivered_ul},
                delivered_ul=delivery.delivered_ul,
                t_protocol=self.protocol_time(),
            )
            self.event(
                "action_reconciled",
                "info",
                f"{marker.device}: open {marker.kind} of {marker.target_ul:g} uL (step "
                f"{intent.step}) had delivered {delivery.delivered_ul:g} uL; only the rest moves",
            )

    # ------------------------------------------------------------------ holding and safety

    async def _safe_state(self, why: str) -> None:
        """Stop what moves and bring thermal controllers to the protocol's safe set points."""
        self.executor.interrupt("hold")
        for role, value in self.protocol.safe.temperatures.items():
            device = self.roles.get(role)
            if not isinstance(device, ThermalController):
                continue
            target = Q_(float(as_quantity(self._resolve(value)).to("degC").magnitude), "degC")
            try:
                await device.set_setpoint(target)
                await device.run(True)
                self.event("safe_state", "warning", f"{role} set to {target} ({why})")
            except DeviceError as e:
                self.event("safe_state_failed", "critical", f"{role}: cannot set {target}: {e}")

    def _resolve(self, value: object) -> Any:
        from kiboauto.engine.program import resolve

        return resolve(value, self.values.params)

    async def _hold_from_step(self, why: str) -> None:
        if self.machine.state in (RunState.RUNNING, RunState.PAUSED):
            await self.machine.fire("hold", why)
            await self._after_hold(why, interrupt=False)

    async def _after_hold(self, why: str, *, interrupt: bool) -> None:
        self.event("holding", "warning", why)
        if interrupt:
            self.executor.interrupt("hold")
        await self._safe_state(why)
        if self.options.auto_release:
            self._spawn(self._auto_release(why))

    async def _auto_release(self, why: str) -> None:
        await self.commands.execute("release", source="dry-run")

    async def _wait_released(self) -> None:
        state = await self.machine.wait_until(lambda s: s is not RunState.HOLDING)
        if state is RunState.ABORTED:
            raise RunAborted("aborted while holding")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_if_held(self) -> None:
        limit = self.options.stop_holding_after_s
        if limit is None:
            await asyncio.Event().wait()
            return
        while True:
            await self.machine.wait_until(RunState.HOLDING)
            try:
                async with self.clock.timeout(limit):
                    await self.machine.wait_until(lambda s: s is not RunState.HOLDING)
            except TimeoutError:
                return

    async def _time_limits(self) -> None:
        """Run the safe action when the run stays paused or holding longer than biology allows."""
        limits = self.protocol.time_limits
        while True:
            state = await self.machine.wait_until((RunState.PAUSED, RunState.HOLDING))
            limit = limits.max_paused if state is RunState.PAUSED else limits.max_holding
            if limit is None:
                await self.machine.wait_until(_leaves(state))
                continue
            seconds = float(as_quantity(limit).to("s").magnitude)
            try:
                async with self.clock.timeout(seconds):
                    await self.machine.wait_until(_leaves(state))
                continue
            except TimeoutError:
                pass
            why = f"{state.value} for longer than {limit} (time_limits)"
            if limits.then == "abort":
                self.event("time_limit", "critical", why + ": aborting")
                await self.commands.execute("abort", source="time-limit")
            else:
                self.event("time_limit", "alarm", why + ": safe state")
                await self._safe_state(why)
            await self.machine.wait_until(_leaves(state))

    # ------------------------------------------------------------------ MonitorSink

    def on_samples(self, rows: list[TelemetryRow]) -> None:
        self.journal.record_telemetry(rows)

    async def on_limit(
        self, role: str, reading: str, level: LimitLevel, value: object, limits: Limits
    ) -> None:
        text = f"{role}.{reading} = {value} is {level}"
        if level == "red":
            self.event("limit_red", "alarm", text)
            if self.machine.state in (RunState.RUNNING, RunState.PAUSED):
                await self.commands.execute("hold", source="monitor")
        elif level == "yellow":
            self.event("limit_yellow", "warning", text)
        else:
            self.event("limit_green", "info", text)

    async def on_watchdog(self, spec: WatchdogSpec, values: dict[str, object]) -> None:
        shown = ", ".join(f"{k} = {v}" for k, v in values.items())
        message = f"watchdog {spec.name}: {spec.when} ({shown}) {spec.message}".strip()
        self.event("watchdog", spec.severity, message)
        if spec.then == "hold" and self.machine.state in (RunState.RUNNING, RunState.PAUSED):
            await self.commands.execute("hold", source=f"watchdog:{spec.name}")
        elif spec.then == "abort" and not self.machine.state.terminal:
            await self.commands.execute("abort", source=f"watchdog:{spec.name}")
        elif spec.then == "safe":
            await self._safe_state(message)

    async def on_device_event(self, role: str, event: DeviceEvent) -> None:
        self.event(f"device_{event.code}", "alarm", f"{role}: {event}")

    async def on_sample_error(self, role: str, error: DeviceError) -> None:
        self.event("sample_failed", "warning", f"{role}: {error}")

    # ------------------------------------------------------------------ RunControl

    def check_parameter(self, name: str, value: str) -> Verdict | None:
        state = self.machine.state if hasattr(self, "machine") else RunState.IDLE
        return check_parameter_value(self.protocol, name, value, state)

    async def set_parameter(self, name: str, value: str) -> str:
        new = param_value(value)
        default = self.protocol.parameters[name].quantity()
        if hasattr(default, "dimensionless") and default.dimensionless and isinstance(new, float):
            new = Q_(new, "dimensionless").to(default.units)
        self.values.params[name] = new
        self._save_params()
        return f"{name} = {value}"

    def waiting_for_confirmation(self) -> str | None:
        return self.steps.waiting_crew

    async def confirm(self, step: str) -> str:
        if not self.steps.confirm(step):
            raise CommandRefused(Reason.NOT_WAITING, f"{step} is not waiting")
        return f"crew step {step} confirmed"

    async def _crew_confirms(self, label: str) -> None:
        await self.commands.execute(f"confirm {label}", source="simulated-crew")

    def current_step(self) -> str | None:
        return self.executor.at_step

    async def skip(self) -> str:
        key = self.executor.at_step
        self.executor.interrupt("skip")
        if self.machine.state is RunState.HOLDING:
            return f"step {key} will be skipped; release to go on"
        return f"step {key} skipped"

    async def lifecycle(self, trigger: str) -> str:
        action = self.steps.action
        if trigger == "pause":
            if action is not None and action.can_pause and not action.done:
                await action.pause()
                return "run paused; the device action in progress is paused where it is"
            return "run paused; no new step starts until resume"
        if trigger == "resume":
            if action is not None and action.paused and not action.done:
                await action.resume()
                return "run resumed; the paused device action goes on for its remainder"
            return "run resumed"
        if trigger == "hold":
            await self._after_hold("hold commanded", interrupt=True)
            return "holding: hardware in its safe state; release to go on"
        if trigger == "release":
            lost = [a.action_id for a in self.journal.actions() if a.state == "lost"]
            if lost:
                self._lost_acknowledged |= set(lost)
                self.journal.set_checkpoint("lost_acknowledged", sorted(self._lost_acknowledged))
            return "released: the step in progress runs again (pumps move only their remainder)"
        if trigger == "abort":
            stopping = self.executor.interrupt("abort")
            if not stopping and self._body is not None and not self._body.done():
                # no step to stop: end a wait between steps at once. Never both: a second
                # cancellation would cut short the step's own clean-up (the pump's stop)
                self._body.cancel()
            self._spawn(self._safe_state("aborted"))
            return "aborted: hardware going to its safe state"
        return trigger

    def status(self) -> dict[str, object]:
        crew = self.steps.waiting_crew
        return {
            "state": self.machine.state.value,
            "step": self.executor.at_step,
            "protocol_time_s": round(self.protocol_time(), 3),
            "steps_run": self.executor.steps_run,
            "waiting_for_crew": crew,
            "parameters": {k: param_text(v) for k, v in self.values.params.items()},
            "cells": {str(k): v for k, v in self.values.cells.items()},
            "telemetry": {k: str(v) for k, v in self.monitor.values().items()},
        }


def _leaves(state: RunState) -> Callable[[RunState], bool]:
    return lambda s: s is not state


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _real_time() -> float:
    """The host's real time, only to measure how long no process ran a run on real or scaled
    time (never for protocol timing: that is the Clock's)."""
    import time

    return time.time()


def _speed(clock: Clock) -> float:
    return float(getattr(clock, "factor", 1.0))
