"""``kiboauto run``, ``resume``, ``demo``: choose the devices and the clock, then drive a Run.

This module and ``cli.py`` are where real or simulated hardware is chosen (``--hil``: the
built-in rig simulated in this process; ``--station FILE``: devices on real lines, including a
``kiboauto hil serve`` out of process). ``--speed max`` runs on virtual time (days in seconds),
``--speed N`` on a clock N times faster than the wall (for hardware that keeps real time, 1).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from kiboauto.engine.resources import PowerBudget, PowerBudgetError, ResourceTally
from kiboauto.engine.run import Run, RunOptions, RunOutcome, check_parameter_value
from kiboauto.journal import JOURNAL_NAME, Journal, JournalError
from kiboauto.protocol.loader import LoadedProtocol, ProtocolError, load_protocol, load_text
from kiboauto.protocol.validate import validate
from kiboauto.station import (
    StationFile,
    default_station,
    load_station,
    open_station,
)

__all__ = ["RunRequest", "demo_main", "make_clock", "run_main", "run_request"]

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


@dataclass
class Ran:
    """What a run request left: the run (closed), the station it ran on and its power budget."""

    outcome: RunOutcome
    run: Run | None
    station: StationFile
    budget: PowerBudget


def run_request(
    request: RunRequest, console: Console, *, station: StationFile | None = None
) -> tuple[RunOutcome, Run | None]:
    """Validate, then run (or resume) on the chosen devices and clock. Raises UserError."""
    ran = run_request_full(request, console, station=station)
    return ran.outcome, ran.run


def run_request_full(
    request: RunRequest, console: Console, *, station: StationFile | None = None
) -> Ran:
    """:func:`run_request`, keeping the station and the power budget (for the dry-run figures)."""
    try:
        loaded, found = _load(request)
        station = station or found
    except ProtocolError as e:
        raise UserError(str(e)) from None
    except ConfigError as e:
        raise UserError(str(e)) from None
    problems = validate(loaded, station)
    if problems:
        raise UserError("\n".join(str(p) for p in problems))
    for name, value in (request.params or {}).items():
        refusal = check_parameter_value(loaded.protocol, name, value)
        if refusal is not None:  # before anything is journaled or moves
            raise UserError(f"--set {name}={value}: {refusal.message} [{refusal.reason.value}]")
    clock = make_clock("max" if request.dry_run else request.speed)
    options = RunOptions(
        params=dict(request.params or {}),
        auto_crew=request.auto_crew or request.dry_run,
        auto_release=request.dry_run,
        control_socket=True,
        stop_holding_after_s=2 * 86400.0 if isinstance(clock, VirtualClock) else None,
        sample_every={
            name: spec.sample_every
            for name, spec in station.devices.items()
            if spec.sample_every is not None
        },
    )
    display = _Progress(console, estimate_program(loaded.protocol), quiet=request.quiet)
    options.on_step = display.update
    holder: list[Run] = []
    allocation = station.allocations.power_w if station.allocations is not None else None
    try:
        budget = PowerBudget.from_station(
            station,
            allocation_w=allocation,
            protocol_time=lambda: holder[0].protocol_time() if holder else 0.0,
        )
    except PowerBudgetError as e:
        raise UserError(f"power: {e}") from None

    def power(role: str, what: str) -> contextlib.AbstractAsyncContextManager[None]:
        return budget.active(loaded.protocol.device_for(role), what)

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
                    power=power,
                )
            except (ValueError, JournalError) as e:
                raise UserError(str(e)) from None
            holder.append(run)
            with display.live():
                try:
                    return await run.execute()
                except ValueError as e:  # the run directory is in use by a live run
                    raise UserError(str(e), code=1) from None
                finally:
                    display.update(run)

    outcome = run_on(clock, main)
    run = holder[0] if holder else None
    if run is not None:
        run.close()
    return Ran(outcome, run, station, budget)


def run_main(request: RunRequest, console: Console) -> int:
    """``kiboauto run`` / ``resume``: run, then print the summary (and the dry-run figures).
    Exit 0 completed, 1 aborted or failed, 3 stopped while holding."""
    wall0 = time.monotonic()
    try:
        ran = run_request_full(request, console)
        outcome, run = ran.outcome, ran.run
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the step in progress was stopped (a pump journaled what it delivered); "
            f"'kiboauto resume {request.run_dir}' goes on from there"
        )
        return 130
    except JournalError as e:
        raise UserError(
            f"the run stopped because its journal failed: {e}. Hardware was put in its safe "
            f"state; fix the cause (disk full? permissions?) and 'kiboauto resume "
            f"{request.run_dir}'",
            code=1,
        ) from None
    wall = time.monotonic() - wall0
    if run is None:
        console.print(outcome.message)
        return 1
    _summary(console, run, outcome, wall)
    if request.dry_run:
        _dry_run_figures(console, run, ran.station, ran.budget)
    console.print(f"run directory: {run.run_dir}")
    return 0 if outcome.state is RunState.COMPLETED else 1


def demo_main(run_dir: Path | None, seed: int, quiet: bool, console: Console) -> int:
    """``kiboauto demo``: the protein-crystal example on the simulated rig, in virtual time."""
    from importlib import resources

    from kiboauto.engine.report import ReportError, render_report

    example = resources.files("kiboauto.examples").joinpath("protein-crystal.yaml")
    target = run_dir or Path(f"kiboauto-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (target / JOURNAL_NAME).exists():
        raise UserError(f"{target} already holds a run; give another --run-dir")
    from kiboauto.vision import warm_up

    t0 = time.monotonic()
    warm_up()  # compiles the vision kernels on a machine's first run (about 10 s), then cached
    if time.monotonic() - t0 > 2.0:
        console.print(
            f"compiled the vision kernels in {time.monotonic() - t0:.0f} s (first run on this "
            "machine only; cached from now on)"
        )
    with resources.as_file(example) as path:
        request = RunRequest(protocol=path, run_dir=target, quiet=quiet, auto_crew=True)
        wall0 = time.monotonic()
        outcome, run = run_request(request, console, station=demo_station(seed))
        wall = time.monotonic() - wall0
    if run is None:
        console.print(outcome.message)
        return 1
    _summary(console, run, outcome, wall)
    try:
        files = render_report(target)
        console.print(f"report: {files.html}")
    except ReportError as e:
        console.print(f"report not written: {e}")
    console.print(f"run directory: {target}")
    return 0 if outcome.state is RunState.COMPLETED else 1


def demo_station(seed: int) -> StationFile:
    """The built-in rig, its camera at 640x480 (4 um/px: the same field of view) so that 14 days
    of images every 6 h take seconds."""
    station = default_station()
    for spec in station.devices.values():
        if spec.driver == "opencv":
            spec.sim.options.update({"width": 640, "height": 480, "um_per_px": 4.0})
        spec.sim.seed = seed
    return station


def _summary(console: Console, run: Run, outcome: RunOutcome, wall: float) -> None:
    table = Table(title=f"run {run.protocol.name}: {outcome.state.value}", show_header=False)
    table.add_row("outcome", outcome.message)
    table.add_row("steps run", str(outcome.steps_run))
    table.add_row("protocol time", _dur(outcome.protocol_time_s))
    warp = outcome.protocol_time_s / wall if wall > 0 else 0.0
    table.add_row("wall time", f"{wall:.2f} s (x{warp:,.0f})")
    with Journal.open(run.run_dir) as journal:
        totals: dict[tuple[str, str], float] = {}
        for a in journal.actions():
            key = (a.device, a.kind)
            totals[key] = totals.get(key, 0.0) + (a.delivered_ul or 0.0)
        for (device, kind), ul in sorted(totals.items()):
            table.add_row(f"{device} {kind}", f"{ul:.3f} uL (confirmed by the device)")
        inspections = journal.rows("inspections")
        events = journal.rows("events")
        alarms = sum(1 for e in events if e["severity"] in ("alarm", "critical"))
        table.add_row("images inspected", str(len(inspections)))
        table.add_row("events", f"{len(events)} ({alarms} alarms)")
    for n, result in sorted(run.values.cells.items()):
        if "confluence" in result:
            table.add_row(f"cell {n}", f"confluence {100 * float(result['confluence']):.0f} %")
        else:
            table.add_row(
                f"cell {n}",
                f"{result.get('class', '?')}, {result.get('count', 0)} crystal(s), largest "
                f"{float(result.get('max_length_um', 0.0)):.0f} um",
            )
    console.print(table)


def _dry_run_figures(console: Console, run: Run, station: StationFile, budget: PowerBudget) -> None:
    plan = estimate_program(run.protocol)
    with Journal.open(run.run_dir) as journal:
        steps = journal.rows("steps")
    seen: dict[str, list[float]] = {}
    for row in steps:
        top = run.program.top_level(row["step"].split("@")[0])
        if row["started_protocol"] is None or row["ended_protocol"] is None:
            continue
        span = seen.setdefault(top, [row["started_protocol"], row["ended_protocol"]])
        span[0] = min(span[0], row["started_protocol"])
        span[1] = max(span[1], row["ended_protocol"])
    table = Table(title="step durations (protocol time)")
    for col in ("step", "kind", "shortest", "likely", "longest", "this dry run"):
        table.add_column(col)
    for p in plan:
        got = seen.get(p.label)
        table.add_row(
            p.label,
            p.kind,
            _dur(p.shortest_s),
            _dur(p.likely_s),
            _dur(p.longest_s),
            _dur(got[1] - got[0]) if got else "-",
        )
    console.print(table)
    tally = ResourceTally(station.allocations, budget=budget)
    for _label, step in run.program.crew_steps():
        tally.add_crew_step(step)  # type: ignore[arg-type]
    for size in run.steps.image_sizes:
        tally.add_image(size)
    with Journal.open(run.run_dir) as journal:
        tally.add_telemetry(len(journal.rows("telemetry")))
        tally.add_event(len(journal.rows("events")))
    s = tally.summary(max(run.protocol_time(), 1.0))
    res = Table(title="resources to request from the station operator")
    for col in ("resource", "this run", "allocation", "verdict"):
        res.add_column(col)
    power, crew, down = s["power"], s["crew"], s["downlink"]
    unknown = (
        f" (no figures for {', '.join(power['unknown_devices'])})"
        if power["unknown_devices"]
        else ""
    )
    res.add_row("peak power", f"{power['peak_w']:.1f} W{unknown}", _alloc(power), power["verdict"])
    res.add_row(
        "crew time",
        f"{crew['total_min']:.0f} min in all, {crew['per_day_min']:.1f} min/day",
        _alloc(crew),
        crew["verdict"],
    )
    res.add_row(
        "downlink",
        f"{down['total_mb']:.1f} MB in all ({down['images']} images, {down['telemetry_rows']} "
        f"telemetry rows, {down['events']} events), {down['per_day_mb']:.1f} MB/day",
        _alloc(down),
        down["verdict"],
    )
    console.print(res)


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
        waiting = run.steps.waiting_crew
        planned = [label for label, _ in run.program.crew_steps()]
        crew = (
            f"now: {waiting}"
            if waiting
            else (f"{planned[0]} (when reached)" if planned else "none")
        )
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


def _alloc(section: dict[str, Any]) -> str:
    value = section.get("allocation")
    return "-" if value is None else f"{value:g}"


def _dur(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.2f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
