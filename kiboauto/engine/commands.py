"""The one command path: every command to a run goes through :meth:`CommandPath.execute`.

parse -> check against the run's state and the protocol's limits -> journal -> execute ->
answer with a reason code. The local control socket (``kiboauto ctl``) calls it today; the ground
link will call the same function, adding only authentication and transport in front of it.

* Every command, accepted or refused (even unparseable text), gets one row in the journal's
  ``commands`` table with its reason code.
* An accepted command is journaled (durably) *before* it is executed, so a crash after acceptance
  leaves a trace. A lifecycle command is journaled under the state machine's lock, just before its
  transition, so no other trigger can come in between.
* Commands are serialised: two clients never interleave.
* Nothing raises out of :meth:`CommandPath.execute`: every failure is an answer with a reason.

The engine implements :class:`RunControl`, the contract of what the path needs from a run.
See docs/state-machine.md for the command table and reason codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from kiboauto.clock import Clock, default_clock
from kiboauto.engine.machine import Reason, RunMachine, RunState, Verdict, trigger_sources
from kiboauto.journal import Journal

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_CHARS",
    "Command",
    "CommandPath",
    "CommandRefused",
    "CommandSpec",
    "Reply",
    "RunControl",
    "parse_command",
]

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS: Final = 4096
"""Longest command text (or JSON value) accepted; longer input is refused with BAD_ARGUMENTS."""

_JOURNAL_TEXT_CHARS: Final = 200
"""How much of an unparseable request is kept in the journal's ``args``."""

_S = RunState
_ACTIVE: Final = (_S.LOADED, _S.RUNNING, _S.PAUSED, _S.HOLDING)


@dataclass(frozen=True)
class CommandSpec:
    """One row of the command table: the states that accept a command, its lifecycle trigger
    (if it moves the run), the arguments it takes and what it does."""

    name: str
    states: tuple[RunState, ...]
    trigger: str | None
    args: tuple[str, ...]
    usage: str
    summary: str


def _lifecycle(name: str, summary: str) -> CommandSpec:
    return CommandSpec(name, trigger_sources(name), name, (), name, summary)


COMMANDS: Final[Mapping[str, CommandSpec]] = {
    spec.name: spec
    for spec in (
        _lifecycle("pause", "pause the run at its current action"),
        _lifecycle("resume", "resume a paused run"),
        _lifecycle("hold", "put the hardware in its safe state and wait for the ground"),
        _lifecycle("release", "leave holding and continue the run"),
        _lifecycle("abort", "end the run for good, hardware left safe"),
        CommandSpec(
            "skip",
            (_S.RUNNING, _S.PAUSED, _S.HOLDING),
            None,
            (),
            "skip",
            "skip the current step",
        ),
        CommandSpec(
            "set",
            _ACTIVE,
            None,
            ("name", "value"),
            "set NAME=VALUE",
            "set a protocol parameter, within its unit and limits",
        ),
        CommandSpec(
            "confirm",
            (_S.RUNNING, _S.PAUSED),
            None,
            ("step",),
            "confirm STEP",
            "confirm the crew step the run is waiting for",
        ),
        CommandSpec("status", tuple(RunState), None, (), "status", "report the run's status"),
    )
}
"""The command table: which states accept which command. Lifecycle commands take their states
from the state machine's transition table."""


# ---------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Command:
    """A parsed command: its name and string arguments, or, when the request was malformed,
    the reason and message of its refusal (``problem``)."""

    name: str
    args: Mapping[str, str] = field(default_factory=dict)
    problem: Reason | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the request parsed into a command the path can check."""
        return self.problem is None


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_STEP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")  # steps may be "main/load_plate"
_EXPECTED = ", ".join(spec.usage for spec in COMMANDS.values())


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _bad(name: str, message: str, text: str = "") -> Command:
    args = {"text": _clip(text, _JOURNAL_TEXT_CHARS)} if text else {}
    return Command(name, args, Reason.BAD_ARGUMENTS, message)


def _printable(text: str) -> bool:
    return text.isprintable() and "\ufffd" not in text


def parse_command(text: str | Mapping[str, object]) -> Command:
    """Parse a command from its text form (``"set protein_volume=12 uL"``, ``"confirm
    load_plate"``) or its JSON object form (``{"command": "set", "name": ..., "value": ...}``;
    a text starting with ``{`` is read as JSON). Never raises: malformed input gives a
    :class:`Command` whose ``problem`` is BAD_ARGUMENTS or UNKNOWN_COMMAND with a message saying
    what was expected."""
    try:
        if isinstance(text, str):
            if text.lstrip().startswith("{"):
                return _parse_json_text(text)
            return _parse_text(text)
        if isinstance(text, Mapping):
            return _parse_mapping(text)
        return _bad("", f"a command is text or a JSON object, not {type(text).__name__}")
    except Exception as e:  # pragma: no cover - defensive: parsing must never raise
        log.exception("command parser failed")
        return Command("", {}, Reason.INTERNAL_ERROR, f"parser failed: {e}")


def _parse_json_text(text: str) -> Command:
    if len(text) > MAX_COMMAND_CHARS:
        return _bad("", f"command longer than {MAX_COMMAND_CHARS} characters", text)
    try:
        data = json.loads(text)
    except ValueError as e:
        return _bad("", f"not valid JSON ({e}): expected a JSON object or a command text", text)
    if not isinstance(data, dict):
        return _bad("", 'expected a JSON object like {"command": "pause"}', text)
    return _parse_mapping(data)


def _parse_text(text: str) -> Command:
    if len(text) > MAX_COMMAND_CHARS:
        return _bad("", f"command longer than {MAX_COMMAND_CHARS} characters", text)
    stripped = text.strip()
    if not stripped:
        return _bad("", f"empty command: expected one of {_EXPECTED}")
    if not _printable(stripped):
        return _bad("", "command text must be printable UTF-8 text", text)
    verb, _, rest = stripped.partition(" ")
    name = verb.lower()
    rest = rest.strip()
    spec = COMMANDS.get(name)
    if spec is None:
        return Command(
            _clip(verb),
            {"text": _clip(stripped, _JOURNAL_TEXT_CHARS)},
            Reason.UNKNOWN_COMMAND,
            f"unknown command {_clip(verb)!r}: expected one of {_EXPECTED}",
        )
    if name == "set":
        key, eq, value = rest.partition("=")
        return _set_command(key.strip(), value.strip() if eq else None, stripped)
    if name == "confirm":
        return _confirm_command(rest, stripped)
    if rest:
        return _bad(name, f"{name} takes no arguments (usage: {spec.usage})", stripped)
    return Command(name)


def _set_command(key: str, value: str | None, text: str) -> Command:
    if value is None or not key:
        return _bad("set", "expected set NAME=VALUE, e.g. set protein_volume=12 uL", text)
    if not _NAME.fullmatch(key):
        return _bad(
            "set", f"parameter name {_clip(key)!r} is not a name (letters, digits, _)", text
        )
    if not value:
        return _bad("set", f"no value for {key}: expected set {key}=VALUE", text)
    return Command("set", {"name": key, "value": value})


def _confirm_command(step: str, text: str) -> Command:
    if not step:
        return _bad("confirm", "expected confirm STEP, the crew step to confirm", text)
    if not _STEP.fullmatch(step):
        return _bad("confirm", f"step name {_clip(step)!r} is not a step name", text)
    return Command("confirm", {"step": step})


def _parse_mapping(data: Mapping[Any, object]) -> Command:
    shown = _clip(_safe_dumps(data), _JOURNAL_TEXT_CHARS)
    verb = data.get("command")
    if not isinstance(verb, str) or not verb:
        return _bad(
            "", 'expected a JSON object with a "command" text, e.g. {"command": "pause"}', shown
        )
    name = verb.strip().lower()
    spec = COMMANDS.get(name)
    if spec is None:
        return Command(
            _clip(verb) if _printable(verb) else "",
            {"text": shown},
            Reason.UNKNOWN_COMMAND,
            f"unknown command {_clip(verb)!r}: expected one of {', '.join(COMMANDS)}",
        )
    allowed = {"command", *spec.args, *(("unit",) if name == "set" else ())}
    extra = sorted(str(k) for k in data if k not in allowed)
    if extra:
        return _bad(
            name,
            f"unexpected key(s) {', '.join(map(repr, extra))} for {name};"
            f" it takes {', '.join(spec.args) or 'no arguments'}",
            shown,
        )
    if name == "set":
        key, value, unit = data.get("name"), data.get("value"), data.get("unit")
        if not isinstance(key, str):
            return _bad("set", 'set needs "name" (text) and "value" (text or number)', shown)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return _bad("set", f'"value" of {_clip(key)} must be a text or a number', shown)
        if unit is not None and not isinstance(unit, str):
            return _bad("set", '"unit" must be a text', shown)
        text = str(value).strip() + (f" {unit.strip()}" if unit else "")
        if not _printable(key) or not _printable(text):
            return _bad("set", "name and value must be printable text", shown)
        return _set_command(key.strip(), text.strip(), shown)
    if name == "confirm":
        step = data.get("step")
        if not isinstance(step, str) or not _printable(step):
            return _bad("confirm", 'confirm needs "step", the crew step to confirm', shown)
        return _confirm_command(step.strip(), shown)
    return Command(name)


def _safe_dumps(data: object) -> str:
    try:
        return json.dumps(data, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(data)


# ---------------------------------------------------------------------------------------- contract


class CommandRefused(Exception):
    """Raised by a :class:`RunControl` hook when it cannot do an accepted command after all
    (the run moved on between check and execution): answered as a refusal with ``reason``."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@runtime_checkable
class RunControl(Protocol):
    """What the command path needs from a run: the contract the engine implements.

    Checks are synchronous and must not change anything; the ``async`` methods act and return a
    short human message. A hook that finds the command cannot be done after all raises
    :class:`CommandRefused`; any other exception is answered as INTERNAL_ERROR.
    """

    @property
    def machine(self) -> RunMachine:
        """The run's state machine (the path fires lifecycle triggers on it)."""
        ...

    def protocol_time(self) -> float:
        """Seconds of protocol time of the run now (journaled with each command)."""
        ...

    def check_parameter(self, name: str, value: str) -> Verdict | None:
        """None if ``set name=value`` is acceptable (known, settable, right unit, within limits);
        else a refusal with UNKNOWN_PARAMETER, NOT_SETTABLE, WRONG_UNIT, OUT_OF_RANGE or
        BAD_ARGUMENTS."""
        ...

    async def set_parameter(self, name: str, value: str) -> str:
        """Set a parameter :meth:`check_parameter` accepted."""
        ...

    def waiting_for_confirmation(self) -> str | None:
        """The crew step the run is waiting for a confirmation of, if any."""
        ...

    async def confirm(self, step: str) -> str:
        """Confirm the crew step that is waiting (``step`` is that step)."""
        ...

    def current_step(self) -> str | None:
        """The step ``skip`` would skip (None when there is none)."""
        ...

    async def skip(self) -> str:
        """Skip the current step."""
        ...

    async def lifecycle(self, trigger: str) -> str:
        """Act after a lifecycle command moved the run (the state is already the new one):
        ``pause``/``resume`` the running device action, ``hold``/``abort`` put the hardware in
        its safe state, ``release`` let the executor go on. Return what was done."""
        ...

    def status(self) -> dict[str, object]:
        """The run's status as a JSON-able object (current step, parameters, times...)."""
        ...


# ---------------------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Reply:
    """The answer to one command: accepted or refused, the reason code, a human message, the
    run's state after it, and for ``status`` the status object."""

    command: str
    accepted: bool
    reason: Reason
    message: str
    state: RunState
    status: Mapping[str, object] | None = None

    def to_json(self) -> dict[str, object]:
        """The reply as a JSON object (one line on the control socket)."""
        data: dict[str, object] = {
            "command": self.command,
            "accepted": self.accepted,
            "reason_code": self.reason.value,
            "message": self.message,
            "state": self.state.value,
        }
        if self.status is not None:
            data["status"] = dict(self.status)
        return data


class CommandPath:
    """The single path of every command to a run (see the module docstring).

    ``journal`` must hold the run (``start_run`` done); ``clock`` gives the wall time journaled
    with each command (protocol time comes from ``control``).
    """

    def __init__(self, control: RunControl, journal: Journal, clock: Clock | None = None) -> None:
        self.control = control
        self.journal = journal
        self.clock = clock if clock is not None else default_clock()
        self._lock = asyncio.Lock()
        self._accepted = False  # the command being executed is journaled as accepted

    @property
    def state(self) -> RunState:
        """The run's current state."""
        return self.control.machine.state

    async def execute(
        self, command: str | Mapping[str, object] | Command, source: str = "local"
    ) -> Reply:
        """Parse, check, journal, execute and answer one command. Never raises (but a
        cancellation of the caller is not swallowed)."""
        async with self._lock:
            cmd = command if isinstance(command, Command) else parse_command(command)
            self._accepted = False
            try:
                return await self._execute(cmd, source)
            except Exception as e:
                log.exception("command %s from %s failed", cmd.name, source)
                message = f"internal error: {type(e).__name__}: {e}"
                if self._accepted:
                    return self._failed(cmd, Reason.INTERNAL_ERROR, message)
                return self._refuse(cmd, source, Reason.INTERNAL_ERROR, message)

    # ------------------------------------------------------------------ the steps

    async def _execute(self, cmd: Command, source: str) -> Reply:
        if cmd.problem is not None:
            return self._refuse(cmd, source, cmd.problem, cmd.message)
        spec = COMMANDS[cmd.name]
        if spec.trigger is not None:
            return await self._lifecycle(cmd, spec.trigger, source)
        state = self.state
        if state not in spec.states:
            reason = Reason.TERMINAL if state.terminal else Reason.WRONG_STATE
            where = ", ".join(s.value for s in spec.states)
            return self._refuse(
                cmd,
                source,
                reason,
                f"cannot {cmd.name}: the run is {state.value};"
                f" {cmd.name} is accepted only when it is {where}",
            )
        refusal = self._check(cmd)
        if refusal is not None:
            return self._refuse(cmd, source, refusal.reason, refusal.message)
        self._journal(cmd, source, True, Reason.OK)
        try:
            message, status = await self._act(cmd)
        except CommandRefused as e:
            return self._failed(cmd, e.reason, e.message)
        return Reply(cmd.name, True, Reason.OK, message, self.state, status)

    def _check(self, cmd: Command) -> Verdict | None:
        control, state = self.control, self.state
        if cmd.name == "set":
            return control.check_parameter(cmd.args["name"], cmd.args["value"])
        if cmd.name == "confirm":
            waiting, step = control.waiting_for_confirmation(), cmd.args["step"]
            if waiting is None:
                return Verdict(
                    False, Reason.NOT_WAITING, "no crew step is waiting for a confirmation", state
                )
            if waiting != step:
                return Verdict(
                    False,
                    Reason.WRONG_STEP,
                    f"the step waiting is {waiting!r}, not {step!r}",
                    state,
                )
        if cmd.name == "skip" and control.current_step() is None:
            return Verdict(False, Reason.NOTHING_TO_SKIP, "no step to skip", state)
        return None

    async def _act(self, cmd: Command) -> tuple[str, Mapping[str, object] | None]:
        control = self.control
        if cmd.name == "set":
            return await control.set_parameter(cmd.args["name"], cmd.args["value"]), None
        if cmd.name == "confirm":
            return await control.confirm(cmd.args["step"]), None
        if cmd.name == "skip":
            return await control.skip(), None
        status = dict(control.status())
        json.dumps(status)  # a status that is not JSON-able is an engine bug: INTERNAL_ERROR
        return f"the run is {self.state.value}", status

    async def _lifecycle(self, cmd: Command, trigger: str, source: str) -> Reply:
        async def journal_accepted() -> None:
            self._journal(cmd, source, True, Reason.OK)

        verdict = await self.control.machine.fire(
            trigger, f"{source} command {cmd.name}", on_accept=journal_accepted
        )
        if not verdict.accepted:
            return self._refuse(cmd, source, verdict.reason, verdict.message)
        try:
            done = await self.control.lifecycle(trigger)
        except CommandRefused as e:
            return self._failed(cmd, e.reason, e.message)
        message = f"{verdict.message}; {done}" if done else verdict.message
        return Reply(cmd.name, True, Reason.OK, message, self.state)

    # ------------------------------------------------------------------ journal and answers

    def _journal(self, cmd: Command, source: str, accepted: bool, reason: Reason) -> None:
        self.journal.record_command(
            cmd.name,
            dict(cmd.args),
            source,
            accepted,
            reason.value,
            self.control.protocol_time(),
            self.clock.wall(),
        )
        self._accepted = accepted

    def _refuse(self, cmd: Command, source: str, reason: Reason, message: str) -> Reply:
        log.info("refused %s from %s: %s %s", cmd.name or "?", source, reason.value, message)
        try:
            self._journal(cmd, source, False, reason)
        except Exception:
            log.exception("cannot journal the refusal of %s", cmd.name)
        return Reply(cmd.name, False, reason, message, self.state)

    def _failed(self, cmd: Command, reason: Reason, message: str) -> Reply:
        """An accepted (journaled) command the engine could not do after all: journal an event."""
        log.warning("accepted %s could not be done: %s %s", cmd.name, reason.value, message)
        try:
            self.journal.record_event(
                "COMMAND_NOT_DONE",
                "warning",
                f"{cmd.name}: {reason.value}: {message}",
                self.clock.wall(),
            )
        except Exception:
            log.exception("cannot journal that %s was not done", cmd.name)
        return Reply(cmd.name, False, reason, message, self.state)
