"""The run lifecycle: one explicit state machine for a run, from loaded to a terminal state.

A run is always in exactly one :class:`RunState`. It changes state only through the lifecycle
triggers of :data:`TRANSITIONS` (plus ``recover``, a reflexive trigger that marks a run resumed
from its journal after a crash), fired with :meth:`RunMachine.fire`. A trigger that the current
state does not allow is refused with a :class:`Verdict` saying why and which states allow it;
nothing is raised for a refusal.

The machine runs on ``transitions``' :class:`~transitions.extensions.asyncio.AsyncMachine`. Its
``on_transition`` callback (the engine journals there) is awaited inside every accepted transition,
*before* the state changes: if it raises, the run stays where it was, so every state change has its
journal row. Triggers are serialised by a lock, so two tasks never interleave transitions.

A trigger costs tens of microseconds: triggers are for lifecycle events only, never per step.
See docs/state-machine.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

from transitions.extensions.asyncio import AsyncEventData, AsyncMachine

__all__ = [
    "RECOVER",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Reason",
    "RunMachine",
    "RunState",
    "Transition",
    "TransitionCallback",
    "Verdict",
    "trigger_sources",
]

log = logging.getLogger(__name__)


class RunState(StrEnum):
    """The state of a run, as journaled and as shown to operators."""

    IDLE = "idle"
    LOADED = "loaded"
    RUNNING = "running"
    PAUSED = "paused"
    HOLDING = "holding"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """Whether the run is over in this state (completed, aborted or failed)."""
        return self in TERMINAL_STATES


_BY_VALUE: Final[dict[str, RunState]] = {s.value: s for s in RunState}

TERMINAL_STATES: Final[frozenset[RunState]] = frozenset(
    {RunState.COMPLETED, RunState.ABORTED, RunState.FAILED}
)
"""States a run never leaves."""


class Reason(StrEnum):
    """Why a trigger or a command was accepted or refused: the reason code of every answer."""

    OK = "OK"
    WRONG_STATE = "WRONG_STATE"
    ALREADY_IN_STATE = "ALREADY_IN_STATE"
    TERMINAL = "TERMINAL"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    BAD_ARGUMENTS = "BAD_ARGUMENTS"
    UNKNOWN_PARAMETER = "UNKNOWN_PARAMETER"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    WRONG_UNIT = "WRONG_UNIT"
    NOT_SETTABLE = "NOT_SETTABLE"
    NOT_WAITING = "NOT_WAITING"
    WRONG_STEP = "WRONG_STEP"
    NOTHING_TO_SKIP = "NOTHING_TO_SKIP"
    BUSY = "BUSY"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True)
class Verdict:
    """The answer to a trigger or a check: accepted or not, the reason code, a human message and
    the run's state after the decision."""

    accepted: bool
    reason: Reason
    message: str
    state: RunState


class Transition(NamedTuple):
    """One row of the lifecycle table: ``trigger`` moves a run from any of ``sources`` to
    ``dest``."""

    trigger: str
    sources: tuple[RunState, ...]
    dest: RunState


_S = RunState

TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition("load", (_S.IDLE,), _S.LOADED),
    Transition("start", (_S.LOADED,), _S.RUNNING),
    Transition("pause", (_S.RUNNING,), _S.PAUSED),
    Transition("resume", (_S.PAUSED,), _S.RUNNING),
    Transition("hold", (_S.RUNNING, _S.PAUSED), _S.HOLDING),
    Transition("release", (_S.HOLDING,), _S.RUNNING),
    Transition("abort", (_S.LOADED, _S.RUNNING, _S.PAUSED, _S.HOLDING), _S.ABORTED),
    Transition("complete", (_S.RUNNING,), _S.COMPLETED),
    Transition("fail", (_S.IDLE, _S.LOADED, _S.RUNNING, _S.PAUSED, _S.HOLDING), _S.FAILED),
)
"""The lifecycle table: the only state changes a run can make."""

RECOVER: Final = "recover"
"""The reflexive trigger that marks a run resumed from its journal (any non-terminal state)."""

_RECOVER_SOURCES: Final[tuple[RunState, ...]] = tuple(s for s in RunState if not s.terminal)

TransitionCallback = Callable[[RunState, RunState, str, str], Awaitable[None]]
"""``on_transition(from_state, to_state, trigger, why)``, awaited inside each transition."""


def trigger_sources(trigger: str) -> tuple[RunState, ...]:
    """The states from which ``trigger`` is allowed (empty for an unknown trigger)."""
    if trigger == RECOVER:
        return _RECOVER_SOURCES
    for row in TRANSITIONS:
        if row.trigger == trigger:
            return row.sources
    return ()


def _dest_of(trigger: str) -> RunState | None:
    for row in TRANSITIONS:
        if row.trigger == trigger:
            return row.dest
    return None


def _names(states: Iterable[RunState]) -> str:
    return ", ".join(s.value for s in states)


class _Model:
    """The object whose ``state`` attribute the ``transitions`` machine drives."""

    state: str


class RunMachine:
    """The lifecycle state machine of one run: fire triggers, get verdicts, await states.

    ``initial`` may be any state, so a run resumed from its journal starts where it was (fire
    :data:`RECOVER` to journal the resumption). ``on_transition(from, to, trigger, why)`` is
    awaited inside each accepted transition, before the state changes; an exception from it
    propagates out of :meth:`fire` and leaves the state unchanged. It must not fire triggers itself.
    """

    def __init__(
        self,
        initial: RunState = RunState.IDLE,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self._initial = RunState(initial)
        self._on_transition = on_transition
        self._model = _Model()
        self._machine = AsyncMachine(
            model=self._model,
            states=[s.value for s in RunState],
            initial=self._initial.value,
            auto_transitions=False,
            send_event=True,
            before_state_change=[self._before_change],
            name="run",
        )
        for row in TRANSITIONS:
            self._machine.add_transition(
                row.trigger, [s.value for s in row.sources], row.dest.value
            )
        self._machine.add_transition(RECOVER, [s.value for s in _RECOVER_SOURCES], "=")
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"RunMachine(state={self.state.value})"

    @property
    def state(self) -> RunState:
        """The run's current state."""
        return _BY_VALUE[self._model.state]

    @property
    def terminal(self) -> bool:
        """Whether the run is over (completed, aborted or failed)."""
        return self.state.terminal

    # ------------------------------------------------------------------ the table

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger the machine knows, lifecycle triggers first, then ``recover``."""
        return tuple(self._machine.events)

    def triggers_from(self, state: RunState) -> list[str]:
        """The triggers allowed from ``state``, in table order."""
        return [
            name
            for name, event in self._machine.events.items()
            if event.transitions.get(RunState(state).value)
        ]

    def allowed(self, trigger: str) -> bool:
        """Whether ``trigger`` would be accepted from the current state."""
        event = self._machine.events.get(trigger)
        return event is not None and bool(event.transitions.get(self.state.value))

    def check(self, trigger: str) -> Verdict:
        """What :meth:`fire` would answer now, without changing anything."""
        state = self.state
        if trigger not in self._machine.events:
            known = ", ".join(self.triggers)
            return Verdict(
                False,
                Reason.UNKNOWN_COMMAND,
                f"unknown trigger {trigger!r}: expected one of {known}",
                state,
            )
        if self.allowed(trigger):
            dest = _dest_of(trigger) or state
            return Verdict(True, Reason.OK, f"{trigger}: {state.value} -> {dest.value}", state)
        return self._refusal(trigger, state)

    @staticmethod
    def _refusal(trigger: str, state: RunState) -> Verdict:
        sources = trigger_sources(trigger)
        if state.terminal:
            return Verdict(
                False,
                Reason.TERMINAL,
                f"cannot {trigger}: the run is {state.value}, a terminal state",
                state,
            )
        if _dest_of(trigger) == state:
            return Verdict(
                False,
                Reason.ALREADY_IN_STATE,
                f"cannot {trigger}: the run is already {state.value}",
                state,
            )
        return Verdict(
            False,
            Reason.WRONG_STATE,
            f"cannot {trigger}: the run is {state.value};"
            f" {trigger} is allowed only when it is {_names(sources)}",
            state,
        )

    # ------------------------------------------------------------------ firing

    async def fire(
        self,
        trigger: str,
        why: str = "",
        *,
        on_accept: Callable[[], Awaitable[None]] | None = None,
    ) -> Verdict:
        """Fire ``trigger``; return an accepting verdict (state after) or a refusal (never raises
        for a refused trigger).

        ``on_accept`` is awaited once the trigger is known to be allowed, under the machine's lock
        and before ``on_transition``: the command path journals an accepted command there, so the
        decision and the transition cannot be separated by another task's trigger. An exception
        from ``on_accept`` or ``on_transition`` propagates and the state is unchanged.
        """
        async with self._lock:
            verdict = self.check(trigger)
            if not verdict.accepted:
                log.debug("refused %s in %s: %s", trigger, verdict.state, verdict.reason)
                return verdict
            before = self.state
            if on_accept is not None:
                await on_accept()
            done = await self._machine.events[trigger].trigger(self._model, why=why)
            if not done:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # transitions swallows the cancellation of a trigger: give it back
                    raise asyncio.CancelledError
                return Verdict(  # pragma: no cover - no conditions: every allowed trigger runs
                    False, Reason.INTERNAL_ERROR, f"{trigger} did not run", self.state
                )
            after = self.state
            self._notify()
        log.info("run %s -> %s (%s%s)", before, after, trigger, f": {why}" if why else "")
        return Verdict(True, Reason.OK, f"{trigger}: {before.value} -> {after.value}", after)

    async def _before_change(self, event: AsyncEventData) -> None:
        if self._on_transition is None:
            return
        source = RunState(self._model.state)
        dest = RunState(event.transition.dest) if event.transition.dest else source
        why = str(event.kwargs.get("why", ""))
        await self._on_transition(source, dest, event.event.name, why)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(
        self, target: RunState | Iterable[RunState] | Callable[[RunState], bool]
    ) -> RunState:
        """Wait (without polling) until the state is ``target`` (a state, a collection of states
        or a predicate on the state); return that state. Returns at once when it already is.

        Bound it with the run's clock (``async with clock.timeout(...)``) when needed.
        """
        if callable(target):
            predicate = target
        else:
            wanted = frozenset({target}) if isinstance(target, RunState) else frozenset(target)

            def predicate(state: RunState) -> bool:
                return state in wanted

        while True:
            state = self.state
            if predicate(state):
                return state
            await self._changed.wait()

    # ------------------------------------------------------------------ picture

    def mermaid(self) -> str:
        """The machine as a Mermaid ``stateDiagram-v2``, rendered from the transition table."""
        lines = ["stateDiagram-v2", f"    [*] --> {self._initial.value}"]
        for name, event in self._machine.events.items():
            for source, rows in event.transitions.items():
                for row in rows:
                    dest = row.dest if row.dest is not None else source
                    lines.append(f"    {source} --> {dest} : {name}")
        lines.extend(f"    {s.value} --> [*]" for s in RunState if s.terminal)
        return "\n".join(lines) + "\n"
