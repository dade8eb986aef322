"""``kiboauto run``, ``resume``, ``demo``: choose the devices and the clock, then drive a Run.

This module and ``cli.py`` are where real or simulated hardware is chosen (``--hil``: the
built-in rig simulated in this process; ``--station FILE``: devices on real lines, including a
``kiboauto hil serve`` out of process). ``--speed max`` runs on virtual time (days in seconds),
``--speed N`` on a clock N times faster than the wall (for hardware that keeps real time, 1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kiboauto.clock import Clock, RealClock, ScaledClock, VirtualClock
from kiboauto.config import ConfigError
from kiboauto.engine.estimate import StepEstimate, estimate_program
from kiboauto.engine.machine import RunState
from kiboauto.engine.run import Run, RunOptions, RunOutcome
from kiboauto.journal import JOURNAL_NAME, Journal, JournalError
from kiboauto.protocol.loader import LoadedProtocol, ProtocolError, load_protocol, load_text
from kiboauto.protocol.validate import validate
from kiboauto.station import (
    StationFile,
    default_station,
    load_station,
    open_station,
)

__all__ = ["RunRequest", "make_clock", "run_request"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunRequest:
    """Everything ``kiboauto run`` / ``resume`` / ``demo`` was asked for."""

    protocol: Path | None
    run_dir: Path
    station: Path | None = None  # None: the built-in rig in this process (--hil)
    speed: str = "max"
    params: dict[str, str] | None = None
    dry_run: bool = False
    auto_crew: bool = False
    quiet: bool = False
    resume: bool = False


class UserError(Exception):
    """A mistake of the user's (bad file, wrong directory): printed without a traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def make_clock(speed: str) -> Clock:
    """``max``: virtual time; a number N: N times real time (1: real time)."""
    if speed == "max":
        return VirtualClock()
    try:
        factor = float(speed)
    except ValueError:
        raise UserError(f"--speed must be 'max' or a number > 0, not {speed!r}") from None
    if not factor > 0 or factor != factor or factor == float("inf"):
        raise UserError(f"--speed must be 'max' or a number > 0, not {speed!r}")
    return RealClock() if factor == 1 else ScaledClock(factor)


def run_on(clock: Clock, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    if isinstance(clock, VirtualClock):
        return clock.run(main())
    return asyncio.run(main())


def _station_text(station: StationFile) -> str:
    return yaml.safe_dump(station.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def _load(request: RunRequest) -> tuple[LoadedProtocol, StationFile]:
    """The protocol and station of a new run, or of the run in ``run_dir`` when resuming."""
    journal_file = request.run_dir / JOURNAL_NAME
    if request.resume or (request.protocol is None and journal_file.exists()):
        if not journal_file.exists():
            raise UserError(f"{request.run_dir} holds no run ({JOURNAL_NAME} is missing)")
        try:
            with Journal.open(journal_file) as journal:
                if not journal.has_run:
                    raise UserError(f"{journal_file} holds no run")
                record = journal.run()
        except JournalError as e:
            raise UserError(str(e)) from None
        loaded = load_text(record.protocol, f"{request.run_dir}/(journaled protocol)")
        if request.station is not None:
            station = load_station(request.station)
        else:
            data = yaml.safe_load(record.station) if record.station.strip() else None
            station = StationFile.model_validate(data) if data else default_station()
        return loaded, station
    if request.protocol is None:
        raise UserError("give a protocol file (or a run directory to resume)")
    loaded = load_protocol(request.protocol)
    station = default_station() if request.station is None else load_station(request.station)
    return loaded, station


def run_request(request: RunRequest, console: Console) -> tuple[RunOutcome, Run | None]:
    """Validate, then run (or resume) on the chosen devices and clock. Raises UserError."""
    try:
        loaded, station = _load(request)
    except ProtocolError as e:
        raise UserError(str(e)) from None
    except ConfigError as e:
        raise UserError(str(e)) from None
    problems = validate(loaded, station)
    if problems:
        raise UserError("\n".join(str(p) for p in problems))
    clock = make_clock("max" if request.dry_run else request.speed)
    options = RunOptions(
        params=dict(request.params or {}),
        auto_crew=request.auto_crew or request.dry_run,
        auto_release=request.dry_run,
        control_socket=True,
    )
    display = _Progress(console, estimate_program(loaded.protocol), quiet=request.quiet)
    options.on_step = display.update
    holder: list[Run] = []

    async def main() -> RunOutcome:
        async with open_station(station, clock) as opened:
            missing = {
                role: loaded.protocol.device_for(role)
                for role in loaded.protocol.roles
                if loaded.protocol.device_for(role) not in opened.devices
            }
            if missing:
                reasons = "; ".join(
                    f"{role} -> {name}: {opened.failures.get(name, 'not in the station')}"
                    for role, name in missing.items()
                )
                raise UserError(f"devices not available: {reasons}", code=1)
            try:
                run = Run(
                    loaded.protocol,
                    loaded.text,
                    opened.devices,
                    _station_text(station),
                    request.run_dir,
                    clock,
                    options,
                )
            except (ValueError, JournalError) as e:
                raise UserError(str(e)) from None
            holder.append(run)
            with display.live():
                try:
                    return await run.execute()
                finally:
                    display.update(run)

    outcome = run_on(clock, main)
    run = holder[0] if holder else None
    if run is not None:
        run.close()
    return outcome, run


class _Progress:
    """The live display: step, protocol time, wall time, ETA, next crew action."""

    def __init__(self, console: Console, plan: list[StepEstimate], *, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet or not console.is_terminal
        self.planned_s = sum(p.likely_s for p in plan)
        self.crew = [p.label for p in plan if p.kind == "crew"]
        self._live: Live | None = None
        self._t0 = time.monotonic()
        self._shown = 0.0
        self._last_line = 0.0

    def live(self) -> Any:
        import contextlib

        if self.quiet:
            return contextlib.nullcontext()
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        return self._live

    def update(self, run: Run) -> None:
        now = time.monotonic()  # display throttling only: never protocol timing
        if now - self._shown < 0.2:
            return
        self._shown = now
        t = run.protocol_time()
        wall = now - self._t0
        warp = t / wall if wall > 0 else 0.0
        left = max(0.0, self.planned_s - t)
        eta = left / warp if warp > 0 else float("inf")
        step = run.executor.at_step or "-"
        crew = run.steps.waiting_crew or (self.crew[0] if self.crew else "none")
        holding = run.machine.state is RunState.HOLDING
        if self._live is None:
            if now - self._last_line >= 5.0 and not self.quiet:
                self._last_line = now
                self.console.print(f"{_dur(t)} protocol time, step {step}")
            return
        table = Table.grid(padding=(0, 2))
        table.add_row("state", run.machine.state.value)
        table.add_row("step", step)
        table.add_row("protocol time", f"{_dur(t)} of ~{_dur(self.planned_s)}")
        table.add_row("wall time", f"{wall:.1f} s (x{warp:,.0f})")
        table.add_row("ETA (wall)", "-" if eta == float("inf") else f"{eta:.1f} s")
        table.add_row("next crew action", crew)
        table.add_row("next ground decision", "now: holding" if holding else "none pending")
        self._live.update(table, refresh=True)


def _dur(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.2f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
