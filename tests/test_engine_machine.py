"""The run lifecycle state machine: every trigger from every state, callbacks, waits, recovery."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from kiboauto.engine.control import diagram_main
from kiboauto.engine.machine import (
    RECOVER,
    TRANSITIONS,
    Reason,
    RunMachine,
    RunState,
)
from kiboauto.journal import Journal

S = RunState

# Written out again here, independently of the module's table, so a change to either shows.
EXPECTED: dict[str, tuple[set[RunState], RunState | None]] = {
    "load": ({S.IDLE}, S.LOADED),
    "start": ({S.LOADED}, S.RUNNING),
    "pause": ({S.RUNNING}, S.PAUSED),
    "resume": ({S.PAUSED}, S.RUNNING),
    "hold": ({S.RUNNING, S.PAUSED}, S.HOLDING),
    "release": ({S.HOLDING}, S.RUNNING),
    "abort": ({S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING}, S.ABORTED),
    "complete": ({S.RUNNING}, S.COMPLETED),
    "fail": ({S.IDLE, S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING}, S.FAILED),
    # None: reflexive, the run stays where it was
    RECOVER: ({S.IDLE, S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING}, None),
}
TERMINAL = {S.COMPLETED, S.ABORTED, S.FAILED}


def expected_refusal(trigger: str, state: RunState) -> Reason:
    if state in TERMINAL:
        return Reason.TERMINAL
    if EXPECTED[trigger][1] == state:
        return Reason.ALREADY_IN_STATE
    return Reason.WRONG_STATE


class Recorder:
    """An on_transition callback that journals like the engine will, and remembers each call."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.calls: list[tuple[RunState, RunState, str, str, RunState]] = []
        self.machine: RunMachine | None = None

    async def __call__(self, src: RunState, dst: RunState, trigger: str, why: str) -> None:
        assert self.machine is not None
        self.calls.append((src, dst, trigger, why, self.machine.state))
        if self.journal is not None:
            self.journal.record_transition(src, dst, trigger, why, 1.0, 2.0)


def machine_in(state: RunState, journal: Journal | None = None) -> tuple[RunMachine, Recorder]:
    recorder = Recorder(journal)
    machine = RunMachine(initial=state, on_transition=recorder)
    recorder.machine = machine
    return machine, recorder


@pytest.mark.req("KA-ENG-002")
def test_the_module_table_is_the_expected_one() -> None:
    table = {row.trigger: (set(row.sources), row.dest) for row in TRANSITIONS}
    assert table == {k: v for k, v in EXPECTED.items() if k != RECOVER}
    assert set(RunMachine().triggers) == set(EXPECTED)
    assert {s for s in RunState if s.terminal} == TERMINAL


@pytest.mark.req("KA-ENG-002")
@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(RunState, EXPECTED)))
async def test_every_trigger_from_every_state(state: RunState, trigger: str) -> None:
    machine, recorder = machine_in(state)
    sources, dest = EXPECTED[trigger]
    assert machine.allowed(trigger) == (state in sources)
    verdict = await machine.fire(trigger, why="test")
    if state in sources:
        after = dest or state
        assert verdict.accepted and verdict.reason is Reason.OK
        assert verdict.state is after and machine.state is after
        # awaited once, inside the transition, before the state changed
        assert recorder.calls == [(state, after, trigger, "test", state)]
    else:
        assert not verdict.accepted
        assert verdict.reason is expected_refusal(trigger, state)
        assert verdict.state is state and machine.state is state
        assert recorder.calls == []
        assert state.value in verdict.message
        if verdict.reason is Reason.WRONG_STATE:  # the message names the states that allow it
            for source in sources:
                assert source.value in verdict.message


@pytest.mark.req("KA-ENG-002")
@pytest.mark.parametrize("state", list(RunState))
def test_triggers_from_each_state(state: RunState) -> None:
    expected = {t for t, (sources, _) in EXPECTED.items() if state in sources}
    assert set(RunMachine().triggers_from(state)) == expected
    assert set(RunMachine(initial=state).triggers_from(state)) == expected


@pytest.mark.req("KA-ENG-002")
async def test_unknown_trigger_is_refused_with_the_list_of_triggers() -> None:
    machine = RunMachine()
    verdict = await machine.fire("launch")
    assert (verdict.accepted, verdict.reason, verdict.state) == (
        False,
        Reason.UNKNOWN_COMMAND,
        S.IDLE,
    )
    assert "launch" in verdict.message and "load" in verdict.message
    assert not machine.allowed("launch")


@pytest.mark.req("KA-ENG-002")
async def test_a_whole_run_journals_one_transition_per_state_change(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        journal.start_run("name: t\n", "devices: {}\n", t_wall=0.0)
        machine, recorder = machine_in(S.IDLE, journal)
        path = ["load", "start", "pause", "hold", "release", "pause", "resume", "complete"]
        for trigger in path:
            assert (await machine.fire(trigger, why=f"because {trigger}")).accepted
        assert not (await machine.fire("abort")).accepted  # refused: not journaled
        rows = journal.rows("transitions")
    assert [r["trigger"] for r in rows] == path
    assert [r["reason"] for r in rows] == [f"because {t}" for t in path]
    states = [S.IDLE.value] + [r["to_state"] for r in rows]
    assert [r["from_state"] for r in rows] == states[:-1]
    assert states[-1] == "completed"
    assert len(recorder.calls) == len(path)


@pytest.mark.req("KA-ENG-002")
@pytest.mark.parametrize("state", [S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING])
async def test_a_recovered_run_starts_where_it_was_and_journals_recover(
    tmp_path: Path, state: RunState
) -> None:
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        journal.start_run("name: t\n", "devices: {}\n")
        machine, _ = machine_in(state, journal)
        assert machine.state is state
        verdict = await machine.fire(RECOVER, why="process restarted")
        assert verdict.accepted and machine.state is state
        row = journal.rows("transitions")[-1]
    assert (row["from_state"], row["to_state"], row["trigger"]) == (state, state, RECOVER)


@pytest.mark.req("KA-ENG-002")
async def test_a_failing_callback_leaves_the_state_unchanged() -> None:
    async def broken(src: RunState, dst: RunState, trigger: str, why: str) -> None:
        raise OSError("disk full")

    machine = RunMachine(initial=S.RUNNING, on_transition=broken)
    with pytest.raises(OSError, match="disk full"):
        await machine.fire("pause")
    assert machine.state is S.RUNNING


@pytest.mark.req("KA-ENG-002")
async def test_on_accept_runs_before_the_callback_and_only_when_accepted() -> None:
    order: list[str] = []

    async def on_transition(src: RunState, dst: RunState, trigger: str, why: str) -> None:
        order.append(f"transition {trigger}")

    async def accept() -> None:
        order.append("accept")

    machine = RunMachine(initial=S.RUNNING, on_transition=on_transition)
    assert (await machine.fire("pause", on_accept=accept)).accepted
    assert not (await machine.fire("pause", on_accept=accept)).accepted
    assert order == ["accept", "transition pause"]


@pytest.mark.req("KA-ENG-002")
async def test_concurrent_triggers_are_serialised() -> None:
    gate = asyncio.Event()
    seen: list[tuple[RunState, RunState]] = []

    async def slow(src: RunState, dst: RunState, trigger: str, why: str) -> None:
        seen.append((src, dst))
        if trigger == "hold":
            await gate.wait()

    machine = RunMachine(initial=S.RUNNING, on_transition=slow)
    hold = asyncio.create_task(machine.fire("hold"))
    abort = asyncio.create_task(machine.fire("abort"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [(S.RUNNING, S.HOLDING)]  # abort waits for hold to finish
    gate.set()
    assert (await hold).accepted and (await abort).accepted
    assert seen == [(S.RUNNING, S.HOLDING), (S.HOLDING, S.ABORTED)]
    assert machine.state is S.ABORTED


@pytest.mark.req("KA-ENG-002")
async def test_cancelling_a_fire_inside_the_callback_is_not_swallowed() -> None:
    entered = asyncio.Event()

    async def stuck(src: RunState, dst: RunState, trigger: str, why: str) -> None:
        entered.set()
        await asyncio.Event().wait()

    machine = RunMachine(initial=S.RUNNING, on_transition=stuck)
    task = asyncio.create_task(machine.fire("pause"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert machine.state is S.RUNNING


@pytest.mark.req("KA-ENG-002")
async def test_wait_until_wakes_on_the_state_change_without_polling() -> None:
    machine = RunMachine(initial=S.PAUSED)
    running = asyncio.create_task(machine.wait_until(S.RUNNING))
    leaving = asyncio.create_task(machine.wait_until(lambda s: s not in (S.PAUSED, S.HOLDING)))
    over = asyncio.create_task(machine.wait_until([S.COMPLETED, S.ABORTED, S.FAILED]))
    await asyncio.sleep(0)
    assert not running.done() and not leaving.done()
    await machine.fire("hold")
    await asyncio.sleep(0)
    assert not running.done() and not leaving.done()
    await machine.fire("release")
    assert await running is S.RUNNING
    assert await leaving is S.RUNNING
    assert not over.done()
    await machine.fire("abort")
    assert await over is S.ABORTED
    assert await machine.wait_until(S.ABORTED) is S.ABORTED  # already there: at once


@pytest.mark.req("KA-ENG-002")
def test_mermaid_is_rendered_from_the_table() -> None:
    text = diagram_main()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> idle" in lines
    edges = {line.strip() for line in lines[2:] if ":" in line}
    expected = {
        f"{src.value} --> {(dest or src).value} : {trigger}"
        for trigger, (sources, dest) in EXPECTED.items()
        for src in sources
    }
    assert edges == expected
    for state in TERMINAL:
        assert f"    {state.value} --> [*]" in lines
    assert RunMachine(initial=S.PAUSED).mermaid().splitlines()[1] == "    [*] --> paused"
