"""Tecan Cavro XCalibur / XP3000 syringe pump with valve: the driver (a SyringePump and a Valve).

This module is the driver core: framing and exchanges (repeated as
:mod:`kiboauto.drivers.cavro_repeat` allows), alarm latching, reports, settings, motion
primitives, valve, identify and readings. The exactly-once pump actions (markers, runs,
pause/resume, ``delivered_since``, ``adopt``) are in :mod:`kiboauto.drivers.cavro_actions`; the
bytes on the line (DT and OEM framing, status byte, error codes, units of the plunger) are in
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

import logging
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionIncomplete,
    ActionStatus,
    AlarmLatch,
    AnyQuantity,
    DeviceAlarm,
    DeviceBusy,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    FramingError,
    QuantityLike,
    Reading,
    ReadingDescription,
    Severity,
)
from kiboauto.units import Q_, magnitude_in

from .cavro_actions import CavroPumpActions
from .cavro_repeat import LOST_ANSWER, REPEAT_POLICY, REPORT_LETTERS, Repeat, repeat_policy
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

PumpActionStatus = ActionStatus
"""The old name of a Cavro action's status: :class:`ActionStatus` keeps the delivered volume."""


def _severity(code: int) -> Severity:
    return Severity.MAJOR if code in FATAL_ERRORS or code in (6, 7) else Severity.MINOR


class CavroPump(CavroPumpActions):
    """A Cavro XCalibur / XP3000 pump and its valve, as a SyringePump and a Valve.

    Options: ``address`` (pump number 1..15), ``syringe_volume_ul`` (volume of a full stroke),
    ``ports`` (valve positions: 3 or 4 for a 3-/4-port valve driven by I/O/B/E, more for a
    distribution valve driven by ``I<n>``), ``oem`` (OEM framing instead of DT), ``input_port`` /
    ``output_port`` (valve port used by withdraw / dispense), ``resolution`` (0: 3000
    increments, 1: 24000), ``init_command`` (``Z``, ``Y`` or ``W``), ``init_force`` (0..2),
    ``timeout`` (per answer, s), ``retries`` (for queries), ``poll_interval`` (s).

    Alarms (every error code the pump reports in a ``Q`` answer, or as pending in a report) are
    latched in :attr:`alarms`, whoever asked. The pump actions (markers, dispense/withdraw,
    pause/resume, ``delivered_since``, ``adopt``) are :class:`CavroPumpActions`.
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
        except LOST_ANSWER:
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
            except LOST_ANSWER:
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
        elif command[:1] in REPORT_LETTERS and answer.data:
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
        except LOST_ANSWER as e:
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
        """Relative pick-up ``P<n>``; waits until done."""
        await self._relative_move("P", steps)

    async def dispense_steps(self, steps: int) -> None:
        """Relative dispense ``D<n>``; waits until done."""
        await self._relative_move("D", steps)

    async def _relative_move(self, letter: str, steps: int) -> None:
        before = await self.position()
        await self._primitive(
            f"{letter}{int(steps)}", self._move_budget(int(steps)), baseline_steps=before
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

    # -- SyringePump settings ------------------------------------------------------------------
    async def set_diameter(self, diameter: QuantityLike) -> None:
        """Syringe bore: the full-stroke volume becomes bore area x 30 mm stroke."""
        d_mm = magnitude_in(diameter, "mm")
        if d_mm <= 0:
            raise ValueError(f"syringe diameter must be > 0, got {diameter}")
        self.syringe_volume_ul = math.pi / 4 * d_mm**2 * STROKE_LENGTH_MM

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


def _check_range(what: str, value: int, bounds: tuple[int, int]) -> None:
    if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} must be an integer {bounds[0]}..{bounds[1]}, got {value!r}")
