"""New Era Pump Systems NE-500 / NE-1000 syringe pumps over RS-232: the driver core.

The driver is split by job (see ``docs/protocols/newera.md``):

* :mod:`kiboauto.drivers.newera_wire`: the bytes on the line (basic and safe mode framing,
  replies, numbers).
* :mod:`kiboauto.drivers.newera_commands`: the idempotence table :data:`COMMANDS`, the check
  each reply must pass, and how ``RAT``/``VOL`` arguments are written.
* :mod:`kiboauto.drivers.newera_counters`: the pump's ``DIS`` volume counters.
* :mod:`kiboauto.drivers.newera_actions`: the exactly-once dispense/withdraw actions.
* this module: :class:`NewEraPump`, the line (requests, replies, alarms, resync), connecting,
  queries, settings and readings. Every public name of the driver can still be imported from here.

Nothing here imports the engine or the simulators. Three rules carry the driver's safety:

* Replies are matched to requests: the transport resynchronises after any timeout with a ``VER``
  query (:data:`RESYNC_COMMAND`), and every reply is checked against the shape its command can
  produce (address, status, data pattern, number ranges). A reply that does not fit is a
  :class:`~kiboauto.devices.FramingError`, never taken for another request's answer.
* Only what :data:`COMMANDS` declares idempotent is ever sent twice.
* Pump actions are exactly-once: :meth:`NewEraPump.prepare` reads the pump's own volume
  counters (``DIS``) into an :class:`~kiboauto.devices.ActionMarker`; everything the driver later
  says about the action is the difference of those counters, read back from the pump.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from kiboauto.clock import Clock
from kiboauto.devices import (
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
from kiboauto.units import Q_, UnitError, magnitude_in

from .newera_actions import NewEraAction, NewEraActions
from .newera_commands import (
    COMMANDS,
    LINE_ERRORS,
    RESYNC_COMMAND,
    VER_RE,
    VOL_RE,
    CommandSpec,
    is_idempotent,
    rate_text,
    rate_value,
    reply_check,
    volume_text,
)
from .newera_counters import Counters
from .newera_wire import (
    ALARMS,
    COUNTER_LIMIT,
    ERRORS,
    MOVING,
    STATUS_TEXT,
    VOLUME_UNITS,
    Reply,
    encode_basic_command,
    encode_safe_frame,
    format_number,
    parse_any_reply,
    parse_basic_reply,
    parse_safe_reply,
)
from .transport import BadFrame, Resync, SerialTransport

__all__ = [
    "COMMANDS",
    "CommandSpec",
    "Counters",
    "NewEraAction",
    "NewEraCommandError",
    "NewEraPump",
    "PumpStatus",
    "is_idempotent",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Values read from the pump
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


#: how bad each alarm is (the power-up reset is a notice: nothing was running, or it is lost)
_ALARM_SEVERITY: Final = {"R": Severity.MINOR}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class NewEraPump(NewEraActions):
    """Driver for a New Era NE-500 / NE-1000 syringe pump (basic or safe mode).

    Options: ``address`` (0-99), ``safe_mode`` (use CRC-framed packets), ``safe_timeout`` (seconds
    given to ``SAF`` in safe mode; the pump alarms when the host is silent that long),
    ``diameter_mm`` (set at connect when given), ``timeout`` (per reply), ``retries`` (for what
    :data:`COMMANDS` declares idempotent), ``poll_interval`` / ``max_poll_interval`` (progress
    polling of a dispense), ``poll_failures`` (failed polls in a row that end an action).

    ``alarms`` (an :class:`~kiboauto.devices.AlarmLatch`) keeps every alarm any reply carried;
    ``reset_seen_at`` is the ``clock.wall()`` time this driver last saw the power-up alarm ``R``.
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
        self.alarms = AlarmLatch(name)
        self.last_alarm: str | None = None
        self.reset_seen_at: float | None = None
        self.diameter_pending = diameter_mm is not None
        self.last_reply: Reply | None = None
        self.firmware_version: str | None = None
        self._action: ActionStatus | None = None
        self._stop_requested = False
        self._paused = False
        self._hold: asyncio.Event | None = None
        self._started = False  # our RUN was sent (or a move adopted): ours to stop on cancel
        self.transport.set_resync(self._resync())

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

    def _resync(self) -> Resync:
        """``VER`` in a safe packet (a pump in basic mode carries out safe packets too, so this
        works whichever mode the pump is in); only a firmware answer from our address ends it."""

        def parse(buf: bytes) -> tuple[bool, int] | None:
            parsed = parse_any_reply(buf)
            if parsed is None:
                return None
            reply, used = parsed
            if reply.address != self.address:
                return False, used
            self._observe(reply)
            matched = (
                reply.alarm is None
                and reply.error is None
                and VER_RE.fullmatch(reply.data) is not None
            )
            return matched, used

        payload = encode_safe_frame(f"{self.address}{RESYNC_COMMAND}".encode("ascii"))
        return Resync(payload, parse, what=RESYNC_COMMAND)

    def _observe(self, reply: Reply) -> None:
        """Called for every reply from our address, whoever asked: latch what it reports."""
        self.last_reply = reply
        if reply.alarm is None:
            return
        code = reply.alarm
        self.last_alarm = code
        now = self.clock.wall()
        if code == "R":
            self.reset_seen_at = now
        self.alarms.latch(
            code, ALARMS.get(code, "unknown alarm"), now, _ALARM_SEVERITY.get(code, Severity.MAJOR)
        )

    def _parser(
        self, command: str, expect: re.Pattern[str] | None, framing: str
    ) -> Callable[[bytes], tuple[Reply, int] | None]:
        base = {"basic": parse_basic_reply, "safe": parse_safe_reply, "any": parse_any_reply}[
            framing
        ]
        check = reply_check(command)

        def parse(buf: bytes) -> tuple[Reply, int] | None:
            parsed = base(buf)
            if parsed is None:
                return None
            reply, used = parsed
            if reply.address != self.address:
                raise BadFrame(f"reply from address {reply.address}, expected {self.address}")
            self._observe(reply)
            if reply.error == "COM":
                # The pump saw a damaged packet and did nothing.
                raise BadFrame(f"pump reports a damaged packet for {command!r} (?COM)")
            if reply.alarm is None and reply.error is None:
                if expect is not None and expect.fullmatch(reply.data) is None:
                    raise BadFrame(f"unexpected data {reply.data!r} in reply to {command!r}")
                try:
                    check(reply.data)
                except BadFrame as e:
                    raise BadFrame(f"reply to {command or 'status'!r}: {e}") from None
            return reply, used

        return parse

    def _retries(self, command: str, retries: int | None) -> int:
        """Retries for ``command``: none unless the table says it is idempotent."""
        if not is_idempotent(command):
            return 0
        return self.retries if retries is None else retries

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
            retries=self._retries(command, retries),
            what=f"{command or 'status'}",
        )
        return reply

    def _check(self, reply: Reply, command: str) -> Reply:
        if reply.alarm is not None:
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

        ``retries`` applies only to commands :data:`COMMANDS` declares idempotent; anything else
        is sent exactly once. A communications time-out alarm (``T``) that the pump reports while
        no action of ours runs is acknowledged by that very reply and the command was not carried
        out: an idempotent command is sent once more, any other raises the alarm (the caller asks
        the pump before deciding to send it again).
        """
        reply = await self._send(command, retries=retries, expect=expect)
        idle = self._action is None or self._action.done
        if reply.alarm == "T" and idle and is_idempotent(command):
            reply = await self._send(command, retries=retries, expect=expect)
        return self._check(reply, command)

    async def query(self, command: str, expect: re.Pattern[str] | None = None) -> str:
        """A query (safe to repeat): the data field of the reply."""
        return (await self.command(command, expect=expect)).data

    async def _send_through_alarm(
        self,
        command: str,
        *,
        retries: int | None = None,
        framing: str | None = None,
        safe: bool | None = None,
    ) -> Reply:
        """A command that an alarm does not end: the alarm is latched (and acknowledged by the
        reply that carried it, so the command was not carried out), then it is sent again."""
        reply = await self._send(command, retries=retries, framing=framing, safe=safe)
        if reply.alarm is not None:
            reply = await self._send(command, retries=retries, framing=framing, safe=safe)
        return self._check(reply, command)

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, put the pump in the configured mode, acknowledge a power-up alarm and
        set the syringe diameter if one was given. Nothing moves.

        Alarms acknowledged here are latched in :attr:`alarms`; a power-up alarm ``R`` also sets
        :attr:`reset_seen_at`, so :meth:`delivered_since` refuses markers taken before it.
        """
        self.transport.set_resync(self._resync())
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
                continue  # acknowledged by this very reply (and latched by the parser)
            saf = self._check(
                await self._send("SAF", safe=framing, framing="any", retries=retries), "SAF"
            )
            wanted = self.safe_timeout if self.safe_mode else 0
            if saf.alarm is None and int(saf.data) != wanted:
                await self._switch_mode(current_safe=framing, wanted=wanted, retries=retries)
            return
        raise DeviceError(self.name, "could not bring the pump to a known communications mode")

    async def _switch_mode(self, *, current_safe: bool, wanted: int, retries: int) -> None:
        target = f"SAF{wanted}"
        await self._send_through_alarm(target, safe=current_safe, framing="any", retries=retries)

    async def close(self) -> None:
        if self._action is not None and not self._action.done:
            await self._action.aclose()
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        version = await self.firmware()
        reply = await self._send_through_alarm("")
        model_digits = re.match(r"NE([0-9]+)", version)
        model = f"NE-{model_digits.group(1)}" if model_digits else version
        details: dict[str, Any] = {
            "address": self.address,
            "mode": "safe" if self.safe_mode else "basic",
            "diameter_mm": float((await self.diameter()).m_as("mm")),
            "rate": await self.query("RAT"),
            "direction": await self.direction(),
        }
        dis = await self.command("DIS")
        c = Counters.from_reply(dis)
        details.update(
            dispensed=dis.data,
            infused_ul=c.infused_ul,
            withdrawn_ul=c.withdrawn_ul,
            last_alarm=self.last_alarm,
        )
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
        version = await self.query("VER")
        self.firmware_version = version
        return version

    async def diameter(self) -> AnyQuantity:
        return Q_(float(await self.query("DIA")), "mm")

    async def rate(self) -> AnyQuantity:
        return Q_(rate_value(await self.query("RAT")), "uL/min")

    async def volume_target(self) -> AnyQuantity:
        m = VOL_RE.fullmatch(await self.query("VOL"))
        assert m is not None  # checked by the frame parser
        return Q_(float(m.group(1)) * VOLUME_UNITS[m.group(2)], "uL")

    async def direction(self) -> str:
        return await self.query("DIR")

    async def dispensed(self) -> tuple[AnyQuantity, AnyQuantity]:
        """Volume infused and withdrawn since they were last cleared."""
        c = await self.counters()
        return Q_(c.infused_ul, "uL"), Q_(c.withdrawn_ul, "uL")

    async def counters(self) -> Counters:
        """``DIS``: both volume counters as the pump displays them, and its status."""
        return Counters.from_reply(await self.command("DIS"))

    # -- settings --------------------------------------------------------------------------------
    async def set_diameter(self, diameter: QuantityLike) -> None:
        mm = magnitude_in(diameter, "mm")
        await self.command(f"DIA{format_number(mm)}")

    async def set_rate(self, rate: QuantityLike) -> None:
        ul_min = magnitude_in(rate, "uL/min")
        if ul_min <= 0:
            raise UnitError(f"rate must be positive, got {rate!r}")
        await self.command(f"RAT{rate_text(ul_min)}")

    async def set_volume(self, volume: QuantityLike) -> None:
        """Volume to be dispensed (0 = pump until stopped)."""
        ul = magnitude_in(volume, "uL")
        if ul == 0:
            await self.command("VOL0")
            return
        text, unit = volume_text(ul)
        await self.command(f"VOL{unit}")
        await self.command(f"VOL{text}")

    async def set_direction(self, direction: str) -> None:
        """``INF`` or ``WDR`` (absolute, repeated after a lost reply), or ``REV`` (relative to
        the current direction: sent exactly once; the driver's own actions never use it)."""
        direction = direction.upper()
        if direction not in ("INF", "WDR", "REV"):
            raise ValueError(f"direction must be INF, WDR or REV, got {direction!r}")
        await self.command(f"DIR{direction}")

    async def clear_dispensed(self, which: str = "both") -> None:
        """``CLD``: clear the infused and/or withdrawn counter (each sent exactly once)."""
        for d in {"both": ("INF", "WDR"), "INF": ("INF",), "WDR": ("WDR",)}[which]:
            await self.command(f"CLD{d}")

    async def set_alarm_buzzer(self, on: bool) -> None:
        await self.command(f"AL{1 if on else 0}")

    # -- readings --------------------------------------------------------------------------------
    async def read(self) -> dict[str, Reading]:
        """Status, rate, direction and both volume counters, timestamped; an alarm a reply
        carries is latched (not raised) and shows in the severities."""
        state = await self._send_through_alarm("")
        rate = await self._send_through_alarm("RAT")
        direction = await self._send_through_alarm("DIR")
        c = Counters.from_reply(await self._send_through_alarm("DIS"))
        now = self.clock.wall()
        severity = self.alarms.severity
        active = self.alarms.active
        alarm_text = ", ".join(f"{code}: {e.message}" for code, e in sorted(active.items()))
        return {
            "status": Reading(state.status_text, now, severity, alarm_text),
            "moving": Reading(state.moving, now),
            "rate": Reading(Q_(rate_value(rate.data), "uL/min"), now),
            "direction": Reading(direction.data, now),
            "infused": self._counter_reading(c, "dispense", now),
            "withdrawn": self._counter_reading(c, "withdraw", now),
            "volume_unit": Reading(c.unit, now),
            "alarm": Reading(",".join(sorted(active)), now, severity, alarm_text),
        }

    @staticmethod
    def _counter_reading(c: Counters, kind: str, now: float) -> Reading:
        """The counter a ``kind`` moves, in uL; INVALID once it has saturated."""
        if c.saturated(kind):
            return Reading(Q_(c.counter_ul(kind), "uL"), now, Severity.INVALID, "counter saturated")
        return Reading(Q_(c.counter_ul(kind), "uL"), now, Severity.OK, "")

    def describe(self) -> dict[str, ReadingDescription]:
        return {
            "status": ReadingDescription(
                "", None, "pump status (prompt): " + "/".join(STATUS_TEXT.values())
            ),
            "moving": ReadingDescription("", None, "the plunger moves (infusing/withdrawing)"),
            "rate": ReadingDescription("uL/min", None, "programmed pumping rate"),
            "direction": ReadingDescription("", None, "INF (dispense) or WDR (withdraw)"),
            "infused": ReadingDescription(
                "uL", (0.0, COUNTER_LIMIT * 1000.0), "DIS infused counter since last cleared"
            ),
            "withdrawn": ReadingDescription(
                "uL", (0.0, COUNTER_LIMIT * 1000.0), "DIS withdrawn counter since last cleared"
            ),
            "volume_unit": ReadingDescription("", None, "unit the pump displays volumes in"),
            "alarm": ReadingDescription("", None, "alarms latched and not yet acknowledged"),
        }

    # -- motion ----------------------------------------------------------------------------------
    # (prepare, start, dispense, withdraw, adopt, delivered_since: newera_actions.NewEraActions)
    async def run(self) -> Reply:
        """Start the pumping program. Never repeated: a lost reply leaves the state unknown."""
        return await self.command("RUN")

    async def stop(self) -> None:
        """Stop now: ``STP`` pauses a running program, a second ``STP`` stops it.

        ``STP`` is not idempotent (a second one turns a pause into a stop), so after a lost reply
        the pump is asked for its status before anything is sent again. An alarm in a reply means
        the alarm has stopped the pump already.
        """
        self._stop_requested = True
        for _ in range(4):
            try:
                state = await self._send("")
            except LINE_ERRORS:
                state = None
            if state is not None and (state.alarm is not None or state.status == "S"):
                return  # stopped (an alarm stops the pump)
            try:
                reply = await self._send("STP")
            except LINE_ERRORS:
                continue  # ask again what the pump is doing
            if reply.alarm is not None or reply.status == "S":
                return
        raise DeviceError(self.name, "could not confirm that the pump stopped")
