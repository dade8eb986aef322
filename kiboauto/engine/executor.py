"""The step executor: runs a protocol's program, journals every step, resumes where it stopped.

The executor walks the program (:mod:`kiboauto.engine.program`) block by block. Its position is a
**cursor**, a list of frames (block, index, repeat iteration and schedule) checkpointed in the
journal after every step, so that a new process continues from the step that was running. A
step whose end the journal does not have is run again: every step kind is safe to run again
(waits keep their deadline, inspections take a new image) and pump steps count what the journal's
``actions`` rows say was delivered, moving only the remainder (:mod:`kiboauto.engine.steps`).

Failures follow the step's ``on_failure`` policy (retry after a delay, then skip, hold, abort,
fail or go to a step). Pause, hold, skip and abort come from the run (commands, monitoring) as
*interrupts*: the step in progress is paused, or stopped and run again after a release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kiboauto.clock import Clock
from kiboauto.devices import DeviceError
from kiboauto.engine.machine import RunMachine, RunState
from kiboauto.engine.program import Block, Program, Values
from kiboauto.journal import Journal, JournalError
from kiboauto.protocol.expressions import ExpressionError, evaluate_condition, parse_condition
from kiboauto.protocol.model import (
    BranchStep,
    GroupStep,
    OnFailure,
    RepeatStep,
    StepBase,
)
from kiboauto.units import as_quantity

__all__ = [
    "Executor",
    "Frame",
    "RunAborted",
    "RunFailed",
    "StepFailed",
]

log = logging.getLogger(__name__)

MAX_JUMPS = 100
"""How often one ``goto`` target may be jumped to in a run before the run fails (a loop)."""

_BURST = 64
"""Instant steps run back to back before the executor lets other tasks (commands) in."""

_ZERO_WAITS = frozenset({"0 s", "0s", "0 min", "0 h", "0"})

DEFAULT_POLICY = OnFailure(retry=0, delay="0 s", then="hold")
"""A step without ``on_failure`` puts the run on hold for the ground when it fails."""


class StepFailed(Exception):
    """A step could not do what it says (device error, timeout, condition that cannot be read)."""


class RunAborted(Exception):
    """The run was aborted (by a command, a policy or a watchdog)."""


class RunFailed(Exception):
    """The run cannot go on (a policy said ``fail``, or the engine met something it cannot
    decide)."""


class _Goto(Exception):
    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


@dataclass
class Frame:
    """Where the executor is in one block: the next step's index and, for a repeat's block, the
    iteration and the protocol time the repeat started."""

    block: str
    index: int = 0
    iteration: int = 0
    started: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Frame:
        return cls(
            block=str(data["block"]),
            index=int(data.get("index", 0)),
            iteration=int(data.get("iteration", 0)),
            started=None if data.get("started") is None else float(data["started"]),
        )


StepRunner = Callable[[StepBase, str, str], Awaitable[None]]
"""Runs one leaf step: (step, label, execution key)."""


class Executor:
    """Runs the program of one run, from the start or from a journaled cursor."""

    def __init__(
        self,
        program: Program,
        journal: Journal,
        clock: Clock,
        machine: RunMachine,
        values: Values,
        *,
        protocol_time: Callable[[], float],
        run_leaf: StepRunner,
        on_hold: Callable[[str], Awaitable[None]],
        on_event: Callable[[str, str, str], None],
    ) -> None:
        self.program = program
        self.journal = journal
        self.clock = clock
        self.machine = machine
        self.values = values
        self.protocol_time = protocol_time
        self._run_leaf = run_leaf
        self._on_hold = on_hold
        self._event = on_event
        self.frames: list[Frame] = []
        self._resume: list[Frame] = []
        self.timers: dict[str, float] = {}
        self.current: tuple[str, str] | None = None  # (label, execution key) of the running step
        self.steps_run = 0
        self._step_task: asyncio.Task[None] | None = None
        self._interrupt: str | None = None  # "skip" | "hold" | "abort"
        self._pending_skip = False
        self._cursor: list[Frame] = []
        self._cursor_dirty = False
        self._instant_flags: dict[str, tuple[bool, ...]] = {}
        self._jumps: dict[str, int] = {}
        journal.before_group_write(self._write_cursor)
        self.at_step: str | None = None  # execution key of the step being run or waited on

    # ------------------------------------------------------------------ cursor

    def load_cursor(self, cursor: list[dict[str, Any]] | None, timers: dict[str, float]) -> None:
        """Continue from a journaled cursor (after a crash) instead of the beginning."""
        self._resume = [Frame.from_json(f) for f in cursor or []]
        self.timers = dict(timers)

    def _checkpoint(self) -> None:
        """Mark the cursor changed: it is written with the next group of journal writes (the
        frames are read then, in the same transaction as the step rows they account for)."""
        self._cursor = self.frames
        self._cursor_dirty = True

    def _write_cursor(self) -> None:
        if self._cursor_dirty:
            self._cursor_dirty = False
            self.journal.set_checkpoint("cursor", [_frame_json(f) for f in self._cursor])

    def save_timers(self) -> None:
        self.journal.set_checkpoint("timers", self.timers)

    def _enter(self, block: str) -> Frame:
        depth = len(self.frames)
        if depth < len(self._resume) and self._resume[depth].block == block:
            frame = self._resume[depth]
        else:
            frame = Frame(block)
            del self._resume[depth:]
        self.frames.append(frame)
        return frame

    def _exit(self) -> None:
        self.frames.pop()
        del self._resume[len(self.frames) :]

    def _loop_suffix(self) -> str:
        return "".join(f"@{f.iteration + 1}" for f in self.frames if f.block.endswith(".do"))

    def execution_key(self, label: str) -> str:
        """The label plus the iteration of every enclosing repeat."""
        return label + self._loop_suffix()

    def _instant_burst(
        self,
        steps: Sequence[StepBase],
        labels: Sequence[str],
        fast: Sequence[bool],
        frame: Frame,
        suffix: str,
    ) -> None:
        """Run up to :data:`_BURST` consecutive instant steps of a block."""
        i, end = frame.index, min(len(steps), frame.index + _BURST)
        t, wall = self.protocol_time(), self.clock.wall()
        rows: list[tuple[str, int, float | None, float | None, str]] = []
        try:
            while i < end and fast[i]:
                step = steps[i]
                key = labels[i] + suffix
                if step.kind == "event":
                    args = getattr(step, "event")  # noqa: B009 - EventStep's field
                    self._event("protocol_event", args.severity, args.message)
                rows.append((key, 1, t, wall, "ok"))
                i += 1
        finally:
            frame.index = i
            if rows:
                self.at_step = rows[-1][0]
                self.steps_run += len(rows)
                self.journal.record_steps(rows)

    def _instant_step(self, step: StepBase, key: str) -> None:
        self.at_step = key
        t, wall = self.protocol_time(), self.clock.wall()
        self.steps_run += 1
        if step.kind == "event":
            args = getattr(step, "event")  # noqa: B009 - EventStep's field
            self._event("protocol_event", args.severity, args.message)
        self.journal.record_step(key, 1, t, wall, "ok")

    @staticmethod
    def instant(step: StepBase) -> bool:
        """Steps that end without waiting on anything (events, zero waits) run inline."""
        if step.kind == "event":
            return True
        wait = getattr(step, "wait", None)
        return isinstance(wait, str) and wait.strip() in _ZERO_WAITS

    # ------------------------------------------------------------------ interrupts

    def interrupt(self, why: str) -> bool:
        """Stop the step in progress because of ``why`` (``skip``, ``hold``, ``abort``).

        Returns whether a step was running. The step's own code cleans up (a pump is stopped and
        what it delivered is journaled) before the executor acts on ``why``.
        """
        task = self._step_task
        if task is None or task.done():
            if why == "skip" and self.at_step is not None:
                self._pending_skip = True  # skipped when the run goes on
                return True
            return False
        if task.cancelling():
            # already being stopped: cancelling again would cut its clean-up short (a pump's
            # stop command), leaving the pump moving. An abort still decides what follows.
            if why == "abort":
                self._interrupt = why
            return True
        self._interrupt = why
        task.cancel()
        return True

    async def _until_running(self) -> None:
        """Wait while the run is paused or holding; raise when it ended."""
        while True:
            state = self.machine.state
            if state is RunState.RUNNING:
                return
            if state is RunState.ABORTED:
                raise RunAborted("aborted")
            if state.terminal:
                raise RunFailed(f"run is {state}")
            self.journal.flush()
            await self.machine.wait_until(
                lambda s: s not in (RunState.PAUSED, RunState.HOLDING, RunState.LOADED)
            )

    # ------------------------------------------------------------------ the program

    async def run(self) -> None:
        """Run the program to its end (raises RunAborted / RunFailed)."""
        await self._block(self.program.blocks["main"])
        self.frames.clear()
        self._checkpoint()
        self.journal.flush()

    async def _block(self, block: Block, frame: Frame | None = None) -> None:
        frame = frame if frame is not None else self._enter(block.label)
        suffix = self._loop_suffix()
        fast = self._instant_flags.get(block.label)
        if fast is None:
            fast = self._instant_flags[block.label] = tuple(
                self.instant(s) and s.timeout is None for s in block.steps
            )
        steps, labels, n = block.steps, block.labels, len(block.steps)
        try:
            while frame.index < n:
                if (
                    fast[frame.index]
                    and not self._pending_skip
                    and self.machine.state is RunState.RUNNING
                ):
                    # fast path: steps that wait on nothing run here back to back, without a
                    # coroutine of their own; nothing else runs until the burst yields, so the
                    # state checked above holds for the whole burst
                    self._instant_burst(steps, labels, fast, frame, suffix)
                    self._cursor_dirty = True
                    await self.clock.sleep(0)  # let commands in
                    continue
                step, label = steps[frame.index], labels[frame.index]
                try:
                    await self._step(step, label)
                except _Goto as g:
                    if g.label not in block.labels:
                        raise
                    self._jumps[g.label] = self._jumps.get(g.label, 0) + 1
                    if self._jumps[g.label] > MAX_JUMPS:
                        raise RunFailed(
                            f"'goto {g.label}' taken {MAX_JUMPS} times in this run: a failure "
                            "loop, stopped"
                        ) from None
                    frame.index = block.labels.index(g.label)
                    del self._resume[len(self.frames) :]
                    self._checkpoint()
                    continue
                frame.index += 1
                del self._resume[len(self.frames) :]
                self._checkpoint()
        finally:
            self._exit()

    async def _step(self, step: StepBase, label: str) -> None:
        if isinstance(step, RepeatStep):
            await self._repeat(step, label)
            return
        if isinstance(step, BranchStep):
            await self._branch(step, label)
            return
        if isinstance(step, GroupStep):
            await self._with_policy(step, label, lambda: self._group(label))
            return
        await self._with_policy(step, label, lambda: self._leaf(step, label, self.at_step))

    async def _group(self, label: str) -> None:
        await self._block(self.program.blocks[f"{label}.group"])

    async def _leaf(self, step: StepBase, label: str, key: str | None) -> None:
        key = key or self.execution_key(label)
        if self.instant(step):
            await self._run_leaf(step, label, key)  # nothing to interrupt: no task of its own
            return
        self.current = (label, key)
        task: asyncio.Task[None] = asyncio.ensure_future(self._run_leaf(step, label, key))
        self._step_task = task
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._interrupt is None or (me is not None and me.cancelling()):
                raise  # the run itself is being cancelled (awaiting the step cancelled it too)
        except BaseException:
            pass  # the step's error is read from the task below
        finally:
            self._step_task = None
            self.current = None
        if task.cancelled():
            why = self._interrupt or "abort"
            self._interrupt = None
            raise _Interrupted(why)
        exc = task.exception()
        if exc is not None:
            raise exc

    async def _with_policy(
        self, step: StepBase, label: str, body: Callable[[], Awaitable[None]]
    ) -> None:
        policy = step.on_failure or DEFAULT_POLICY
        attempt = 0
        key = self.execution_key(label)
        self.at_step = key
        while True:
            await self._until_running()
            if self._pending_skip:
                self._pending_skip = False
                self._event("step_skipped", "info", f"step {key} skipped by command")
                return
            attempt += 1
            t0 = self.protocol_time()
            row = self.journal.record_step_start(key, attempt, t0, self.clock.wall())
            self.steps_run += 1
            try:
                if step.timeout is not None:
                    limit = float(as_quantity(self._value(step.timeout)).to("s").magnitude)
                    try:
                        async with self.clock.timeout(limit):
                            await body()
                    except TimeoutError:
                        raise StepFailed(f"did not finish within {step.timeout}") from None
                else:
                    await body()
            except _Interrupted as i:
                self._end(row, f"interrupted: {i.why}")
                if i.why == "skip":
                    self._event("step_skipped", "info", f"step {key} skipped by command")
                    return
                if i.why == "abort":
                    raise RunAborted("aborted during step " + key) from None
                # hold: wait for the ground, then run the step again
                continue
            except (RunAborted, RunFailed, _Goto, JournalError):
                raise
            except Exception as e:  # a bug must not crash an experiment: the step fails
                if not isinstance(e, StepFailed | DeviceError | ExpressionError | ValueError):
                    log.exception("step %s: unexpected error", key)
                    e = StepFailed(f"internal error: {type(e).__name__}: {e}")
                self._end(row, f"failed: {e}")
                self._event("step_failed", "warning", f"step {key} failed (attempt {attempt}): {e}")
                if attempt <= policy.retry:
                    delay = float(as_quantity(self._value(policy.delay)).to("s").magnitude)
                    self.journal.flush()
                    await self.clock.sleep(delay)
                    continue
                await self._apply_policy(policy, key, str(e))
                if policy.then == "hold":
                    attempt = 0
                    continue
                return
            self._end(row, "ok")
            return

    def _end(self, row: int, outcome: str) -> None:
        self.journal.record_step_end(row, outcome, self.protocol_time(), self.clock.wall())

    async def _apply_policy(self, policy: OnFailure, key: str, why: str) -> None:
        then = policy.then
        if then == "skip":
            self._event("step_skipped", "warning", f"step {key} skipped after failure: {why}")
            return
        if then == "abort":
            raise RunAborted(f"step {key} failed: {why}")
        if then == "fail":
            raise RunFailed(f"step {key} failed: {why}")
        if then == "hold":
            await self._on_hold(f"step {key} failed: {why}; release to run it again, skip to go on")
            return
        target = policy.goto
        if target is None:  # pragma: no cover - the model refuses other policies
            raise RunFailed(f"unknown policy {then!r}")
        self._event("step_goto", "warning", f"step {key} failed ({why}); going to {target}")
        raise _Goto(target)

    # ------------------------------------------------------------------ structure

    def _value(self, value: object) -> Any:
        from kiboauto.engine.program import resolve

        return resolve(value, self.values.params)

    def _condition(self, text: str) -> bool:
        self.values.run_time_s = self.protocol_time()
        return evaluate_condition(parse_condition(text), self.values.env())

    async def _repeat(self, step: RepeatStep, label: str) -> None:
        args = step.repeat
        block = self.program.blocks[f"{label}.do"]
        every = float(as_quantity(self._value(args.every)).to("s").magnitude)
        span = float(as_quantity(args.for_).to("s").magnitude) if args.for_ is not None else None
        depth = len(self.frames)
        if depth < len(self._resume) and self._resume[depth].block == block.label:
            frame = self._resume[depth]  # resumed inside this repeat
        else:
            frame = Frame(block.label, started=self.protocol_time())
            del self._resume[depth:]
        assert frame.started is not None
        outer_loop = self.values.loop_count
        while True:
            if args.times is not None and frame.iteration >= args.times:
                break
            start_at = frame.started + frame.iteration * every
            if span is not None and start_at > frame.started + span + 1e-9:
                break
            await self._until_running()
            now = self.protocol_time()
            if start_at > now:
                self.journal.flush()
                await self.clock.sleep(start_at - now)
            self.values.loop_count = frame.iteration + 1
            self.frames.append(frame)
            await self._block(block, frame)  # pops the frame when the body ends
            frame.iteration += 1
            frame.index = 0
            if args.until is not None:
                try:
                    if self._condition(args.until):
                        self._event(
                            "repeat_until",
                            "info",
                            f"{label}: '{args.until}' holds after {frame.iteration} iteration(s)",
                        )
                        break
                except ExpressionError as e:
                    self._event("condition_unreadable", "warning", f"{label}: {e}")
            # between iterations the frame is off the stack: checkpoint it and keep it for
            # the wait, so that a crash now resumes at the next iteration on the same schedule
            self._resume[len(self.frames) :] = [frame]
            self._checkpoint_with(frame)
        del self._resume[len(self.frames) :]
        self.values.loop_count = outer_loop

    def _checkpoint_with(self, frame: Frame) -> None:
        self._cursor = [*self.frames, frame]
        self._cursor_dirty = True

    async def _branch(self, step: BranchStep, label: str) -> None:
        depth = len(self.frames)
        chosen: str | None = None
        if depth < len(self._resume) and self._resume[depth].block in (
            f"{label}.then",
            f"{label}.else",
        ):
            chosen = self._resume[depth].block  # resumed inside the branch taken before
        if chosen is None:
            try:
                taken = self._condition(step.branch.if_)
            except ExpressionError as e:
                self._event("condition_unreadable", "warning", f"{label}: {e}; taking 'else'")
                taken = False
            chosen = f"{label}.then" if taken else f"{label}.else"
            self._event("branch", "info", f"{label}: '{step.branch.if_}' is {taken}")
        await self._block(self.program.blocks[chosen])


def _frame_json(f: Frame) -> dict[str, Any]:
    return {"block": f.block, "index": f.index, "iteration": f.iteration, "started": f.started}


class _Interrupted(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
