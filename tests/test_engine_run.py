"""The experiment engine end to end, in process: a Run on the simulated rig in virtual time.

Every test drives a real :class:`~kiboauto.engine.run.Run` (real SQLite journal in a temporary run
directory, real drivers talking bytes to the simulators through memory pipes, the vision core on
rendered images) on a :class:`~kiboauto.clock.VirtualClock`: days of protocol time take seconds,
and commands land at exact protocol times. What a pump delivered is checked three ways: the plan
(from the protocol), the journal (``actions`` rows, read back from the device) and the simulator's
own ground truth (``truth()``: volume moved since power-on, which no host command can clear).

The kill tests of the engine (``kiboauto run`` SIGKILLed and resumed, out of process) are in
``tests/test_engine_kill.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kiboauto.cli import app
from kiboauto.clock import VirtualClock
from kiboauto.drivers.streams import ByteStream, Connector, MemoryPipe
from kiboauto.drivers.trace import ByteTrace
from kiboauto.drivers.transport import SerialTransport
from kiboauto.engine.machine import Reason, RunState
from kiboauto.engine.program import resolve
from kiboauto.engine.run import Run, RunOptions, RunOutcome
from kiboauto.engine.steps import VISION_VERSION
from kiboauto.journal import JOURNAL_NAME, Journal
from kiboauto.protocol.loader import LoadedProtocol, load_protocol, load_text
from kiboauto.protocol.model import (
    BranchStep,
    DispenseStep,
    GroupStep,
    Protocol,
    RepeatStep,
    StepBase,
    WithdrawStep,
)
from kiboauto.run_cmd import demo_station
from kiboauto.station import (
    DRIVERS,
    StationFile,
    build_device,
    default_station,
    open_station,
)

ROOT = Path(__file__).resolve().parents[1]
PROTEIN = ROOT / "examples" / "protein-crystal.yaml"
CELLS = ROOT / "examples" / "cell-culture.yaml"

# The truth() key that counts what each kind of simulated pump moved, by (driver, action kind).
TRUTH_KEYS = {
    ("newera", "dispense"): "infused_ul",
    ("newera", "withdraw"): "withdrawn_ul",
    ("cavro", "dispense"): "dispensed_ul",
    ("cavro", "withdraw"): "aspirated_ul",
}
NEWERA_STEP_UL = 0.001  # one count of the New Era's volume display, the driver's resolution

# Three 40 uL dispenses at 20 uL/min (2 min each) on pump1, with waits between them.
THREE_DISPENSES = """\
name: three_dispenses
roles:
  pump:
    kind: SyringePump
    device: pump1
    syringe: 1 mL
parameters:
  protein_volume: {default: 40 uL, min: 1 uL, max: 100 uL}
steps:
  - id: d1
    dispense: {pump: pump, volume: 40 uL, rate: 20 uL/min}
  - id: w1
    wait: 1 min
  - id: d2
    dispense: {pump: pump, volume: protein_volume, rate: 20 uL/min}
  - id: w2
    wait: 30 s
  - id: d3
    dispense: {pump: pump, volume: 40 uL, rate: 20 uL/min}
"""

# The same with a long wait and a fourth dispense, for skip.
FOUR_DISPENSES = (
    THREE_DISPENSES
    + """\
  - id: w3
    wait: 10 min
  - id: d4
    dispense: {pump: pump, volume: 40 uL, rate: 20 uL/min}
"""
)


# ------------------------------------------------------------------------------------ helpers


def _pump_station() -> StationFile:
    """The default rig's New Era pump alone, simulated in this process."""
    return StationFile(devices={"pump1": default_station().devices["pump1"]})


def _protocol(text: str, name: str = "test.yaml") -> LoadedProtocol:
    return load_text(text, name)


def _plan(
    protocol: Protocol, params: Mapping[str, str] | None = None
) -> dict[tuple[str, str], float]:
    """What the protocol moves, in uL per (device, kind): pump steps times their repeats.

    Repeats with ``until`` and branches must not contain pump steps (their count would depend on
    the run); the examples do not.
    """
    values: dict[str, Any] = {n: p.quantity() for n, p in protocol.parameters.items()}
    for name, text in (params or {}).items():
        values[name] = resolve(text, {})
    totals: Counter[tuple[str, str]] = Counter()

    def pumps_in(steps: Iterable[StepBase]) -> bool:
        plan_before = dict(totals)
        walk(steps, 1)
        found = dict(totals) != plan_before
        totals.clear()
        totals.update(plan_before)
        return found

    def walk(steps: Iterable[StepBase], times: int) -> None:
        for step in steps:
            if isinstance(step, DispenseStep | WithdrawStep):
                args = step.dispense if isinstance(step, DispenseStep) else step.withdraw
                ul = float(resolve(args.volume, values, "uL").magnitude)
                totals[(protocol.device_for(args.pump), step.kind)] += ul * times
            elif isinstance(step, GroupStep):
                walk(step.group, times)
            elif isinstance(step, RepeatStep):
                args = step.repeat
                if args.until is not None or args.times is None:
                    assert not pumps_in(args.steps), "pump steps in an open-ended repeat"
                    continue
                walk(args.steps, times * args.times)
            elif isinstance(step, BranchStep):
                assert not pumps_in([*step.branch.then, *step.branch.else_]), "pumps in a branch"

    walk(protocol.steps, 1)
    return dict(totals)


def _journal_totals(journal: Journal) -> dict[tuple[str, str], float]:
    totals: Counter[tuple[str, str]] = Counter()
    for a in journal.actions():
        totals[(a.device, a.kind)] += a.delivered_ul or 0.0
    return dict(totals)


def _per_step(journal: Journal) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for a in journal.actions():
        totals[a.step] += a.delivered_ul or 0.0
    return dict(totals)


def _truth_totals(
    station: StationFile, truths: Mapping[str, Mapping[str, Any]], keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], float]:
    return {
        (device, kind): float(truths[device][TRUTH_KEYS[(station.devices[device].driver, kind)]])
        for device, kind in keys
    }


def _readback_slack(journal: Journal) -> float:
    """How far the simulator's truth may be from the journal: an action stopped early (hold,
    skip, abort) is read back from the pump's display, to one display step (``step_ul``) of
    what it moved; an action that ran to its end moved exactly its target."""
    return sum(a.marker.step_ul for a in journal.actions() if a.error) + 1e-6


def _assert_no_step_twice(journal: Journal) -> Counter[str]:
    """No step key has two 'ok' rows; returns the count of ok rows per key."""
    ok = Counter(r["step"] for r in journal.rows("steps") if r["outcome"] == "ok")
    twice = {k: n for k, n in ok.items() if n > 1}
    assert not twice, f"steps that ran to 'ok' more than once: {twice}"
    return ok


def _codes(journal: Journal) -> list[str]:
    return [e["code"] for e in journal.rows("events")]


def _triggers(journal: Journal) -> list[str]:
    return [t["trigger"] for t in journal.rows("transitions")]


Controller = Callable[[Run, VirtualClock, dict[str, Any]], Awaitable[None]]


@dataclass
class Finished:
    """A finished in-process run: how it ended, the simulators' truth at the end, its journal."""

    outcome: RunOutcome
    truths: dict[str, dict[str, Any]]
    run_dir: Path
    seen: dict[str, Any] = field(default_factory=dict)

    def journal(self) -> Journal:
        return Journal.open(self.run_dir)


def _run(
    loaded: LoadedProtocol,
    station: StationFile,
    run_dir: Path,
    options: RunOptions | None = None,
    controller: Controller | None = None,
) -> Finished:
    """Run ``loaded`` to its end on the in-process rig in virtual time; ``controller(run, clock,
    seen)`` runs beside it (commands at chosen protocol times)."""
    clock = VirtualClock()
    opts = options or RunOptions()
    opts.control_socket = False
    seen: dict[str, Any] = {"simulators": None}

    async def main() -> Finished:
        async with open_station(station, clock) as opened:
            assert not opened.failures, opened.failures
            seen["simulators"] = opened.simulators
            run = Run(loaded.protocol, loaded.text, opened.devices, "", run_dir, clock, opts)
            try:
                task = asyncio.create_task(run.execute())
                if controller is not None:
                    await controller(run, clock, seen)
                outcome = await task
            finally:
                run.close()
            truths = {n: s.truth() for n, s in opened.simulators.items() if hasattr(s, "truth")}
        return Finished(outcome, truths, run_dir, seen)

    return clock.run(main())


# ------------------------------------------------------------------------------ the examples

DEMO_SEED = 7


def _demo(run_dir: Path) -> Finished:
    """What ``kiboauto demo`` runs: the protein-crystal example on the demo station (its camera
    at 640x480) with the simulated crew, in virtual time."""
    options = RunOptions(auto_crew=True)
    return _run(load_protocol(PROTEIN), demo_station(DEMO_SEED), run_dir, options)


@pytest.fixture(scope="module")
def protein_demo(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One demo run (14 days of protocol time, ~230 inspections), shared by the tests that read
    it."""
    return _demo(tmp_path_factory.mktemp("first") / "run")


@pytest.mark.req("KA-ENG-001")
def test_protein_crystal_example_completes_and_every_volume_is_the_plan(
    protein_demo: Finished,
) -> None:
    loaded = load_protocol(PROTEIN)
    station = demo_station(DEMO_SEED)
    done = protein_demo
    assert done.outcome.state is RunState.COMPLETED, done.outcome.message

    plan = _plan(loaded.protocol)
    assert plan == {
        ("valve1", "withdraw"): 200.0,
        ("valve1", "dispense"): 20.0 + 4 * 2.0,
        ("pump1", "dispense"): 10.0 + 4 * 2.0,
    }
    with done.journal() as journal:
        assert _triggers(journal) == ["load", "start", "complete"]
        totals = _journal_totals(journal)
        assert totals.keys() == plan.keys()
        for key, ul in plan.items():
            assert totals[key] == pytest.approx(ul, abs=1e-6), key
        truth = _truth_totals(station, done.truths, plan)
        for key, ul in plan.items():
            assert truth[key] == pytest.approx(ul, abs=1e-6), (key, done.truths[key[0]])
        assert all(a.state == "ended" and a.error is None for a in journal.actions())

        ok = _assert_no_step_twice(journal)
        leaves = (
            ["warm_up", "2", "prime"]
            + [f"prime.group.{i}" for i in range(1, 6)]
            + ["fill_cells"]
            + [f"fill_cells.group.{i}" for i in range(1, 13)]
        )
        for key in leaves:
            assert ok[key] == 1, key
        steps = journal.rows("steps")
        assert all(r["outcome"] == "ok" for r in steps), [r for r in steps if r["outcome"] != "ok"]
        # imaging until a crystal is long enough, then on at the new temperature until day 14:
        # every round inspects each cell once, one round every 6 h of protocol time
        rounds = 0
        for repeat in ("image_cells", "keep_imaging"):
            seen = sorted({int(k.split("@")[1]) for k in ok if k.startswith(f"{repeat}.do.")})
            assert seen == list(range(1, len(seen) + 1)) and len(seen) <= 56, (repeat, seen)
            for n in seen:
                for cell in range(1, 5):
                    assert ok[f"{repeat}.do.{cell}@{n}"] == 1, (repeat, n, cell)
            starts = [
                r["started_protocol"] for r in steps if r["step"].startswith(f"{repeat}.do.1@")
            ]
            gaps = [b - a for a, b in itertools.pairwise(starts)]
            assert all(g == pytest.approx(6 * 3600, abs=1.0) for g in gaps), (repeat, gaps)
            rounds += len(seen)
        assert done.outcome.protocol_time_s >= 14 * 86400 - 6 * 3600
        inspections = journal.rows("inspections")
        assert len(inspections) == 4 * rounds
        for row in inspections:
            data = (done.run_dir / row["image_path"]).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
            assert row["model_version"] == VISION_VERSION
            result = json.loads(row["result"])
            assert result["class"] in {"crystals", "precipitate", "clear", "other"}, result
            # measured at the demo camera's own scale, not the protocol's 2 um/px
            assert result["um_per_px"] == station.devices["camera1"].sim.options["um_per_px"] == 4.0
        assert len(journal.rows("telemetry")) > 0
        assert "run_ended" in _codes(journal)


@pytest.mark.req("KA-ENG-001")
def test_cell_culture_example_completes_with_the_simulated_crew(tmp_path: Path) -> None:
    loaded = load_protocol(CELLS)
    station = demo_station(3)
    # The camera renders phase-contrast cell fields, seeded at 60 % (the simulation does not see
    # the crew's passage, so the culture stays confluent): passage at 50 % so the branch with the
    # crew step is taken every cycle.
    station.devices["camera1"].sim.options.update(
        {"scene": "cells", "cells": 2, "seeded_confluence": 0.6}
    )
    params = {"passage_confluence": "50 percent"}
    options = RunOptions(auto_crew=True, params=params)
    done = _run(loaded, station, tmp_path / "run", options)
    assert done.outcome.state is RunState.COMPLETED, done.outcome.message
    plan = _plan(loaded.protocol, params)
    assert plan == {
        ("valve1", "withdraw"): 800.0,
        ("valve1", "dispense"): 800.0,
        ("pump1", "dispense"): 800.0,
    }
    with done.journal() as journal:
        totals = _journal_totals(journal)
        truth = _truth_totals(station, done.truths, plan)
        for key, ul in plan.items():
            assert totals[key] == pytest.approx(ul, abs=1e-6), key
            assert truth[key] == pytest.approx(ul, abs=1e-6), key
        confirms = [c for c in journal.rows("commands") if c["command"] == "confirm"]
        assert len(confirms) == 4, confirms
        for c in confirms:
            assert c["source"] == "simulated-crew"
            assert c["accepted"] == 1 and c["reason_code"] == Reason.OK
            assert json.loads(c["args"]) == {"step": "passage"}
        ok = _assert_no_step_twice(journal)
        assert sorted(k for k in ok if k.startswith("passage")) == [
            f"passage@{n}" for n in range(1, 5)
        ]
        assert _codes(journal).count("crew_request") == 4
        assert sum(1 for e in journal.rows("events") if "passaged" in e["message"]) == 4
        # the confluence read off the rendered cell fields: over the passage level from the
        # seeded 60 % on, growing (measured 0.60-0.95 over the eight fields)
        conf = [json.loads(r["result"])["confluence"] for r in journal.rows("inspections")]
        assert len(conf) == 8
        assert all(0.5 <= c <= 1.0 for c in conf), conf
        assert conf[-1] > conf[0] + 0.2, conf


WALL_COLUMNS = {"t_wall", "started_wall", "ended_wall", "created"}
COMPARED_TABLES = (
    "runs",
    "transitions",
    "commands",
    "steps",
    "actions",
    "events",
    "inspections",
    "telemetry",
    "checkpoints",
)


def _table(path: Path, table: str) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY rowid")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        conn.close()
    return [
        {n: v for n, v in zip(names, row, strict=True) if n not in WALL_COLUMNS} for row in rows
    ]


@pytest.mark.req("KA-ENG-001")
def test_two_demo_runs_with_the_same_seed_journal_the_same(
    protein_demo: Finished, tmp_path: Path
) -> None:
    first = protein_demo.run_dir
    second = _demo(tmp_path / first.name).run_dir  # the same name: the journal holds it
    assert first != second
    for table in COMPARED_TABLES:
        a = _table(first / JOURNAL_NAME, table)
        b = _table(second / JOURNAL_NAME, table)
        assert len(a) == len(b), f"{table}: {len(a)} rows vs {len(b)}"
        for ra, rb in zip(a, b, strict=True):
            assert ra == rb, f"{table} differs:\n{ra}\n{rb}"
        assert a or table in ("commands",), f"{table} is empty"
    images = sorted(p.relative_to(first) for p in (first / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(second) for p in (second / "images").rglob("*.png"))


# ------------------------------------------------------------------------------ commands


def _infused(seen: Mapping[str, Any]) -> float:
    return float(seen["simulators"]["pump1"].truth()["infused_ul"])


def _motion(seen: Mapping[str, Any]) -> str:
    return str(seen["simulators"]["pump1"].truth()["motion"])


@pytest.mark.req("KA-ENG-001")
def test_commands_at_chosen_protocol_times_never_fire_a_step_twice(tmp_path: Path) -> None:
    """pause/resume mid-dispense, set, hold/release mid-dispense, skip a wait, skip a dispense."""
    loaded = _protocol(FOUR_DISPENSES)
    log: list[tuple[float, str, Reason, RunState, str | None]] = []

    async def controller(run: Run, clock: VirtualClock, seen: dict[str, Any]) -> None:
        async def at(t: float, text: str) -> Reason:
            await clock.sleep(t - clock.now())
            reply = await run.commands.execute(text)
            log.append((clock.now(), text, reply.reason, reply.state, run.executor.at_step))
            return reply.reason

        assert await at(30, "pause") is Reason.OK  # d1 is 10 uL in
        paused_at = _infused(seen)
        assert paused_at == pytest.approx(10.0, abs=0.5)
        assert await at(31, "pause") is Reason.ALREADY_IN_STATE
        assert await at(32, "release") is Reason.WRONG_STATE
        assert await at(33, "confirm d1") is Reason.NOT_WAITING
        await clock.sleep(20)
        assert _motion(seen) == "paused"
        assert _infused(seen) == pytest.approx(paused_at, abs=1e-9)  # not a drop moved
        assert run.status()["state"] == "paused"
        assert await at(60, "resume") is Reason.OK
        assert await at(61, "resume") is Reason.ALREADY_IN_STATE
        assert await at(70, "set protein_volume=6 uL") is Reason.OK  # d2 is not started yet
        assert await at(71, "set protein_volume=6 s") is Reason.WRONG_UNIT
        assert await at(72, "set protein_volume=500 uL") is Reason.OUT_OF_RANGE
        assert await at(73, "set nothing=1 uL") is Reason.UNKNOWN_PARAMETER
        # d1 ends at ~150, w1 at ~210, d2 (6 uL) at ~228, w2 at ~258; d3 from ~258
        assert await at(300, "hold") is Reason.OK
        assert run.executor.at_step == "d3"
        await clock.sleep(10)
        assert _motion(seen) == "stopped"
        held_at = _infused(seen)
        assert held_at == pytest.approx(40 + 6 + 14, abs=1.0)
        assert await at(320, "resume") is Reason.WRONG_STATE
        assert await at(330, "release") is Reason.OK  # d3 runs again for its remainder
        await clock.sleep(1)
        assert _motion(seen) == "infusing"
        # d3 ends at ~408; w3 (10 min) would end at ~1008
        assert await at(500, "skip") is Reason.OK
        await clock.sleep(1)
        assert run.executor.at_step == "d4"
        assert await at(560, "skip") is Reason.OK  # d4 is 20 uL in: stopped there

    done = _run(loaded, _pump_station(), tmp_path / "run", controller=controller)
    assert done.outcome.state is RunState.COMPLETED, done.outcome.message
    where = {text: step for _, text, _, _, step in log}
    assert where["pause"] == "d1" and where["hold"] == "d3" and where["release"] == "d3"
    assert where["skip"] == "d4"
    with done.journal() as journal:
        ok = _assert_no_step_twice(journal)
        assert ok == {"d1": 1, "w1": 1, "d2": 1, "w2": 1, "d3": 1}
        outcomes = [(r["step"], r["outcome"]) for r in journal.rows("steps")]
        assert outcomes == [
            ("d1", "ok"),
            ("w1", "ok"),
            ("d2", "ok"),
            ("w2", "ok"),
            ("d3", "interrupted: hold"),
            ("d3", "ok"),
            ("w3", "interrupted: skip"),
            ("d4", "interrupted: skip"),
        ]
        assert _triggers(journal) == [
            "load", "start", "pause", "resume", "hold", "release", "complete"
        ]  # fmt: skip
        commands = [
            (c["command"], c["accepted"], c["reason_code"]) for c in journal.rows("commands")
        ]
        assert commands == [
            (text.split()[0], int(reason is Reason.OK), reason.value)
            for _, text, reason, _, _ in log
        ]
        per_step = _per_step(journal)
        assert per_step["d1"] == pytest.approx(40.0, abs=NEWERA_STEP_UL)
        assert per_step["d2"] == pytest.approx(6.0, abs=NEWERA_STEP_UL)  # the value set
        assert per_step["d3"] == pytest.approx(40.0, abs=NEWERA_STEP_UL)
        assert per_step["d4"] == pytest.approx(20.0, abs=1.0)
        d3 = [a for a in journal.actions() if a.step == "d3"]
        assert len(d3) == 2 and d3[0].error and d3[1].marker.target_ul < 40.0  # the remainder
        assert sum(a.delivered_ul or 0.0 for a in d3) == pytest.approx(40.0, abs=NEWERA_STEP_UL)
        total = sum(per_step.values())
        slack = _readback_slack(journal)
        assert slack < 0.03  # two stops, 0.01 uL each
        assert done.truths["pump1"]["infused_ul"] == pytest.approx(total, abs=slack)
        codes = _codes(journal)
        assert codes.count("step_skipped") == 2 and "holding" in codes


@pytest.mark.req("KA-ENG-001")
def test_abort_mid_dispense_stops_the_pump_and_journals_what_it_delivered(tmp_path: Path) -> None:
    loaded = _protocol(THREE_DISPENSES)

    async def controller(run: Run, clock: VirtualClock, seen: dict[str, Any]) -> None:
        await clock.sleep(240)  # d2 runs from ~180 to ~300
        assert run.executor.at_step == "d2"
        reply = await run.commands.execute("abort")
        assert reply.accepted and reply.state is RunState.ABORTED, reply
        await clock.sleep(5)
        assert _motion(seen) == "stopped"
        later = await run.commands.execute("resume")
        assert later.reason is Reason.TERMINAL

    done = _run(loaded, _pump_station(), tmp_path / "run", controller=controller)
    assert done.outcome.state is RunState.ABORTED
    assert done.outcome.message.startswith("aborted")
    with done.journal() as journal:
        assert _triggers(journal) == ["load", "start", "abort"]
        _assert_no_step_twice(journal)
        assert [(r["step"], r["outcome"]) for r in journal.rows("steps")][-1] == (
            "d2",
            "interrupted: abort",
        )
        per_step = _per_step(journal)
        assert set(per_step) == {"d1", "d2"}
        assert per_step["d2"] == pytest.approx(20.0, abs=1.0)
        assert all(a.state == "ended" for a in journal.actions())
        total = sum(per_step.values())
        slack = _readback_slack(journal)
        assert done.truths["pump1"]["infused_ul"] == pytest.approx(total, abs=slack)
        assert [c["command"] for c in journal.rows("commands")] == ["abort", "resume"]


LIFECYCLE = ("pause", "resume", "hold", "release")


@pytest.mark.req("KA-ENG-001")
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=120.0), st.sampled_from(LIFECYCLE)),
        min_size=1,
        max_size=10,
    )
)
def test_random_pause_and_hold_sequences_deliver_the_plan_once(
    sequence: list[tuple[float, str]],
) -> None:
    loaded = _protocol(THREE_DISPENSES)
    answers: list[tuple[float, str, Reason]] = []

    async def controller(run: Run, clock: VirtualClock, seen: dict[str, Any]) -> None:
        for delay, command in sequence:
            await clock.sleep(delay)
            reply = await run.commands.execute(command)
            answers.append((clock.now(), command, reply.reason))
        # let it finish: whatever the sequence left, go on
        for command in ("release", "resume"):
            reply = await run.commands.execute(command)
            answers.append((clock.now(), command, reply.reason))

    with tempfile.TemporaryDirectory() as tmp:
        done = _run(loaded, _pump_station(), Path(tmp) / "run", controller=controller)
        assert done.outcome.state is RunState.COMPLETED, (done.outcome.message, answers)
        for _, _, reason in answers:
            assert reason in (
                Reason.OK,
                Reason.WRONG_STATE,
                Reason.ALREADY_IN_STATE,
                Reason.TERMINAL,
            ), answers
        with done.journal() as journal:
            ok = _assert_no_step_twice(journal)
            assert ok == {"d1": 1, "w1": 1, "d2": 1, "w2": 1, "d3": 1}, answers
            step_ul = max(a.marker.step_ul for a in journal.actions())
            per_step = _per_step(journal)
            assert set(per_step) == {"d1", "d2", "d3"}
            for key, ul in per_step.items():
                assert ul == pytest.approx(40.0, abs=step_ul * 1.01), (key, answers)
            assert sum(per_step.values()) == pytest.approx(120.0, abs=step_ul * 1.01)
            slack = _readback_slack(journal)
            truth = float(done.truths["pump1"]["infused_ul"])
            assert truth == pytest.approx(sum(per_step.values()), abs=slack), answers
            # each stop is read back to the display's resolution and rounds either way: over
            # 300 random examples the truth stayed within half a step of the plan
            assert truth == pytest.approx(120.0, abs=step_ul * 1.01), answers


# ------------------------------------------------------------------------------ resume


class Cable:
    """A cable between a driver and a simulator in this process, which can be cut.

    Cutting it is what a crash of the host process looks like from the device: the line goes
    quiet, nothing the dying process still tries to send arrives, and the pump carries on with
    whatever it was doing.
    """

    def __init__(self, simulator: Any) -> None:
        self.simulator = simulator
        self.is_cut = False
        self._ends: list[ByteStream] = []

    async def connect(self) -> ByteStream:
        if self.is_cut:
            raise ConnectionError(f"{self.simulator.name}: the cable is cut")
        pipe = MemoryPipe(self.simulator.name)
        self.simulator.start_serving(pipe.device)
        self._ends.append(pipe.host)
        return pipe.host

    async def cut(self) -> None:
        self.is_cut = True
        for end in self._ends:
            await end.close()


class Rig:
    """The pump's simulator, kept across processes; each "process" gets its own driver on it."""

    def __init__(self, station: StationFile, clock: VirtualClock) -> None:
        self.station = station
        self.clock = clock
        self.simulators: dict[str, Any] = {}
        self.power_on()

    def power_on(self, name: str | None = None) -> None:
        """(Re)build simulators: a fresh one is a device that was power-cycled."""
        for dev, spec in self.station.devices.items():
            if name is None or dev == name:
                _, self.simulators[dev] = build_device(dev, spec, self.clock, ByteTrace())

    async def drivers(self, generation: int) -> tuple[dict[str, Any], list[Cable]]:
        import importlib

        devices: dict[str, Any] = {}
        cables: list[Cable] = []
        for name, spec in self.station.devices.items():
            module, _, attr = DRIVERS[spec.driver].partition(":")
            cls = getattr(importlib.import_module(module), attr)
            cable = Cable(self.simulators[name])
            connector: Connector = cable.connect
            transport = SerialTransport(
                name, connector, port=f"sim://{name}/{generation}", clock=self.clock
            )
            device = cls(name, transport, clock=self.clock, **spec.options)
            await device.connect()
            devices[name] = device
            cables.append(cable)
        return devices, cables


@dataclass
class Process:
    """One engine "process": a Run on its own drivers and cables, running as a task."""

    run: Run
    task: asyncio.Task[RunOutcome]
    devices: dict[str, Any]
    cables: list[Cable]

    async def crash(self) -> None:
        """Die where it is: the journal is closed with nothing more written, the cables go
        dead, and the task is cancelled (whatever its clean-up tries reaches nothing)."""
        self.run.close()
        for cable in self.cables:
            await cable.cut()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                await device.transport.close()

    async def finish(self) -> RunOutcome:
        try:
            return await self.task
        finally:
            self.run.close()
            for device in self.devices.values():
                with contextlib.suppress(Exception):
                    await device.close()


async def _start(loaded: LoadedProtocol, rig: Rig, run_dir: Path, generation: int) -> Process:
    devices, cables = await rig.drivers(generation)
    run = Run(
        loaded.protocol,
        loaded.text,
        devices,
        "",
        run_dir,
        rig.clock,
        RunOptions(control_socket=False),
    )
    return Process(run, asyncio.create_task(run.execute()), devices, cables)


@contextlib.asynccontextmanager
async def _rig(clock: VirtualClock) -> AsyncIterator[Rig]:
    rig = Rig(_pump_station(), clock)
    try:
        yield rig
    finally:
        for sim in rig.simulators.values():
            await sim.aclose()


@pytest.mark.req("KA-ENG-001")
def test_resume_follows_a_moving_pump_and_moves_only_the_remainder(tmp_path: Path) -> None:
    """Crash mid-dispense (the pump goes on), resume at once: the open intent is followed to its
    end. Then pause mid-dispense (the pump stops where it is), crash, resume: the open intent is
    reconciled with what the pump delivered and only the rest is dispensed."""
    loaded = _protocol(THREE_DISPENSES)
    clock = VirtualClock()
    run_dir = tmp_path / "run"
    notes: dict[str, Any] = {}

    async def main() -> RunOutcome:
        async with _rig(clock) as rig:
            pump = rig.simulators["pump1"]
            first = await _start(loaded, rig, run_dir, 1)
            await clock.sleep(60)  # d1 (0-120 s) is 20 uL in
            assert first.run.executor.at_step == "d1" and pump.truth()["motion"] == "infusing"
            await first.crash()
            notes["after_crash"] = pump.truth()["motion"]
            assert clock.now() < 100  # restarted while d1 still moves
            second = await _start(loaded, rig, run_dir, 2)
            assert second.run.resumed
            # the dying process's driver retried for a while (virtual seconds); d1 ends at
            # 120 s, w1 at 180 s: by 226 s d2 is well under way
            await clock.sleep(226 - clock.now())
            assert second.run.executor.at_step == "d2"
            assert (await second.run.commands.execute("pause")).accepted
            notes["paused_at"] = pump.truth()["infused_ul"]
            await clock.sleep(10)
            await second.crash()
            await clock.sleep(20)  # nobody runs for a while: the paused pump stays put
            assert pump.truth()["infused_ul"] == pytest.approx(notes["paused_at"], abs=1e-9)
            third = await _start(loaded, rig, run_dir, 3)
            await clock.sleep(5)
            assert third.run.machine.state is RunState.PAUSED  # resumed where it was
            assert (await third.run.commands.execute("resume")).accepted
            outcome = await third.finish()
            notes["truth"] = pump.truth()
            return outcome

    outcome = clock.run(main())
    assert outcome.state is RunState.COMPLETED, outcome.message
    assert notes["after_crash"] == "infusing"  # the crash did not stop the pump
    with Journal.open(run_dir) as journal:
        codes = _codes(journal)
        assert codes.count("action_followed") == 1
        assert codes.count("action_reconciled") >= 1
        assert codes.count("run_resumed") == 2
        ok = _assert_no_step_twice(journal)
        assert ok == {"d1": 1, "w1": 1, "d2": 1, "w2": 1, "d3": 1}
        actions = journal.actions()
        assert [a.step for a in actions] == ["d1", "d2", "d2", "d3"]
        assert all(a.state == "ended" for a in actions)
        d1, d2a, d2b, _ = actions
        assert d1.result is not None and d1.delivered_ul == pytest.approx(
            40.0, abs=d1.marker.step_ul
        )
        # the paused part, then only the rest
        assert d2a.delivered_ul == pytest.approx(notes["paused_at"] - 40.0, abs=d2a.marker.step_ul)
        assert d2b.marker.target_ul == pytest.approx(40.0 - (d2a.delivered_ul or 0.0), abs=1e-9)
        per_step = _per_step(journal)
        for key in ("d1", "d2", "d3"):
            assert per_step[key] == pytest.approx(40.0, abs=0.0101), key
        assert _triggers(journal) == [
            "load", "start", "recover", "pause", "recover", "resume", "complete"
        ]  # fmt: skip
        slack = _readback_slack(journal) + 0.01
    assert notes["truth"]["infused_ul"] == pytest.approx(120.0, abs=slack)


@pytest.mark.req("KA-ENG-001")
def test_a_power_cycled_pump_loses_the_action_the_run_holds_then_skip_and_release(
    tmp_path: Path,
) -> None:
    loaded = _protocol(THREE_DISPENSES)
    clock = VirtualClock()
    run_dir = tmp_path / "run"
    notes: dict[str, Any] = {}

    async def main() -> RunOutcome:
        async with _rig(clock) as rig:
            first = await _start(loaded, rig, run_dir, 1)
            await clock.sleep(60)  # d1 is 20 uL in
            await first.crash()
            rig.power_on("pump1")  # the pump lost power with the computer: a fresh device
            second = await _start(loaded, rig, run_dir, 2)
            await second.run.machine.wait_until(RunState.HOLDING)
            notes["held_on"] = second.run.executor.at_step
            skip = await second.run.commands.execute("skip")
            notes["skip"] = skip.message
            assert skip.accepted and skip.state is RunState.HOLDING
            release = await second.run.commands.execute("release")
            assert release.accepted
            outcome = await second.finish()
            notes["truth"] = rig.simulators["pump1"].truth()
            return outcome

    outcome = clock.run(main())
    assert outcome.state is RunState.COMPLETED, outcome.message
    assert notes["held_on"] == "d1"
    assert "release" in notes["skip"]
    with Journal.open(run_dir) as journal:
        codes = _codes(journal)
        assert "action_lost" in codes and "holding" in codes and "step_skipped" in codes
        d1 = [a for a in journal.actions() if a.step == "d1"]
        assert [a.state for a in d1] == ["lost"]
        ok = _assert_no_step_twice(journal)
        assert "d1" not in ok and ok["d2"] == 1 and ok["d3"] == 1
        per_step = _per_step(journal)
        assert per_step["d2"] == pytest.approx(40.0) and per_step["d3"] == pytest.approx(40.0)
        assert _triggers(journal)[-3:] == ["hold", "release", "complete"]
    # the fresh pump moved d2 and d3 only: nothing of the lost d1 was sent again
    assert notes["truth"]["infused_ul"] == pytest.approx(80.0, abs=1e-6)


# ------------------------------------------------------------------------------ validation


@pytest.mark.req("KA-ENG-001")
def test_kiboauto_run_refuses_an_invalid_protocol_with_file_line_and_column(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "roles:\n"
        "  pump: {kind: SyringePump, device: pump1}\n"
        "steps:\n"
        "  - dispense: {pump: pump, volume: 5 parsecs, rate: 1 uL/min}\n"
        "  - wait: 1 min\n"
        "    bogus: 3\n",
        encoding="utf-8",
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        "name: missing\n"
        "roles:\n"
        "  pump: {kind: SyringePump, device: nosuch}\n"
        "steps:\n"
        "  - dispense: {pump: pump, volume: 5 uL, rate: 1 uL/min}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run", str(bad), "--hil", "--run-dir", str(run_dir), "--quiet"])
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", " ")
    assert f"{bad}:5:36:" in text and "steps[0].dispense.volume" in text
    assert f"{bad}:7:5:" in text and "unknown key 'bogus'" in text
    result = runner.invoke(
        app, ["run", str(missing), "--hil", "--run-dir", str(run_dir), "--quiet"]
    )
    assert result.exit_code == 2, result.output
    assert f"{missing}:3:37:" in result.output.replace("\n", " ")
    assert "nosuch" in result.output
    assert not (run_dir / JOURNAL_NAME).exists()  # nothing ran, nothing journaled


@pytest.mark.req("KA-ENG-006")
def test_a_station_sample_rate_samples_a_device_the_protocol_does_not_monitor(
    tmp_path: Path,
) -> None:
    """``sample_every`` in the station file: the pump is sampled every 30 s of protocol time
    (telemetry under its role name) although the protocol has no monitor entry for it."""
    loaded = _protocol(THREE_DISPENSES)
    assert not loaded.protocol.monitor
    done = _run(
        loaded, _pump_station(), tmp_path / "run", RunOptions(sample_every={"pump1": "30 s"})
    )
    assert done.outcome.state is RunState.COMPLETED
    with done.journal() as journal:
        rows = [r for r in journal.rows("telemetry") if r["device"] == "pump"]
    times = sorted({r["t"] for r in rows})
    assert len(times) >= int(done.outcome.protocol_time_s // 30)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(g == pytest.approx(30.0, abs=0.5) for g in gaps), gaps
    assert {r["name"] for r in rows} >= {"status", "moving", "rate", "infused"}
    moving = [r["value"] for r in rows if r["name"] == "moving"]
    assert 1 in moving and 0 in moving  # sampled during the dispenses and between them


@pytest.mark.req("KA-ENG-006")
def test_a_station_sample_rate_must_be_a_duration() -> None:
    from pydantic import ValidationError

    from kiboauto.station import StationDevice

    assert StationDevice(driver="newera", port="sim", sample_every="1 min").sample_every == "1 min"
    for bad in ("10 uL", "0 s", "soon", "-1 min"):
        with pytest.raises(ValidationError, match="sample_every"):
            StationDevice(driver="newera", port="sim", sample_every=bad)


GOTO_LOOP = """\
name: goto_loop
roles:
  pump: {kind: SyringePump, device: pump1, syringe: 1 mL}
steps:
  - id: ask
    crew:
      procedure: check the line
      expected: 1 min
      wait_at_most: 2 min
    on_failure: goto ask
"""


@pytest.mark.req("KA-ENG-001")
def test_a_goto_that_loops_forever_fails_the_run_instead(tmp_path: Path) -> None:
    """A failure policy that jumps back to a step that keeps failing is stopped after
    MAX_JUMPS jumps: the run fails with a reason, it does not spin for ever."""
    from kiboauto.engine.executor import MAX_JUMPS

    done = _run(_protocol(GOTO_LOOP), _pump_station(), tmp_path / "run")
    assert done.outcome.state is RunState.FAILED
    assert "goto ask" in done.outcome.message and "loop" in done.outcome.message
    with done.journal() as journal:
        failed = [s for s in journal.rows("steps") if str(s["outcome"]).startswith("failed")]
    assert len(failed) == MAX_JUMPS + 1
    assert done.outcome.protocol_time_s == pytest.approx((MAX_JUMPS + 1) * 120.0, rel=0.01)


class _BuggyCamera:
    """A camera whose driver has a bug: every capture raises ZeroDivisionError."""

    name = "camera1"

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def capture_cell(self, n: int) -> Any:
        return 1 / 0

    async def read(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {}


@pytest.mark.req("KA-ENG-001")
def test_a_bug_in_a_step_fails_the_step_not_the_process(tmp_path: Path) -> None:
    text = """\
name: buggy
roles: {camera: {kind: Camera, device: camera1}}
steps:
  - id: look
    inspect: {camera: camera, cell: 1}
    on_failure: {retry: 1, delay: 1 min, then: skip}
  - id: after
    event: {message: still going}
"""
    loaded = _protocol(text)
    clock = VirtualClock()

    async def main() -> RunOutcome:
        run = Run(
            loaded.protocol,
            loaded.text,
            {"camera1": _BuggyCamera()},
            "",
            tmp_path / "run",
            clock,
            RunOptions(control_socket=False),
        )
        try:
            return await run.execute()
        finally:
            run.close()

    outcome = clock.run(main())
    assert outcome.state is RunState.COMPLETED
    with Journal.open(tmp_path / "run") as journal:
        steps = [(s["step"], s["outcome"]) for s in journal.rows("steps")]
        codes = _codes(journal)
    assert steps[:2] == [("look", steps[0][1]), ("look", steps[1][1])]
    assert all("internal error: ZeroDivisionError" in str(o) for _, o in steps[:2])
    assert steps[2] == ("after", "ok")
    assert "step_skipped" in codes and "protocol_event" in codes


@pytest.mark.req("KA-ENG-007")
def test_dry_run_prints_step_durations_and_the_resources_to_request(tmp_path: Path) -> None:
    protocol = tmp_path / "three.yaml"
    protocol.write_text(THREE_DISPENSES, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["run", str(protocol), "--dry-run", "--run-dir", str(tmp_path / "dry"), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "step durations (protocol time)" in out and "resources to request" in out
    # d1: 40 uL at 20 uL/min is 2 min of protocol time, planned and observed
    row = next(line for line in out.splitlines() if "│ d1 " in line or line.startswith("│ d1"))
    assert row.count("2.0 min") >= 4, row
    assert "peak power" in out and "W" in out and "crew time" in out and "downlink" in out
    with Journal.open(tmp_path / "dry") as journal:
        assert _triggers(journal)[-1] == "complete"
