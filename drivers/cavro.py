"""Tecan Cavro XCalibur / XP3000 syringe pump with valve: the driver (a SyringePump and a Valve).

The bytes on the line (DT and OEM framing, status byte, error codes, units of the plunger) are in
:mod:`kiboauto.drivers.cavro_wire`; see ``docs/protocols/cavro.md``.

What the driver promises (docs/protocols/cavro.md, "After a crash: what this device promises"):

* a move is sent only after ``Q`` said the pump is idle; a start the pump refuses is reported
  and never followed by ``T`` (it would stop somebody else's move); ``T`` only stops a move this
  driver started;
* ``Q`` is never repeated (reading it clears the pump's pending error); every ``Q`` answer, and
  every report that shows a pending error, is latched in :attr:`CavroPump.alarms` whoever sent
  it, and a pump action raises the alarm latched while it ran;
* a pump action succeeds only when the plunger position read back at the end is the target; the
  volume is always read back from the plunger position (``?``) against the marker's baseline;
* a lost answer to a start is resolved by asking the pump (busy? plunger moved?), never by
  sending the move again (except OEM's repeat flag, which the pump itself de-duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionEstimate,
    ActionIncomplete,
    ActionMarker,
    ActionStatus,
    AlarmLatch,
    AnyQuantity,
    Delivery,
    DeviceAlarm,
    DeviceBusy,
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceStateLost,
    DeviceTimeout,
    FramingError,
    Progress,
    PumpResult,
    QuantityLike,
    Reading,
    ReadingDescription,
    Severity,
)
from kiboauto.units import Q_, magnitude_in

from .cavro_wire import (
    ANY,
    CUTOFF_SPEED_RANGE,
    EMPTY,
    ERROR_MESSAGES,
    FATAL_ERRORS,
    INTEGER,
    PULSES_PER_STROKE,
    SLOPE_RANGE,
    SPEED_CODES,
    START_SPEED_RANGE,
    STEPS_PER_STROKE,
    STROKE_LENGTH_MM,
    TOP_SPEED_RANGE,
    VALVE,
    CavroAnswer,
    address_char,
    build_dt_command,
    build_oem_command,
    parse_any_answer,
    parse_dt_answer,
    parse_oem_answer,
)
from .transport import BadFrame, Resync, SerialTransport

__all__ = ["REPEAT_POLICY", "CavroPump", "PumpActionStatus", "Repeat", "repeat_policy"]

log = logging.getLogger(__name__)

_LOST = (DeviceTimeout, FramingError, DeviceDisconnected)
"""What a lost, late or garbled answer looks like to the driver."""


# ---------------------------------------------------------------------------------------------
# Which commands may be sent again: declared once
# ---------------------------------------------------------------------------------------------
class Repeat(Enum):
    """May a command be sent again after its answer was lost?"""

    ALWAYS = "always"  # queries and idempotent settings: the same result however often
    OEM_ONLY = "oem"  # moves: only as an OEM block with the repeat flag (the pump de-duplicates)
    NEVER = "never"  # Q: reading the status clears the pending error, a second Q would lose it


REPEAT_POLICY: dict[str, Repeat] = {
    # reports
    "?": Repeat.ALWAYS,
    "&": Repeat.ALWAYS,
    "#": Repeat.ALWAYS,
    "F": Repeat.ALWAYS,
    "Q": Repeat.NEVER,
    # settings: setting the same value twice changes nothing
    "V": Repeat.ALWAYS,
    "v": Repeat.ALWAYS,
    "c": Repeat.ALWAYS,
    "L": Repeat.ALWAYS,
    "S": Repeat.ALWAYS,
    "N": Repeat.ALWAYS,
    "K": Repeat.ALWAYS,
    "k": Repeat.ALWAYS,
    # terminate: stopping a stopped plunger does nothing
    "T": Repeat.ALWAYS,
    # everything that moves or runs
    "A": Repeat.OEM_ONLY,
    "a": Repeat.OEM_ONLY,
    "P": Repeat.OEM_ONLY,
    "p": Repeat.OEM_ONLY,
    "D": Repeat.OEM_ONLY,
    "d": Repeat.OEM_ONLY,
    "I": Repeat.OEM_ONLY,
    "O": Repeat.OEM_ONLY,
    "B": Repeat.OEM_ONLY,
    "E": Repeat.OEM_ONLY,
    "Z": Repeat.OEM_ONLY,
    "Y": Repeat.OEM_ONLY,
    "W": Repeat.OEM_ONLY,
    "M": Repeat.OEM_ONLY,
    "R": Repeat.OEM_ONLY,
    "X": Repeat.OEM_ONLY,
    "z": Repeat.OEM_ONLY,
}
"""Repeat policy of every command letter the driver knows; unknown letters count as moves."""

_REPORTS = frozenset("?&#F")
_ORDER = {Repeat.ALWAYS: 0, Repeat.OEM_ONLY: 1, Repeat.NEVER: 2}


def repeat_policy(command: str) -> Repeat:
    """The policy of a command string: the strictest of its commands'.

    A report (``?``, ``&``, ``#``, ``F``) is one command with its operand; ``Q`` never repeats;
    a string of commands repeats only if every command in it does.
    """
    if not command:
        return Repeat.OEM_ONLY  # a bare R runs a loaded string
    if command[0] in _REPORTS:
        return Repeat.ALWAYS
    if command[0] == "Q":
        return Repeat.NEVER
    worst = Repeat.ALWAYS
    for letter in re.findall(r"[A-Za-z?&#]", command):
        policy = REPEAT_POLICY.get(letter, Repeat.OEM_ONLY)
        if _ORDER[policy] > _ORDER[worst]:
            worst = policy
    return worst


def _severity(code: int) -> Severity:
    return Severity.MAJOR if code in FATAL_ERRORS or code in (6, 7) else Severity.MINOR


# ---------------------------------------------------------------------------------------------
# Action state
# ---------------------------------------------------------------------------------------------
class PumpActionStatus(ActionStatus):
    """An :class:`ActionStatus` of a Cavro dispense/withdraw that keeps the delivered volume.

    ``delivered_ul`` is the volume read back from the plunger when the action ended (success,
    error, :meth:`cancel` or ``stop()``); ``None`` with ``delivered_unknown`` saying why when it
    could not be read back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.delivered_ul: float | None = None
        self.delivered_unknown: str = ""
        super().__init__(*args, **kwargs)


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


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class CavroPump:
    """A Cavro XCalibur / XP3000 pump and its valve, as a SyringePump and a Valve.

    Options: ``address`` (pump number 1..15), ``syringe_volume_ul`` (volume of a full stroke),
    ``ports`` (valve positions: 3 or 4 for a 3-/4-port valve driven by I/O/B/E, more for a
    distribution valve driven by ``I<n>``), ``oem`` (OEM framing instead of DT), ``input_port`` /
    ``output_port`` (valve port used by withdraw / dispense), ``resolution`` (0: 3000
    increments, 1: 24000), ``init_command`` (``Z``, ``Y`` or ``W``), ``init_force`` (0..2),
    ``timeout`` (per answer, s), ``retries`` (for queries), ``poll_interval`` (s).

    Alarms (every error code the pump reports in a ``Q`` answer, or as pending in a report) are
    latched in :attr:`alarms`, whoever asked.
    """

    protocol: ClassVar[str] = "cavro"
    kind: ClassVar[str] = "pump"
    default_baudrate: ClassVar[int] = 9600

    def __init__(
        self,
        name: str,
        transport: SerialTransport,
        *,
        clock: Clock,
        address: int = 1,
        syringe_volume_ul: float = 250.0,
        ports: int = 9,
        oem: bool = False,
        input_port: int = 1,
        output_port: int = 2,
        resolution: int = 0,
        init_command: str = "Z",
        init_force: int = 0,
        timeout: float = 1.0,
        retries: int = 2,
        poll_interval: float = 0.1,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"unknown CavroPump option(s): {sorted(options)}")
        address_char(address)
        if ports < 2 or ports > 24:
            raise ValueError(f"valve ports must be 2..24, got {ports}")
        for label, port in (("input_port", input_port), ("output_port", output_port)):
            if not 1 <= port <= ports:
                raise ValueError(f"{label} {port} is not a port of a {ports}-port valve")
        if resolution not in STEPS_PER_STROKE:
            raise ValueError(f"resolution must be 0 or 1, got {resolution!r}")
        if init_command not in ("Z", "Y", "W"):
            raise ValueError(f"init_command must be Z, Y or W, got {init_command!r}")
        if syringe_volume_ul <= 0:
            raise ValueError("syringe_volume_ul must be > 0")
        self.name = name
        self.transport = transport
        self.clock = clock
        self.address = address
        self.syringe_volume_ul = float(syringe_volume_ul)
        self.ports = ports
        self.oem = oem
        self.input_port = input_port
        self.output_port = output_port
        self.resolution = resolution
        self.init_command = init_command
        self.init_force = init_force
        self.timeout = timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self.alarms = AlarmLatch(name)
        self.lost_status_answers = 0  # Q answers lost on the line (their error may be lost too)
        self._pending = 0  # error code latched from a report and not yet read by a Q
        self._stops = 0
        self._sequence = 0
        self._top_speed = 1400
        self._start_speed = 900
        self._cutoff_speed = 900
        self._slope = 14
        self._firmware = ""
        transport.set_resync(
            Resync(
                build_dt_command(address, "&", execute=False),
                self._resync_parse,
                what="& (firmware)",
            )
        )

    # -- framing -------------------------------------------------------------------------------
    @property
    def steps_per_stroke(self) -> int:
        return STEPS_PER_STROKE[self.resolution]

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % 7 + 1
        return self._sequence

    def _resync_parse(self, buf: bytes) -> tuple[bool, int] | None:
        """The answer to the resync query ``&``: text, where every other report is a number,
        a valve letter or nothing. It is sent in DT framing in both framings: an OEM block would
        overwrite the sequence number the pump remembers and defeat OEM's repeat flag."""
        got = parse_any_answer(buf)
        if got is None:
            return None
        answer, oem, used = got
        text = answer.data
        matched = (
            not oem
            and text != ""
            and INTEGER.fullmatch(text) is None
            and VALVE.fullmatch(text) is None
            and (not self._firmware or text == self._firmware)
        )
        return matched, used

    def _parser(
        self, expect: re.Pattern[str], check: Callable[[str], None] | None
    ) -> Callable[[bytes], tuple[CavroAnswer, int] | None]:
        base = parse_oem_answer if self.oem else parse_dt_answer

        def parse(buf: bytes) -> tuple[CavroAnswer, int] | None:
            got = base(buf, expect)
            if got is not None and check is not None and got[0].data:
                check(got[0].data)
            return got

        return parse

    async def _transact(
        self,
        command: str,
        *,
        execute: bool,
        expect: re.Pattern[str],
        check: Callable[[str], None] | None = None,
        policy: Repeat | None = None,
        timeout: float | None = None,
    ) -> CavroAnswer:
        """One command/answer exchange, repeated only as :data:`REPEAT_POLICY` allows.

        DT: the transport repeats the command only for :attr:`Repeat.ALWAYS`. OEM: a lost or
        garbled answer is followed by the same block with the repeat flag set and the same
        sequence number (the pump executes it only if it never saw the first one), for every
        command but ``Q``.
        """
        policy = repeat_policy(command) if policy is None else policy
        limit = self.timeout if timeout is None else timeout
        parse = self._parser(expect, check)
        try:
            if not self.oem:
                payload = build_dt_command(self.address, command, execute=execute)
                retries = self.retries if policy is Repeat.ALWAYS else 0
                answer = await self.transport.request(
                    payload, parse, timeout=limit, retries=retries, what=command
                )
            else:
                answer = await self._oem_exchange(command, execute, parse, limit, policy)
        except _LOST:
            if command == "Q":
                # The pump may have answered (and cleared its pending error) without us
                # hearing it: that error is gone; the action's final position check stays.
                self.lost_status_answers += 1
                self._pending = 0
            raise
        self._observe(command, answer)
        return answer

    async def _oem_exchange(
        self,
        command: str,
        execute: bool,
        parse: Callable[[bytes], tuple[CavroAnswer, int] | None],
        limit: float,
        policy: Repeat,
    ) -> CavroAnswer:
        sequence = self._next_sequence()
        repeat = False
        attempt = 0
        while True:
            payload = build_oem_command(
                self.address, sequence, command, repeat=repeat, execute=execute
            )
            try:
                return await self.transport.request(
                    payload, parse, timeout=limit, retries=0, what=command
                )
            except _LOST:
                if policy is Repeat.NEVER or attempt >= self.retries:
                    raise
                attempt += 1
                repeat = True

    def _observe(self, command: str, answer: CavroAnswer) -> None:
        """Latch the error an answer carries (whoever asked).

        ``Q`` reports the pending error and clears it; other reports show it without clearing
        (latched once, until a ``Q`` reads it). Answers to other commands are not latched: their
        error is the command's refusal, raised to the caller.
        """
        code = answer.error
        if command.startswith("Q"):
            if code and code != self._pending:
                self._latch(code, f"reported by Q ({ERROR_MESSAGES.get(code, 'undocumented')})")
            self._pending = 0
        elif command[:1] in _REPORTS and answer.data:
            if code and code != self._pending:
                self._latch(code, f"pending in the answer to {command!r}")
                self._pending = code
            elif not code:
                self._pending = 0

    def _latch(self, code: int, how: str) -> None:
        message = ERROR_MESSAGES.get(code, f"undocumented error {code}")
        self.alarms.latch(str(code), f"{message} ({how})", self.clock.wall(), _severity(code))

    def _alarm_for(self, answer: CavroAnswer, what: str) -> DeviceError:
        if answer.error == 15:
            return DeviceBusy(self.name, f"{what!r} refused: command overflow (the pump is busy)")
        return DeviceAlarm(self.name, str(answer.error), f"{answer.error_message} (after {what!r})")

    def _raise_for(self, answer: CavroAnswer, what: str) -> CavroAnswer:
        if answer.error:
            raise self._alarm_for(answer, what)
        return answer

    # -- typed reports ------------------------------------------------------------------------
    def _int_check(self, what: str, low: int, high: int) -> Callable[[str], None]:
        def check(text: str) -> None:
            if INTEGER.fullmatch(text) is None or not low <= int(text) <= high:
                raise BadFrame(f"{what} {text!r} outside {low}..{high}")

        return check

    def _check_position(self, text: str) -> None:
        self._int_check("plunger position", 0, self.steps_per_stroke)(text)

    def _check_port(self, text: str) -> None:
        if text.isdigit():
            if not 1 <= int(text) <= self.ports:
                raise BadFrame(f"valve port {text!r} outside 1..{self.ports}")
        elif self.ports > 4 or "iobe".find(text.lower()) not in range(self.ports):
            raise BadFrame(f"valve position {text!r} on a {self.ports}-port valve")

    # -- raw access ----------------------------------------------------------------------------
    async def raw(
        self, command: str, *, execute: bool = True, safe: bool | None = None
    ) -> CavroAnswer:
        """Send any command string; return the answer as is (errors are not raised).

        ``safe`` overrides :data:`REPEAT_POLICY` (True: repeat after a lost answer)."""
        policy = None if safe is None else (Repeat.ALWAYS if safe else Repeat.NEVER)
        return await self._transact(command, execute=execute, expect=ANY, policy=policy)

    async def command(self, command: str) -> CavroAnswer:
        """Send and execute a command string; raise :class:`DeviceAlarm` on an error status."""
        answer = await self._transact(command, execute=True, expect=ANY)
        return self._raise_for(answer, command)

    async def query(
        self,
        report: str,
        expect: re.Pattern[str] = ANY,
        check: Callable[[str], None] | None = None,
    ) -> str:
        """A report command (``?``, ``?1``, ``&``...): retried, data returned as text.

        A report refused by the pump (an error and no data) raises :class:`DeviceAlarm`; a
        pending error shown beside the data is latched in :attr:`alarms`, not raised."""
        answer = await self._transact(report, execute=False, expect=expect, check=check)
        if answer.error and not answer.data:
            raise self._alarm_for(answer, report)
        return answer.data

    async def status(self) -> CavroAnswer:
        """``Q``: ready/busy and the pending error (reading it clears it in the pump; the error is
        latched in :attr:`alarms`). Never repeated after a lost answer."""
        return await self._transact("Q", execute=False, expect=EMPTY)

    async def _set(self, command: str) -> None:
        """An idempotent setting (speeds, resolution): safe to repeat."""
        answer = await self._transact(command, execute=True, expect=EMPTY)
        self._raise_for(answer, command)

    # -- lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, read status and firmware, set the resolution; nothing moves."""
        await self.transport.open()
        answer = await self.status()
        self._firmware = await self.firmware()
        if answer.ready:
            await self._set(f"N{self.resolution}")
        self._top_speed = int(
            await self.query("?2", INTEGER, self._int_check("top speed", 5, 6000))
        )

    async def close(self) -> None:
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        """Who the pump is; raises only :class:`DeviceError` subclasses, whatever it answers."""
        try:
            return await self._identify()
        except DeviceError:
            raise
        except (ValueError, BadFrame, UnicodeError, IndexError) as e:
            raise FramingError(self.name, f"unexpected answer while identifying: {e}") from e

    async def _identify(self) -> DeviceInfo:
        answer = await self.status()
        firmware = self._firmware = await self.firmware()
        details: dict[str, Any] = {
            "address": self.address,
            "framing": "OEM" if self.oem else "DT",
            "syringe_volume_ul": self.syringe_volume_ul,
            "resolution": self.resolution,
            "steps_per_stroke": self.steps_per_stroke,
            "ports": self.ports,
            "error_code": answer.error,
            "identity": self.identity,
        }
        try:
            details["position_steps"] = await self.position()
            details["valve_port"] = await self.current_port()
            details["initialisations"] = await self.epoch()
        except DeviceError as e:
            details["query_error"] = str(e)
        state = "ready" if answer.ready else "busy"
        if answer.error:
            state += f", error {answer.error}: {answer.error_message}"
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model="Cavro XCalibur/XP3000",
            firmware=firmware,
            port=self.transport.port,
            status=state,
            details=details,
        )

    @property
    def identity(self) -> str:
        """Which physical pump: line, address and firmware (read at connect/identify)."""
        return f"cavro:{self.transport.port}:address={self.address}:firmware={self._firmware}"

    # -- motion primitives ---------------------------------------------------------------------
    async def wait_ready(
        self,
        timeout: float,
        *,
        on_poll: Callable[[], Any] | None = None,
        what: str = "move",
        cursor: int | None = None,
    ) -> None:
        """Poll ``Q`` until the pump is ready; raise the pump's error as :class:`DeviceAlarm`.

        With ``cursor`` (a value of ``alarms.count``) an error another caller's ``Q`` read since
        then is raised too. A lost ``Q`` answer is not repeated: the next poll is a new question
        (up to ``retries`` lost answers in a row)."""
        deadline = self.clock.now() + timeout
        lost = 0
        while True:
            try:
                answer = await self.status()
            except (DeviceTimeout, FramingError) as e:
                lost += 1
                if lost > self.retries:
                    raise
                log.warning("%s: status answer lost while waiting for %s: %s", self.name, what, e)
                await self.clock.sleep(self.poll_interval)
                continue
            lost = 0
            self._raise_for(answer, what)
            if answer.ready:
                if cursor is not None:
                    events = self.alarms.since(cursor)
                    if events:
                        raise DeviceAlarm(self.name, events[0].code, events[0].message)
                return
            if on_poll is not None:
                result = on_poll()
                if hasattr(result, "__await__"):
                    await result
            if self.clock.now() >= deadline:
                raise DeviceTimeout(self.name, f"{what} not finished within {timeout:g} s")
            await self.clock.sleep(self.poll_interval)

    def _move_budget(self, steps: int, speed: int | None = None) -> float:
        pulses = abs(steps) * PULSES_PER_STROKE / self.steps_per_stroke
        return 5.0 + 2.0 * pulses / max(speed or self._top_speed, 5)

    async def _ensure_idle(self, what: str) -> CavroAnswer:
        """``Q`` before a move: a busy pump gets nothing (:class:`DeviceBusy`)."""
        answer = await self.status()
        if answer.busy:
            raise DeviceBusy(self.name, f"the pump is busy: {what!r} not sent")
        return answer

    async def _send_move(self, command: str) -> bool:
        """Send a moving command once (OEM: plus repeat-flag resends). True: the pump accepted
        it; False: its answer was lost (ask the pump). A refusal raises and sends nothing else:
        no ``T``, the move running may be somebody else's."""
        try:
            answer = await self._transact(command, execute=True, expect=EMPTY)
        except _LOST as e:
            log.warning("%s: answer to %r lost (%s): asking the pump", self.name, command, e)
            return False
        if answer.error:
            # Refused (the pump was idle at our Q just before, so no pending error can show
            # here but the refusal's own). Nothing else is sent: no T.
            raise self._alarm_for(answer, command)
        log.info("%s: started %r", self.name, command)
        return True

    async def _started_anyway(self, baseline_steps: int | None) -> bool:
        """After a lost answer to a start: did the pump take it? Busy (we saw it idle just
        before), or the plunger away from ``baseline_steps``."""
        lost = 0
        while True:
            try:
                answer = await self.status()
                break
            except (DeviceTimeout, FramingError):
                lost += 1
                if lost > self.retries:
                    raise
        if answer.busy:
            return True
        if baseline_steps is None:
            return False
        return await self.position() != baseline_steps

    async def _primitive(
        self,
        command: str,
        budget: float,
        *,
        baseline_steps: int | None,
        done: Callable[[], Any] | None = None,
    ) -> None:
        """A single move: idle check, start once, wait, raise what the pump reported."""
        await self._ensure_idle(command)
        cursor = self.alarms.count
        if not await self._send_move(command):
            started = await self._started_anyway(baseline_steps)
            if not started and (done is None or not await done()):
                raise ActionIncomplete(
                    self.name, f"start of {command!r} not confirmed: the pump did not move"
                )
        await self.wait_ready(budget, what=command, cursor=cursor)

    async def initialize(self, command: str | None = None, force: int | None = None) -> None:
        """Initialise plunger and valve (``Z``/``Y``/``W``) and wait until done."""
        cmd = command or self.init_command
        if cmd not in ("Z", "Y", "W"):
            raise ValueError(f"initialisation command must be Z, Y or W, got {cmd!r}")
        level = self.init_force if force is None else force
        before = await self._epoch_or_none()

        async def done() -> bool:
            return before is not None and await self._epoch_or_none() != before

        await self._primitive(
            f"{cmd}{level}",
            self._move_budget(self.steps_per_stroke) + 10.0,
            baseline_steps=None,
            done=done,
        )
        self.alarms.acknowledge()

    async def move_to(self, steps: int) -> None:
        """Absolute plunger position ``A<n>``; waits until done."""
        before = await self.position()

        async def done() -> bool:
            return await self.position() == int(steps)

        await self._primitive(
            f"A{int(steps)}",
            self._move_budget(int(steps) - before),
            baseline_steps=before,
            done=done,
        )

    async def pick_up(self, steps: int) -> None:
        before = await self.position()
        await self._primitive(
            f"P{int(steps)}", self._move_budget(int(steps)), baseline_steps=before
        )

    async def dispense_steps(self, steps: int) -> None:
        before = await self.position()
        await self._primitive(
            f"D{int(steps)}", self._move_budget(int(steps)), baseline_steps=before
        )

    async def terminate(self) -> None:
        """``T``: stop the plunger now."""
        await self._transact("T", execute=False, expect=EMPTY)

    async def position(self) -> int:
        """Plunger position in increments of the current resolution (``?``)."""
        return int(await self.query("?", INTEGER, self._check_position))

    async def firmware(self) -> str:
        return await self.query("&")

    async def epoch(self) -> int:
        """``?15``: how many initialisations the pump counted (a re-initialisation shows)."""
        return int(await self.query("?15", INTEGER, self._int_check("initialisations", 0, 10**7)))

    async def _epoch_or_none(self) -> int | None:
        try:
            return await self.epoch()
        except DeviceAlarm:  # a firmware without ?15
            return None

    # speeds ------------------------------------------------------------------------------------
    async def set_top_speed(self, pulses_per_s: int) -> None:
        _check_range("top speed V", pulses_per_s, TOP_SPEED_RANGE)
        await self._set(f"V{pulses_per_s}")
        self._top_speed = pulses_per_s

    async def set_start_speed(self, pulses_per_s: int) -> None:
        _check_range("start speed v", pulses_per_s, START_SPEED_RANGE)
        await self._set(f"v{pulses_per_s}")
        self._start_speed = pulses_per_s

    async def set_cutoff_speed(self, pulses_per_s: int) -> None:
        _check_range("cutoff speed c", pulses_per_s, CUTOFF_SPEED_RANGE)
        await self._set(f"c{pulses_per_s}")
        self._cutoff_speed = pulses_per_s

    async def set_slope(self, code: int) -> None:
        _check_range("slope L", code, SLOPE_RANGE)
        await self._set(f"L{code}")
        self._slope = code

    async def set_speed_code(self, code: int) -> None:
        _check_range("speed code S", code, (0, len(SPEED_CODES) - 1))
        await self._set(f"S{code}")
        self._top_speed = SPEED_CODES[code]

    async def set_resolution(self, mode: int) -> None:
        if mode not in STEPS_PER_STROKE:
            raise ValueError(f"resolution must be 0 or 1, got {mode!r}")
        await self._set(f"N{mode}")
        self.resolution = mode

    async def speeds(self) -> dict[str, int]:
        return {
            "start": int(await self.query("?1", INTEGER, self._int_check("start speed", 0, 6000))),
            "top": int(await self.query("?2", INTEGER, self._int_check("top speed", 0, 6000))),
            "cutoff": int(await self.query("?3", INTEGER, self._int_check("cutoff", 0, 6000))),
        }

    # -- volumes -------------------------------------------------------------------------------
    def volume_to_steps(self, volume: QuantityLike) -> int:
        ul = magnitude_in(volume, "uL")
        return round(ul / self.syringe_volume_ul * self.steps_per_stroke)

    def steps_to_volume_ul(self, steps: float) -> float:
        return steps / self.steps_per_stroke * self.syringe_volume_ul

    def rate_to_speed(self, rate: QuantityLike) -> int:
        """A flow rate as a top speed in pulses/s (raises ValueError outside 5..6000)."""
        ul_per_s = magnitude_in(rate, "uL/s")
        speed = round(ul_per_s * PULSES_PER_STROKE / self.syringe_volume_ul)
        if not TOP_SPEED_RANGE[0] <= speed <= TOP_SPEED_RANGE[1]:
            lo, hi = (self.syringe_volume_ul * s / PULSES_PER_STROKE for s in TOP_SPEED_RANGE)
            raise ValueError(
                f"{self.name}: rate {rate} is outside this syringe's range "
                f"{lo:.4g}..{hi:.4g} uL/s (top speed 5..6000 pulses/s)"
            )
        return speed

    # -- SyringePump ---------------------------------------------------------------------------
    async def set_diameter(self, diameter: QuantityLike) -> None:
        """Syringe bore: the full-stroke volume becomes bore area x 30 mm stroke."""
        d_mm = magnitude_in(diameter, "mm")
        if d_mm <= 0:
            raise ValueError(f"syringe diameter must be > 0, got {diameter}")
        self.syringe_volume_ul = math.pi / 4 * d_mm**2 * STROKE_LENGTH_MM

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

    def dispense(self, volume: QuantityLike, rate: QuantityLike) -> PumpActionStatus:
        return self._prepare_and_start("dispense", volume, rate)

    def withdraw(self, volume: QuantityLike, rate: QuantityLike) -> PumpActionStatus:
        return self._prepare_and_start("withdraw", volume, rate)

    def _prepare_and_start(
        self, kind: str, volume: QuantityLike, rate: QuantityLike
    ) -> PumpActionStatus:
        self._plan(kind, volume, rate)  # ValueError now, not from inside the task
        holder: dict[str, _Run] = {}

        async def body(status: ActionStatus) -> PumpResult:
            assert isinstance(status, PumpActionStatus)
            try:
                marker = await self.prepare(kind, volume, rate)
            except DeviceError as e:
                e.delivered_ul = status.delivered_ul = 0.0  # nothing was sent
                raise
            status.marker = marker
            run = holder["run"] = self._new_run(marker)
            return await self._drive(status, run, adopt=False)

        return self._action_status(f"{self.name}:{kind}", body, holder)

    def start(self, marker: ActionMarker) -> PumpActionStatus:
        """Send a prepared action: ``Q`` (idle?), ``?`` (still at the baseline?), then one string
        ``I<port>V<speed>D<steps>`` (``P`` to withdraw)."""
        run = self._new_run(marker)
        holder = {"run": run}

        async def body(status: ActionStatus) -> PumpResult:
            assert isinstance(status, PumpActionStatus)
            return await self._drive(status, run, adopt=False)

        status = self._action_status(f"{self.name}:{marker.kind}", body, holder)
        status.marker = marker
        return status

    def adopt(self, marker: ActionMarker) -> PumpActionStatus:
        """Follow the move of ``marker`` (found running by :meth:`delivered_since`, e.g. after a
        crash) to its end; ends with a :class:`PumpResult` or an error carrying the volume."""
        run = self._new_run(marker)
        holder = {"run": run}

        async def body(status: ActionStatus) -> PumpResult:
            assert isinstance(status, PumpActionStatus)
            return await self._drive(status, run, adopt=True)

        status = self._action_status(f"{self.name}:{marker.kind}:adopted", body, holder)
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
    ) -> PumpActionStatus:
        async def pause() -> None:
            run = holder.get("run")
            if run is None:
                raise DeviceError(self.name, "the action has not started yet")
            await self._pause(run)

        async def resume() -> None:
            await self._resume(holder["run"])

        return PumpActionStatus(label, body, pause=pause, resume=resume)

    # -- the action ----------------------------------------------------------------------------
    def _move_command(self, run: _Run, steps: int) -> str:
        base = _Base.of(run.marker)
        letter = "D" if run.marker.kind == "dispense" else "P"
        return f"{self._valve_command(base.port)}V{base.speed}{letter}{steps}"

    async def _drive(self, status: PumpActionStatus, run: _Run, *, adopt: bool) -> PumpResult:
        marker = run.marker
        try:
            if adopt:
                # An alarm the pump kept while nobody listened is read by delivered_since's Q:
                # it belongs to this action.
                run.cursor, run.stops = self.alarms.count, self._stops
                run.lost_status = self.lost_status_answers
                delivery = await self.delivered_since(marker)
                run.sent = delivery.moving
                remaining = run.target_steps - round(delivery.delivered_ul / marker.step_ul)
                run.deadline = self.clock.now() + self._move_budget(
                    remaining, _Base.of(marker).speed
                )
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
        run.cursor, run.stops = self.alarms.count, self._stops
        run.lost_status = self.lost_status_answers
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
        run.deadline = self.clock.now() + self._move_budget(run.target_steps, base.speed)

    async def _follow(self, status: PumpActionStatus, run: _Run) -> None:
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

    async def _report(self, status: PumpActionStatus, run: _Run, message: str) -> float:
        _, ul = await self._measure(run.marker)
        target = run.marker.target_ul
        fraction = min(max(ul / target, 0.0), 1.0) if target else 1.0
        status.report(Progress(fraction, ul, target, "uL", message))
        return ul

    async def _conclude(self, status: PumpActionStatus, run: _Run) -> PumpResult:
        marker = run.marker
        steps, ul = await self._measure(marker)
        status.delivered_ul = ul
        target = marker.target_ul
        status.report(Progress(min(ul / target, 1.0) if target else 1.0, ul, target, "uL", "end"))
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

    async def _read_back(
        self, status: PumpActionStatus, run: _Run, error: DeviceError | None
    ) -> None:
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
        status.report(Progress(min(ul / target, 1.0) if target else 1.0, ul, target, "uL", note))

    async def _after_cancel(self, status: PumpActionStatus, run: _Run) -> None:
        # An exchange cut short may leave its answer on its way: get back in step first.
        self.transport.out_of_step = True
        try:
            if run.sent and not run.paused:
                await self._halt()
        except DeviceError as e:
            log.warning("%s: could not stop after cancel: %s", self.name, e)
        await self._read_back(status, run, None)
        log.info("%s: %s cancelled at %s uL", self.name, status.name, status.delivered_ul)

    async def _after_error(self, status: PumpActionStatus, run: _Run, error: DeviceError) -> None:
        if isinstance(error, DeviceStateLost) and not error.delivered_unknown:
            error.delivered_unknown = error.message
            error.marker = run.marker
        if error.delivered_ul is not None or error.delivered_unknown:
            status.delivered_ul = error.delivered_ul
            status.delivered_unknown = error.delivered_unknown
            return
        if run.sent and not run.paused:
            try:
                await self._halt()  # our move, and we lost track of it: stop it
            except DeviceError as e:
                log.warning("%s: could not stop after %s: %s", self.name, error, e)
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
                run.deadline = self.clock.now() + self._move_budget(
                    remaining, _Base.of(run.marker).speed
                )
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
        except _LOST as e:
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

    # -- telemetry ------------------------------------------------------------------------------
    async def read(self) -> dict[str, Reading]:
        """``Q``, ``?``, ``?6``: busy, error, plunger (steps and uL in the syringe), valve."""
        answer = await self.status()
        steps = await self.position()
        port = await self.current_port()
        now = self.clock.wall()
        severity = max(
            self.alarms.severity, _severity(answer.error) if answer.error else Severity.OK
        )
        error_text = f"{answer.error}: {answer.error_message}" if answer.error else ""
        active = ", ".join(f"{c}: {e.message}" for c, e in self.alarms.active.items())
        volume: AnyQuantity = Q_(self.steps_to_volume_ul(steps), "uL")
        return {
            "plunger_volume": Reading(volume, now, severity),
            "plunger_steps": Reading(Q_(steps, "count"), now, severity),
            "valve_port": Reading(Q_(port, "count"), now),
            "busy": Reading(answer.busy, now),
            "error": Reading(error_text, now, severity, active),
        }

    def describe(self) -> dict[str, ReadingDescription]:
        return {
            "plunger_volume": ReadingDescription(
                "uL", (0.0, self.syringe_volume_ul), "volume in the syringe (from the plunger)"
            ),
            "plunger_steps": ReadingDescription(
                "count", (0.0, float(self.steps_per_stroke)), "plunger position in increments"
            ),
            "valve_port": ReadingDescription("count", (1.0, float(self.ports)), "valve port"),
            "busy": ReadingDescription("", None, "the pump is carrying out a command string"),
            "error": ReadingDescription(
                "", None, "error code read by this Q; message: alarms latched and not acknowledged"
            ),
        }

    async def stop(self) -> None:
        """``T``: stop the plunger now; a running action ends with :class:`ActionIncomplete`."""
        self._stops += 1
        await self.terminate()

    async def is_moving(self) -> bool:
        return (await self.status()).busy

    # -- Valve ---------------------------------------------------------------------------------
    @property
    def port_count(self) -> int:
        return self.ports

    def _valve_command(self, port: int) -> str:
        if not 1 <= port <= self.ports:
            raise ValueError(f"{self.name}: port {port} not in 1..{self.ports}")
        if self.ports <= 4:
            return "IOBE"[port - 1]
        return f"I{port}"

    async def select_port(self, port: int) -> None:
        cmd = self._valve_command(port)

        async def done() -> bool:
            return await self.current_port() == port

        await self._primitive(cmd, 10.0, baseline_steps=None, done=done)

    async def current_port(self) -> int:
        text = await self.query("?6", VALVE, self._check_port)
        if text.isdigit():
            return int(text)
        return "iobe".index(text.lower()) + 1


_VALVE_TIME_MAX = 0.6
"""Longest valve move before a plunger move (s): 0.15 + 0.035 s per port, 12 ports away."""


def _attach(
    error: DeviceError, marker: ActionMarker, delivered_ul: float | None = None
) -> DeviceError:
    error.marker = marker
    if delivered_ul is not None:
        error.delivered_ul = delivered_ul
    return error


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


def _check_range(what: str, value: int, bounds: tuple[int, int]) -> None:
    if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} must be an integer {bounds[0]}..{bounds[1]}, got {value!r}")
