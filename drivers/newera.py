"""New Era Pump Systems NE-500 / NE-1000 syringe pumps over RS-232: the driver.

The bytes on the line (basic and safe mode framing, replies, numbers) are in
:mod:`kiboauto.drivers.newera_wire`; see ``docs/protocols/newera.md``. Nothing here imports the
engine or the simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionStatus,
    DeviceAlarm,
    DeviceBusy,
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    FramingError,
    Progress,
)
from kiboauto.units import Q_, UnitError, magnitude_in

from .newera_wire import (
    ALARMS,
    ERRORS,
    MOVING,
    RATE_UNITS,
    VOLUME_UNITS,
    Reply,
    encode_basic_command,
    encode_safe_frame,
    format_number,
    parse_any_reply,
    parse_basic_reply,
    parse_number,
    parse_safe_reply,
)
from .transport import BadFrame, SerialTransport

__all__ = ["NewEraCommandError", "NewEraPump", "PumpStatus"]


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class NewEraCommandError(DeviceError):
    """The pump refused a command: ``code`` is its error (``""`` for ``?``, ``NA``, ``OOR``...)."""

    def __init__(self, device: str, code: str, command: str) -> None:
        text = ERRORS.get(code, "unknown error")
        super().__init__(device, f"{command!r} refused: ?{code} ({text})")
        self.code = code
        self.command = command


@dataclass(frozen=True)
class PumpStatus:
    """What the pump says about itself right now."""

    status: str
    text: str
    moving: bool
    alarm: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


_DIS_RE = re.compile(r"I([0-9.]+)W([0-9.]+)(UL|ML)")
_VOL_RE = re.compile(r"([0-9.]+)(UL|ML)")
_RAT_RE = re.compile(r"([0-9.]+)(UM|MM|UH|MH)")
_DIA_RE = re.compile(r"[0-9.]+")
_VER_RE = re.compile(r"NE[0-9]+V[0-9][0-9.]*")
_DIR_RE = re.compile(r"INF|WDR")
_SAF_RE = re.compile(r"[0-9]+")


def _number(text: str) -> float:
    value = parse_number(text)
    if value is None:
        raise BadFrame(f"{text!r} is not a number")
    return value


def _resolution(text: str) -> float:
    """One count of the last digit of a number as written (``1.234`` -> 0.001)."""
    _, _, frac = text.partition(".")
    return 10.0 ** (-len(frac))


class NewEraPump:
    """Driver for a New Era NE-500 / NE-1000 syringe pump (basic or safe mode).

    Options: ``address`` (0-99), ``safe_mode`` (use CRC-framed packets), ``safe_timeout`` (seconds
    given to ``SAF`` in safe mode; the pump alarms when the host is silent that long),
    ``diameter_mm`` (set at connect when given), ``timeout`` (per reply), ``retries`` (for queries
    and settings), ``poll_interval`` / ``max_poll_interval`` (progress polling of a dispense).
    """

    protocol: ClassVar[str] = "newera"
    kind: ClassVar[str] = "pump"
    default_baudrate: ClassVar[int] = 19200

    def __init__(
        self,
        name: str,
        transport: SerialTransport,
        *,
        clock: Clock,
        address: int = 0,
        safe_mode: bool = False,
        safe_timeout: int = 60,
        diameter_mm: float | None = None,
        timeout: float = 1.0,
        retries: int = 2,
        poll_interval: float = 1.0,
        max_poll_interval: float = 600.0,
        poll_failures: int = 3,
    ) -> None:
        if not 0 <= int(address) <= 99:
            raise ValueError(f"{name}: New Era address must be 0..99, got {address!r}")
        if safe_mode and not 1 <= int(safe_timeout) <= 255:
            raise ValueError(f"{name}: safe_timeout must be 1..255 s, got {safe_timeout!r}")
        self.name = name
        self.transport = transport
        self.clock = clock
        self.address = int(address)
        self.safe_mode = bool(safe_mode)
        self.safe_timeout = int(safe_timeout)
        self.diameter_mm = diameter_mm
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        if self.safe_mode:
            # Keep the line alive well inside the pump's communications time-out.
            self.max_poll_interval = min(self.max_poll_interval, self.safe_timeout / 3)
        self.poll_failures = int(poll_failures)
        self.last_alarm: str | None = None
        self.diameter_pending = diameter_mm is not None
        self.last_reply: Reply | None = None
        self._action: ActionStatus | None = None
        self._stop_requested = False

    def __repr__(self) -> str:
        mode = "safe" if self.safe_mode else "basic"
        return f"NewEraPump({self.name!r}, address={self.address}, {mode})"

    # -- framing ---------------------------------------------------------------------------------
    def encode(self, command: str, *, safe: bool | None = None) -> bytes:
        """The bytes that send ``command`` to this pump in the current (or given) mode."""
        use_safe = self.safe_mode if safe is None else safe
        if use_safe:
            return encode_safe_frame(f"{self.address}{command}".encode("ascii"))
        return encode_basic_command(self.address, command)

    def _parser(
        self, command: str, expect: re.Pattern[str] | None, framing: str
    ) -> Callable[[bytes], tuple[Reply, int] | None]:
        base = {"basic": parse_basic_reply, "safe": parse_safe_reply, "any": parse_any_reply}[
            framing
        ]

        def parse(buf: bytes) -> tuple[Reply, int] | None:
            parsed = base(buf)
            if parsed is None:
                return None
            reply, used = parsed
            if reply.address != self.address:
                raise BadFrame(f"reply from address {reply.address}, expected {self.address}")
            if reply.error == "COM":
                # The pump saw a damaged packet and did nothing: safe to send again.
                raise BadFrame(f"pump reports a damaged packet for {command!r} (?COM)")
            if (
                expect is not None
                and reply.alarm is None
                and reply.error is None
                and expect.fullmatch(reply.data) is None
            ):
                raise BadFrame(f"unexpected data {reply.data!r} in reply to {command!r}")
            return reply, used

        return parse

    async def _send(
        self,
        command: str,
        *,
        retries: int | None = None,
        expect: re.Pattern[str] | None = None,
        framing: str | None = None,
        safe: bool | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one command and return its decoded reply (alarms and errors not yet raised)."""
        use_safe = self.safe_mode if safe is None else safe
        frame = framing or ("safe" if use_safe else "basic")
        reply: Reply = await self.transport.request(
            self.encode(command, safe=use_safe),
            self._parser(command, expect, frame),
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else retries,
            what=f"{command or 'status'}",
        )
        self.last_reply = reply
        return reply

    def _check(self, reply: Reply, command: str) -> Reply:
        if reply.alarm is not None:
            self.last_alarm = reply.alarm
            raise DeviceAlarm(self.name, reply.alarm, ALARMS.get(reply.alarm, "unknown alarm"))
        if reply.error is not None:
            if reply.error == "NA" and reply.status in MOVING:
                raise DeviceBusy(self.name, f"{command!r} not applicable while {reply.status_text}")
            raise NewEraCommandError(self.name, reply.error, command)
        return reply

    async def command(
        self,
        command: str,
        *,
        retries: int | None = None,
        expect: re.Pattern[str] | None = None,
    ) -> Reply:
        """Send ``command`` (without address) and return the reply; alarms and errors raise.

        A communications time-out alarm (``T``) that the pump reports while no action of ours
        is running is acknowledged by that very reply; the pump did not carry out the command,
        so it is sent once more.
        """
        reply = await self._send(command, retries=retries, expect=expect)
        if reply.alarm == "T" and (self._action is None or self._action.done):
            self.last_alarm = "T"
            reply = await self._send(command, retries=retries, expect=expect)
        return self._check(reply, command)

    async def query(self, command: str, expect: re.Pattern[str] | None = None) -> str:
        """A query (safe to repeat): the data field of the reply."""
        return (await self.command(command, expect=expect)).data

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, put the pump in the configured mode, acknowledge a power-up alarm and
        set the syringe diameter if one was given. Nothing moves."""
        await self.transport.open()
        await self._establish_mode()
        if self.diameter_mm is not None:
            reply = await self.command("")
            if reply.moving:
                # Found running (e.g. reconnecting after a restart): leave it alone; the diameter
                # cannot change while pumping anyway (?NA).
                self.diameter_pending = True
                return
            await self.set_diameter(Q_(float(self.diameter_mm), "mm"))
            self.diameter_pending = False

    async def _status_any(self, *, safe: bool) -> Reply | None:
        """A status query in one framing; the reply (either framing) or None if none came."""
        try:
            return await self._send(
                "", safe=safe, framing="any", retries=2, timeout=min(self.timeout, 1.0)
            )
        except (DeviceTimeout, FramingError):
            return None

    async def _establish_mode(self) -> None:
        """Find the framing the pump answers to, acknowledge alarms, then set ``SAF`` as wanted.

        ``SAF`` is kept in the pump's non-volatile memory, so a pump may still be in safe mode
        from an earlier session (or in basic mode when safe mode is wanted).
        """
        framing: bool | None = None
        retries = max(2, self.retries)  # every exchange here is safe to repeat
        for _ in range(6):
            if framing is None:
                for safe in (self.safe_mode, not self.safe_mode):
                    reply = await self._status_any(safe=safe)
                    if reply is not None:
                        framing = safe
                        break
                else:
                    raise DeviceTimeout(self.name, f"no reply from address {self.address}")
            else:
                reply = await self._send("", safe=framing, framing="any", retries=retries)
            if reply.alarm is not None:
                self.last_alarm = reply.alarm  # acknowledged by this very reply
                continue
            saf = self._check(
                await self._send(
                    "SAF", safe=framing, framing="any", expect=_SAF_RE, retries=retries
                ),
                "SAF",
            )
            wanted = self.safe_timeout if self.safe_mode else 0
            if saf.alarm is None and int(saf.data) != wanted:
                await self._switch_mode(current_safe=framing, wanted=wanted, retries=retries)
            return
        raise DeviceError(self.name, "could not bring the pump to a known communications mode")

    async def _switch_mode(self, *, current_safe: bool, wanted: int, retries: int) -> None:
        target = f"SAF{wanted}"
        reply = await self._send(target, safe=current_safe, framing="any", retries=retries)
        if reply.alarm is not None:
            self.last_alarm = reply.alarm
            reply = await self._send(target, safe=current_safe, framing="any", retries=retries)
        self._check(reply, target)

    async def close(self) -> None:
        if self._action is not None and not self._action.done:
            await self._action.aclose()
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        version = await self.query("VER", _VER_RE)
        reply = await self.command("")
        model_digits = re.match(r"NE([0-9]+)", version)
        model = f"NE-{model_digits.group(1)}" if model_digits else version
        details: dict[str, Any] = {
            "address": self.address,
            "mode": "safe" if self.safe_mode else "basic",
            "diameter_mm": float(await self.query("DIA", _DIA_RE)),
            "rate": await self.query("RAT", _RAT_RE),
            "direction": await self.query("DIR", _DIR_RE),
            "dispensed": await self.query("DIS", _DIS_RE),
            "last_alarm": self.last_alarm,
        }
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model=model,
            firmware=version,
            port=self.transport.port,
            status=reply.status_text,
            details=details,
        )

    # -- queries ---------------------------------------------------------------------------------
    async def status(self) -> PumpStatus:
        reply = await self.command("")
        return PumpStatus(reply.status, reply.status_text, reply.moving)

    async def is_moving(self) -> bool:
        return (await self.command("")).moving

    async def firmware(self) -> str:
        return await self.query("VER", _VER_RE)

    async def diameter(self) -> Any:
        return Q_(float(await self.query("DIA", _DIA_RE)), "mm")

    async def rate(self) -> Any:
        m = _RAT_RE.fullmatch(await self.query("RAT", _RAT_RE))
        assert m is not None
        return Q_(_number(m.group(1)) * RATE_UNITS[m.group(2)], "uL/min")

    async def volume_target(self) -> Any:
        m = _VOL_RE.fullmatch(await self.query("VOL", _VOL_RE))
        assert m is not None
        return Q_(_number(m.group(1)) * VOLUME_UNITS[m.group(2)], "uL")

    async def direction(self) -> str:
        return await self.query("DIR", _DIR_RE)

    async def dispensed(self) -> tuple[Any, Any]:
        """Volume infused and withdrawn since they were last cleared."""
        _, infused, withdrawn, _ = await self._dispensed_ul()
        return Q_(infused, "uL"), Q_(withdrawn, "uL")

    async def _dispensed_ul(self) -> tuple[Reply, float, float, float]:
        reply = await self.command("DIS", expect=_DIS_RE)
        m = _DIS_RE.fullmatch(reply.data)
        assert m is not None
        unit = VOLUME_UNITS[m.group(3)]
        resolution = max(_resolution(m.group(1)), _resolution(m.group(2))) * unit
        return reply, _number(m.group(1)) * unit, _number(m.group(2)) * unit, resolution

    # -- settings --------------------------------------------------------------------------------
    async def set_diameter(self, diameter: Any) -> None:
        mm = magnitude_in(diameter, "mm")
        await self.command(f"DIA{format_number(mm)}")

    async def set_rate(self, rate: Any) -> None:
        ul_min = magnitude_in(rate, "uL/min")
        if ul_min <= 0:
            raise UnitError(f"rate must be positive, got {rate!r}")
        await self.command(f"RAT{self._rate_text(ul_min)}")

    @staticmethod
    def _rate_text(ul_min: float) -> str:
        """The rate in the unit that keeps the most precision (ties: UM, MM, UH, MH)."""
        best: tuple[float, str] | None = None
        for unit, size in RATE_UNITS.items():
            value = ul_min / size
            try:
                text = format_number(value)
            except ValueError:
                continue
            sent = float(text)
            if sent <= 0:
                continue
            error = abs(sent - value) / value
            if best is None or error < best[0] - 1e-12:
                best = (error, f"{text}{unit}")
        if best is None:
            raise UnitError(f"rate {ul_min:g} uL/min cannot be written in 4 digits")
        return best[1]

    @staticmethod
    def _volume_text(ul: float) -> tuple[str, str]:
        """(number, unit) for a volume: microlitres while they fit in 4 digits, else mL."""
        for unit in ("UL", "ML"):
            try:
                text = format_number(ul / VOLUME_UNITS[unit])
            except ValueError:
                continue
            if float(text) > 0:
                return text, unit
        raise UnitError(f"volume {ul:g} uL cannot be written in 4 digits")

    async def set_volume(self, volume: Any) -> None:
        """Volume to be dispensed (0 = pump until stopped)."""
        ul = magnitude_in(volume, "uL")
        if ul == 0:
            await self.command("VOL0")
            return
        text, unit = self._volume_text(ul)
        await self.command(f"VOL{unit}")
        await self.command(f"VOL{text}")

    async def set_direction(self, direction: str) -> None:
        direction = direction.upper()
        if direction not in ("INF", "WDR", "REV"):
            raise ValueError(f"direction must be INF, WDR or REV, got {direction!r}")
        await self.command(f"DIR{direction}")

    async def clear_dispensed(self, which: str = "both") -> None:
        for d in {"both": ("INF", "WDR"), "INF": ("INF",), "WDR": ("WDR",)}[which]:
            await self.command(f"CLD{d}")

    async def set_alarm_buzzer(self, on: bool) -> None:
        await self.command(f"AL{1 if on else 0}")

    # -- motion ----------------------------------------------------------------------------------
    async def run(self) -> Reply:
        """Start the pumping program. Never repeated: a lost reply leaves the state unknown."""
        return await self.command("RUN", retries=0)

    async def stop(self) -> None:
        """Stop now: ``STP`` pauses a running program, a second ``STP`` stops it."""
        self._stop_requested = True
        reply = await self.command("STP")
        if reply.status == "P":
            reply = await self.command("STP")

    def dispense(self, volume: Any, rate: Any) -> ActionStatus:
        return self._move("INF", volume, rate)

    def withdraw(self, volume: Any, rate: Any) -> ActionStatus:
        return self._move("WDR", volume, rate)

    def _move(self, direction: str, volume: Any, rate: Any) -> ActionStatus:
        if self._action is not None and not self._action.done:
            raise DeviceBusy(self.name, f"{self._action.name} is still running")
        target_ul = magnitude_in(volume, "uL")
        rate_ul_min = magnitude_in(rate, "uL/min")
        if target_ul <= 0 or rate_ul_min <= 0:
            raise UnitError(f"volume and rate must be positive, got {volume!r} at {rate!r}")
        verb = "dispense" if direction == "INF" else "withdraw"

        async def body(status: ActionStatus) -> Any:
            return await self._run_move(status, direction, target_ul, rate_ul_min)

        self._stop_requested = False
        action = ActionStatus(f"{self.name}:{verb}", body)
        self._action = action
        return action

    async def _run_move(
        self, status: ActionStatus, direction: str, target_ul: float, rate_ul_min: float
    ) -> Any:
        started = False
        finished = False
        try:
            first = await self.command("")
            if first.moving:
                raise DeviceBusy(self.name, f"pump is already {first.status_text}")
            if first.status == "P":
                await self.command("STP")  # a paused program would resume, not start afresh
            await self.set_direction(direction)
            await self.command(f"RAT{self._rate_text(rate_ul_min)}")
            await self.set_volume(Q_(target_ul, "uL"))
            _, inf0, wdr0, _ = await self._dispensed_ul()
            base = inf0 if direction == "INF" else wdr0
            status.report(Progress(0.0, 0.0, target_ul, "uL", "starting"))
            started = True
            reply = await self.run()
            expected = "I" if direction == "INF" else "W"
            if reply.status not in (expected, "S"):
                raise DeviceError(self.name, f"RUN answered {reply.status_text}")
            moved = 0.0
            failures = 0
            # About 50 progress reports per action, never closer than poll_interval nor further
            # apart than max_poll_interval, and one poll timed for the expected end.
            step = target_ul / rate_ul_min * 60.0 / 50
            step = min(self.max_poll_interval, max(self.poll_interval, step))
            while True:
                remaining_s = max(0.0, (target_ul - moved) / rate_ul_min * 60.0)
                wait = (
                    min(step, remaining_s)
                    if remaining_s >= self.poll_interval
                    else self.poll_interval
                )
                await self.clock.sleep(wait)
                try:
                    reply, inf, wdr, resolution = await self._dispensed_ul()
                except (DeviceTimeout, FramingError, DeviceDisconnected):
                    failures += 1
                    if failures > self.poll_failures:
                        raise
                    continue
                failures = 0
                now_total = inf if direction == "INF" else wdr
                moved = max(0.0, now_total - base)
                fraction = min(1.0, moved / target_ul)
                status.report(Progress(fraction, moved, target_ul, "uL", reply.status_text))
                if reply.moving or reply.status in ("P", "T", "U"):
                    continue
                # Stopped: either the volume was reached or something stopped it.
                tolerance = max(resolution, 1e-9)
                if moved + tolerance >= target_ul:
                    finished = True
                    status.report(Progress(1.0, moved, target_ul, "uL", "done"))
                    return Q_(moved, "uL")
                why = "stop requested" if self._stop_requested else "pump stopped"
                finished = True  # already stopped: nothing to clean up
                raise DeviceError(
                    self.name, f"{why} after {moved:g} of {target_ul:g} uL ({reply.status_text})"
                )
        except DeviceAlarm:
            finished = True  # an alarm stops the pump by itself
            raise
        finally:
            if started and not finished:
                with contextlib.suppress(DeviceError, asyncio.CancelledError):
                    await self._stop_quietly()

    async def _stop_quietly(self) -> None:
        reply = await self._send("STP")
        if reply.alarm is None and reply.status == "P":
            await self._send("STP")
