"""New Era Pump Systems NE-500 / NE-1000 syringe pumps over RS-232: the driver.

The bytes on the line (basic and safe mode framing, replies, numbers) are in
:mod:`kiboauto.drivers.newera_wire`; see ``docs/protocols/newera.md``. Nothing here imports the
engine or the simulators.

Three rules carry the driver's safety:

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
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

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
from kiboauto.units import Q_, UnitError, magnitude_in

from .newera_wire import (
    ALARMS,
    COUNTER_LIMIT,
    ERRORS,
    MOVING,
    RATE_UNITS,
    STATUS_TEXT,
    VOLUME_UNITS,
    Reply,
    display_resolution,
    encode_basic_command,
    encode_safe_frame,
    format_number,
    parse_any_reply,
    parse_basic_reply,
    parse_safe_reply,
    strict_number,
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

_LINE_ERRORS = (DeviceTimeout, FramingError, DeviceDisconnected)


# ---------------------------------------------------------------------------------------------
# Reply shapes and the idempotence table
# ---------------------------------------------------------------------------------------------
_NUM = r"[0-9]{0,4}(?:\.[0-9]{0,3})?"
_VER_RE = re.compile(r"NE[0-9]{3,4}V[0-9]{1,2}\.[0-9]{1,4}")
_DIS_RE = re.compile(rf"I({_NUM})W({_NUM})(UL|ML)")
_VOL_RE = re.compile(rf"({_NUM})(UL|ML)")
_RAT_RE = re.compile(rf"({_NUM})(UM|MM|UH|MH)")
_DIA_RE = re.compile(_NUM)
_DIR_RE = re.compile(r"INF|WDR")
_SAF_RE = re.compile(r"[0-9]{1,3}")
_AL_RE = re.compile(r"[01]")


def _check_empty(data: str) -> None:
    if data:
        raise BadFrame(f"unexpected data {data!r} (this command answers with a status only)")


def _check_ver(data: str) -> None:
    if _VER_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not a firmware version")


def _check_dia(data: str) -> None:
    if _DIA_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not a diameter")
    strict_number(data, low=0.001, high=100.0)


def _check_rat(data: str) -> None:
    m = _RAT_RE.fullmatch(data)
    if m is None:
        raise BadFrame(f"{data!r} is not a rate")
    strict_number(m.group(1))


def _check_vol(data: str) -> None:
    m = _VOL_RE.fullmatch(data)
    if m is None:
        raise BadFrame(f"{data!r} is not a volume")
    strict_number(m.group(1))


def _check_dis(data: str) -> None:
    m = _DIS_RE.fullmatch(data)
    if m is None:
        raise BadFrame(f"{data!r} is not a pair of volume counters")
    strict_number(m.group(1))
    strict_number(m.group(2))


def _check_dir(data: str) -> None:
    if _DIR_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not a direction")


def _check_saf(data: str) -> None:
    if _SAF_RE.fullmatch(data) is None or int(data) > 255:
        raise BadFrame(f"{data!r} is not a safe-mode time-out (0..255)")


def _check_al(data: str) -> None:
    if _AL_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not 0 or 1")


def _check_any(data: str) -> None:
    """Commands the driver does not know: any printable data is passed on as it is."""


@dataclass(frozen=True)
class CommandSpec:
    """What the driver knows about one pump command.

    ``query`` checks the data of the reply to the bare command (``None``: the bare command is an
    action, not a query). ``set_idempotent`` says whether the command *with an argument* may be
    sent again after a lost reply: true for absolute settings (``DIA 14.43``, ``RAT 10 UM``,
    ``VOL 5``, ``DIR INF``), false for anything whose effect depends on the state it meets
    (``DIR REV``, ``CLD``, ``RUN``, ``STP``, ``PUR``). ``not_idempotent_args`` lists arguments that
    are exceptions to ``set_idempotent``.
    """

    query: Callable[[str], None] | None
    set_idempotent: bool
    not_idempotent_args: frozenset[str] = frozenset()


#: The idempotence table: the one place that says which commands are safe to repeat.
COMMANDS: Final[dict[str, CommandSpec]] = {
    "": CommandSpec(_check_empty, False),  # status query
    "VER": CommandSpec(_check_ver, False),
    "DIA": CommandSpec(_check_dia, True),
    "RAT": CommandSpec(_check_rat, True),
    "VOL": CommandSpec(_check_vol, True),
    "DIR": CommandSpec(_check_dir, True, frozenset({"REV"})),
    "DIS": CommandSpec(_check_dis, False),
    "SAF": CommandSpec(_check_saf, True),
    "AL": CommandSpec(_check_al, True),
    "RUN": CommandSpec(None, False),
    "STP": CommandSpec(None, False),
    "CLD": CommandSpec(None, False),
    "PUR": CommandSpec(None, False),
}
_BY_LENGTH: Final = sorted((name for name in COMMANDS if name), key=len, reverse=True)

#: the resynchronisation query: its answer (``NE1000V3.928``) is the only reply of that shape,
#: so after a timeout nothing but its own answer can end the resync (see ``_resync_parse``)
RESYNC_COMMAND: Final = "VER"


def _split(command: str) -> tuple[str, str]:
    """``"DIA14.43"`` -> ``("DIA", "14.43")``; an unknown command -> ``("?", command)``."""
    text = command.strip().upper().replace(" ", "")
    if text == "":
        return "", ""
    name = next((n for n in _BY_LENGTH if text.startswith(n)), None)
    if name is None:
        return "?", text
    return name, text[len(name) :]


def is_idempotent(command: str) -> bool:
    """True when ``command`` may be sent again after its reply was lost (see :data:`COMMANDS`)."""
    name, arg = _split(command)
    spec = COMMANDS.get(name)
    if spec is None:
        return False
    if arg == "":
        return spec.query is not None  # a query; bare RUN/STP/PUR are actions
    return spec.set_idempotent and arg not in spec.not_idempotent_args


def _reply_check(command: str) -> Callable[[str], None]:
    name, arg = _split(command)
    spec = COMMANDS.get(name)
    if spec is None:
        return _check_any
    if arg == "" and spec.query is not None:
        return spec.query
    return _check_empty


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


@dataclass(frozen=True)
class Counters:
    """One ``DIS`` reply: the status it carried and both volume counters as displayed."""

    status: str
    status_text: str
    infused_text: str
    withdrawn_text: str
    unit: str  # "UL" | "ML"

    @property
    def size_ul(self) -> float:
        return VOLUME_UNITS[self.unit]

    @property
    def infused_ul(self) -> float:
        return float(self.infused_text) * self.size_ul

    @property
    def withdrawn_ul(self) -> float:
        return float(self.withdrawn_text) * self.size_ul

    @property
    def moving(self) -> bool:
        return self.status in MOVING

    @property
    def resolution_ul(self) -> float:
        """One count of the last digit of the coarser counter, in uL."""
        return max(_resolution(self.infused_text), _resolution(self.withdrawn_text)) * self.size_ul

    def counter_ul(self, kind: str) -> float:
        return self.infused_ul if kind == "dispense" else self.withdrawn_ul

    def saturated(self, kind: str) -> bool:
        text = self.infused_text if kind == "dispense" else self.withdrawn_text
        return float(text) >= COUNTER_LIMIT


def _resolution(text: str) -> float:
    """One count of the last digit of a number as written (``1.234`` -> 0.001)."""
    _, _, frac = text.partition(".")
    return 10.0 ** (-len(frac))


class NewEraAction(ActionStatus):
    """A dispense/withdraw of a New Era pump. After it ends (whichever way, cancelled too),
    ``delivered_ul`` is the volume read back from the pump's counters, or ``None`` with the
    reason in ``delivered_unknown``."""

    def __init__(
        self,
        name: str,
        body: Callable[[ActionStatus], Coroutine[Any, Any, Any]],
        *,
        pause: Callable[[], Awaitable[None]] | None = None,
        resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.delivered_ul: float | None = None
        self.delivered_unknown = ""
        super().__init__(name, body, pause=pause, resume=resume)


_KINDS: Final = {"dispense": "INF", "withdraw": "WDR"}
#: how bad each alarm is (the power-up reset is a notice: nothing was running, or it is lost)
_ALARM_SEVERITY: Final = {"R": Severity.MINOR}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class NewEraPump:
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
                and _VER_RE.fullmatch(reply.data) is not None
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
        check = _reply_check(command)

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

    async def _query_through_alarm(self, command: str) -> Reply:
        """A query that an alarm does not end: the alarm is latched (and acknowledged by the
        reply that carried it, which was not carried out), then the query is asked again."""
        reply = await self._send(command)
        if reply.alarm is not None:
            reply = await self._send(command)
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
        reply = await self._send(target, safe=current_safe, framing="any", retries=retries)
        if reply.alarm is not None:
            reply = await self._send(target, safe=current_safe, framing="any", retries=retries)
        self._check(reply, target)

    async def close(self) -> None:
        if self._action is not None and not self._action.done:
            await self._action.aclose()
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        version = await self.firmware()
        reply = await self._query_through_alarm("")
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
        c = self._counters(dis)
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
        m = _RAT_RE.fullmatch(await self.query("RAT"))
        assert m is not None  # checked by the frame parser
        return Q_(float(m.group(1)) * RATE_UNITS[m.group(2)], "uL/min")

    async def volume_target(self) -> AnyQuantity:
        m = _VOL_RE.fullmatch(await self.query("VOL"))
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
        return self._counters(await self.command("DIS"))

    @staticmethod
    def _counters(reply: Reply) -> Counters:
        m = _DIS_RE.fullmatch(reply.data)
        assert m is not None  # checked by the frame parser
        return Counters(reply.status, reply.status_text, m.group(1), m.group(2), m.group(3))

    # -- settings --------------------------------------------------------------------------------
    async def set_diameter(self, diameter: QuantityLike) -> None:
        mm = magnitude_in(diameter, "mm")
        await self.command(f"DIA{format_number(mm)}")

    async def set_rate(self, rate: QuantityLike) -> None:
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
    def _rate_value(text: str) -> float:
        m = _RAT_RE.fullmatch(text)
        assert m is not None
        return float(m.group(1)) * RATE_UNITS[m.group(2)]

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

    async def set_volume(self, volume: QuantityLike) -> None:
        """Volume to be dispensed (0 = pump until stopped)."""
        ul = magnitude_in(volume, "uL")
        if ul == 0:
            await self.command("VOL0")
            return
        text, unit = self._volume_text(ul)
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
        state = await self._query_through_alarm("")
        rate = await self._query_through_alarm("RAT")
        direction = await self._query_through_alarm("DIR")
        c = self._counters(await self._query_through_alarm("DIS"))
        now = self.clock.wall()
        severity = self.alarms.severity
        active = self.alarms.active
        alarm_text = ", ".join(f"{code}: {e.message}" for code, e in sorted(active.items()))
        sat = Severity.INVALID
        return {
            "status": Reading(state.status_text, now, severity, alarm_text),
            "moving": Reading(state.moving, now),
            "rate": Reading(Q_(self._rate_value(rate.data), "uL/min"), now),
            "direction": Reading(direction.data, now),
            "infused": Reading(
                Q_(c.infused_ul, "uL"),
                now,
                sat if c.saturated("dispense") else Severity.OK,
                "counter saturated" if c.saturated("dispense") else "",
            ),
            "withdrawn": Reading(
                Q_(c.withdrawn_ul, "uL"),
                now,
                sat if c.saturated("withdraw") else Severity.OK,
                "counter saturated" if c.saturated("withdraw") else "",
            ),
            "volume_unit": Reading(c.unit, now),
            "alarm": Reading(",".join(sorted(active)), now, severity, alarm_text),
        }

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
            except _LINE_ERRORS:
                state = None
            if state is not None and (state.alarm is not None or state.status == "S"):
                return  # stopped (an alarm stops the pump)
            try:
                reply = await self._send("STP")
            except _LINE_ERRORS:
                continue  # ask again what the pump is doing
            if reply.alarm is not None or reply.status == "S":
                return
        raise DeviceError(self.name, "could not confirm that the pump stopped")

    def estimate(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionEstimate:
        """A move is never repeatable; it lasts volume / rate."""
        self._direction_of(kind)
        ul = magnitude_in(volume, "uL")
        ul_min = magnitude_in(rate, "uL/min")
        if ul <= 0 or ul_min <= 0:
            raise UnitError(f"volume and rate must be positive, got {volume!r} at {rate!r}")
        return ActionEstimate(repeatable=False, duration_s=ul / ul_min * 60.0)

    @staticmethod
    def _direction_of(kind: str) -> str:
        try:
            return _KINDS[kind]
        except KeyError:
            raise ValueError(f"kind must be 'dispense' or 'withdraw', got {kind!r}") from None

    def _busy_check(self) -> None:
        if self._action is not None and not self._action.done:
            raise DeviceBusy(self.name, f"{self._action.name} is still running")

    async def _identity(self) -> str:
        if self.firmware_version is None:
            await self.firmware()
        return f"{self.firmware_version}@{self.address}"

    def _epoch(self) -> str:
        seen = "none" if self.reset_seen_at is None else f"{self.reset_seen_at:.3f}"
        return f"reset-seen:{seen}"

    async def prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        """Program the pump for the action and read its baseline; nothing moves.

        Sends (all absolute, idempotent settings) ``DIR INF``/``DIR WDR``, ``RAT``, ``VOL UL``/
        ``VOL ML`` and ``VOL``, then reads ``DIS``. When the counter of this direction could not
        hold the action's volume (it saturates at 9999 of its unit) or its last digit would be
        coarser than a thousandth of the volume, it is cleared first (``CLD INF``/``CLD WDR``)
        and read again, so the marker's baseline is exact. A paused program is stopped (``STP``,
        nothing moves); a moving pump is :class:`DeviceBusy` (and left alone).
        """
        self._busy_check()
        return await self._prepare(kind, volume, rate)

    async def _prepare(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionMarker:
        direction = self._direction_of(kind)
        target_ul = magnitude_in(volume, "uL")
        rate_ul_min = magnitude_in(rate, "uL/min")
        if target_ul <= 0 or rate_ul_min <= 0:
            raise UnitError(f"volume and rate must be positive, got {volume!r} at {rate!r}")
        identity = await self._identity()
        first = await self._query_through_alarm("")
        if first.moving:
            raise DeviceBusy(self.name, f"pump is already {first.status_text}")
        if first.status == "P":
            # A paused program would resume, not start afresh: end it (nothing moves).
            await self.command("STP")
        vol_text, vol_unit = self._volume_text(target_ul)
        programmed_ul = float(vol_text) * VOLUME_UNITS[vol_unit]
        rate_text = self._rate_text(rate_ul_min)
        await self._program(direction, rate_text, vol_text, vol_unit)
        c = await self.counters()
        size = VOLUME_UNITS[vol_unit]
        if self._needs_clear(c.counter_ul(kind), programmed_ul, size):
            log.info(
                "%s: clearing the %s counter (%s %s) before a %g uL %s",
                self.name,
                direction,
                c.infused_text if kind == "dispense" else c.withdrawn_text,
                c.unit,
                programmed_ul,
                kind,
            )
            await self.command(f"CLD{direction}")
            c = await self.counters()
        end = (c.counter_ul(kind) + programmed_ul) / size
        step_ul = max(c.resolution_ul, display_resolution(end) * size)
        marker = ActionMarker(
            device=self.name,
            identity=identity,
            kind=kind,
            target_ul=programmed_ul,
            rate_ul_min=self._rate_value(rate_text),
            baseline={
                "infused_ul": c.infused_ul,
                "withdrawn_ul": c.withdrawn_ul,
                "infused": c.infused_text,
                "withdrawn": c.withdrawn_text,
                "unit": c.unit,
                "direction": direction,
                "rate": rate_text,
                "volume": vol_text,
                "volume_unit": vol_unit,
            },
            epoch=self._epoch(),
            created=self.clock.wall(),
            step_ul=step_ul,
        )
        log.info("%s: prepared %s", self.name, marker.to_json())
        return marker

    @staticmethod
    def _needs_clear(counter_ul: float, target_ul: float, size: float) -> bool:
        if counter_ul <= 0:
            return False
        end = (counter_ul + target_ul) / size
        if end >= COUNTER_LIMIT:
            return True
        fresh = display_resolution(target_ul / size) * size
        return display_resolution(end) * size > max(fresh, target_ul / 1000.0)

    async def _program(self, direction: str, rate_text: str, vol_text: str, vol_unit: str) -> None:
        for command in (f"DIR{direction}", f"RAT{rate_text}", f"VOL{vol_unit}", f"VOL{vol_text}"):
            assert is_idempotent(command), command
            await self.command(command)

    def start(self, marker: ActionMarker) -> ActionStatus:
        """Send a prepared action (``RUN``, never repeated); the result is a PumpResult."""
        self._busy_check()
        self._check_marker_device(marker)

        async def body(status: ActionStatus) -> PumpResult:
            status.marker = marker
            return await self._guard(status, marker, self._run_marker(status, marker))

        return self._new_action(f"{self.name}:{marker.kind}", body)

    def dispense(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._move("dispense", volume, rate)

    def withdraw(self, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        return self._move("withdraw", volume, rate)

    def _move(self, kind: str, volume: QuantityLike, rate: QuantityLike) -> ActionStatus:
        self._busy_check()
        self.estimate(kind, volume, rate)  # checks kind, units and signs before anything is sent

        async def body(status: ActionStatus) -> PumpResult:
            try:
                marker = await self._prepare(kind, volume, rate)
            except DeviceError as e:
                e.delivered_ul = 0.0  # nothing was started
                self._record(status, 0.0, "")
                raise
            status.marker = marker
            return await self._guard(status, marker, self._run_marker(status, marker))

        return self._new_action(f"{self.name}:{kind}", body)

    def adopt(self, marker: ActionMarker) -> ActionStatus:
        """Follow an action of ``marker`` (found running, paused or ended) to its end.

        Nothing is started: a paused program stays paused until ``resume()`` of the returned
        status. Alarms the pump reported after the marker was taken count for the action.
        """
        self._busy_check()
        self._check_marker_device(marker)

        async def body(status: ActionStatus) -> PumpResult:
            status.marker = marker
            return await self._guard(status, marker, self._adopt(status, marker))

        return self._new_action(f"{self.name}:adopt-{marker.kind}", body)

    async def _adopt(self, status: ActionStatus, marker: ActionMarker) -> PumpResult:
        delivery, c = await self._delivery(marker)
        self._started = delivery.moving or c.status == "P"  # ours to stop from now on
        self._record(status, delivery.delivered_ul, "adopted")
        if c.status == "P":
            self._paused = True
            status.paused = True  # stays paused until the status's resume()
        return await self._follow(status, marker, 0, check_now=True, after=marker.created)

    def _new_action(
        self, name: str, body: Callable[[ActionStatus], Coroutine[Any, Any, PumpResult]]
    ) -> ActionStatus:
        self._stop_requested = False
        self._paused = False
        self._hold = None
        action = NewEraAction(name, body, pause=self._pause_action, resume=self._resume_action)
        self._action = action
        log.info("%s: %s begins", self.name, name)
        return action

    def _check_marker_device(self, marker: ActionMarker) -> None:
        if marker.device != self.name:
            raise DeviceError(self.name, f"marker belongs to {marker.device!r}")
        self._direction_of(marker.kind)

    # -- the action ------------------------------------------------------------------------------
    def _record(self, status: ActionStatus, delivered_ul: float | None, why: str) -> None:
        if isinstance(status, NewEraAction):
            status.delivered_ul = delivered_ul
            status.delivered_unknown = why if delivered_ul is None else ""
        if delivered_ul is not None and status.marker is not None:
            target = status.marker.target_ul
            fraction = min(1.0, delivered_ul / target) if target > 0 else 1.0
            status.report(Progress(fraction, delivered_ul, target, "uL", why))

    async def _read_back(self, marker: ActionMarker) -> tuple[float | None, str]:
        """The delivered volume read back from the pump now (None and why if it cannot be)."""
        try:
            c = self._counters(await self._query_through_alarm("DIS"))
            return self._delivered(marker, c), ""
        except DeviceError as e:
            return None, f"read-back failed: {e.message}"

    async def _guard(
        self, status: ActionStatus, marker: ActionMarker, work: Coroutine[Any, Any, PumpResult]
    ) -> PumpResult:
        """Run an action body; every error leaves with the delivered volume read back, and a
        cancel stops the pump (when ours was started) and records it before propagating."""
        try:
            result = await work
        except asyncio.CancelledError:
            # A request cut off by the cancel may still be answered: never take that answer.
            self.transport.out_of_step = True
            if self._started:
                with contextlib.suppress(DeviceError):
                    await self.stop()
            delivered, why = await self._read_back(marker)
            self._record(status, delivered, why or "cancelled")
            log.info("%s: %s cancelled after %s uL", self.name, status.name, delivered)
            raise
        except DeviceError as e:
            if e.marker is None:
                e.marker = marker
            if e.delivered_ul is None and not e.delivered_unknown:
                if self._started:
                    if not isinstance(e, DeviceAlarm | ActionIncomplete | DeviceStateLost):
                        with contextlib.suppress(DeviceError):
                            await self.stop()  # something failed while ours was running
                    e.delivered_ul, e.delivered_unknown = await self._read_back(marker)
                else:
                    e.delivered_ul = 0.0
            self._record(status, e.delivered_ul, e.delivered_unknown or str(e.message))
            log.info("%s: %s ended: %s", self.name, status.name, e)
            raise
        finally:
            self._started = False
        self._record(status, result.delivered_ul, "done")
        log.info("%s: %s delivered %.6g uL", self.name, status.name, result.delivered_ul)
        return result

    async def _run_marker(self, status: ActionStatus, marker: ActionMarker) -> PumpResult:
        """Check the pump still holds the marker's program and baseline, then RUN once."""
        self._started = False
        identity = await self._identity()
        if identity != marker.identity:
            raise DeviceError(self.name, f"marker is for {marker.identity}, pump is {identity}")
        first = await self._query_through_alarm("")
        self._refuse_if_reset(marker)
        if first.moving:
            raise DeviceBusy(self.name, f"pump is already {first.status_text}")
        b = marker.baseline
        direction = str(b["direction"])
        if first.status == "P":
            await self.command("STP")  # a paused program would resume, not start afresh
        await self._program(direction, str(b["rate"]), str(b["volume"]), str(b["volume_unit"]))
        c = await self.counters()
        self._refuse_if_reset(marker)
        self._delivered(marker, c)  # DeviceStateLost when below the baseline
        tolerance = max(marker.step_ul, c.resolution_ul)
        if (
            abs(c.infused_ul - float(b["infused_ul"])) > tolerance
            or abs(c.withdrawn_ul - float(b["withdrawn_ul"])) > tolerance
        ):
            raise DeviceError(
                self.name,
                f"the counters moved since the marker was taken (I{c.infused_text} "
                f"W{c.withdrawn_text} {c.unit}): prepare the action again",
            )
        while self._hold is not None:
            status.report(Progress(0.0, 0.0, marker.target_ul, "uL", "held before the start"))
            await self._hold.wait()
        # No await between the hold check and this flag: a pause from now on sends STP.
        self._started = True
        cursor = self.alarms.count
        status.report(Progress(0.0, 0.0, marker.target_ul, "uL", "starting"))
        log.info("%s: RUN for %s", self.name, status.name)
        try:
            run: Reply | None = await self._send("RUN")
            failure: DeviceError | None = None
        except _LINE_ERRORS as lost:
            run, failure = None, lost
        if run is not None and run.alarm is None and run.error is None and run.moving:
            return await self._follow(status, marker, cursor)
        if run is not None and run.error is not None:
            self._started = False  # refused: nothing started, nothing to stop
            self._check(run, "RUN")
        # No usable reply (lost, garbled, an alarm, or a status that is not moving): ask the pump
        # what happened; RUN is never sent again.
        if failure is not None:
            why = f"no reply to RUN ({failure.message})"
        else:
            why = f"RUN answered {run.status_text if run is not None else 'nothing'}"
        c = self._counters(await self._query_through_alarm("DIS"))
        delivered = self._delivered(marker, c)
        if c.moving or delivered > marker.step_ul / 2:
            log.info("%s: %s; the pump moved, following it", self.name, why)
            return await self._follow(status, marker, cursor, check_now=True)
        self._started = False
        if run is not None and run.alarm is not None:
            e: DeviceError = DeviceAlarm(self.name, run.alarm, ALARMS.get(run.alarm, "alarm"))
        else:
            e = ActionIncomplete(
                self.name, f"start not confirmed: {why}; the pump did not move ({c.status_text})"
            )
        e.delivered_ul = 0.0
        e.marker = marker
        raise e

    def _refuse_if_reset(self, marker: ActionMarker) -> None:
        if self.reset_seen_at is not None and self.reset_seen_at > marker.created:
            e = DeviceStateLost(
                self.name,
                "the pump reported a power-up reset (alarm R) after the marker was taken; "
                "its volume counters started afresh",
            )
            e.delivered_unknown = "the pump was reset"
            e.marker = marker
            raise e

    def _delivered(self, marker: ActionMarker, c: Counters) -> float:
        """What the action of ``marker`` moved, from a ``DIS`` reading."""
        b = marker.baseline
        try:
            base_in = float(b["infused_ul"])
            base_wd = float(b["withdrawn_ul"])
        except (KeyError, TypeError, ValueError):
            raise DeviceError(self.name, "marker has no New Era counter baseline") from None
        tolerance = max(marker.step_ul, c.resolution_ul)
        if c.infused_ul < base_in - tolerance or c.withdrawn_ul < base_wd - tolerance:
            raise DeviceStateLost(
                self.name,
                f"counters I{c.infused_text} W{c.withdrawn_text} {c.unit} are below the "
                f"marker's baseline ({base_in:g} / {base_wd:g} uL): cleared or reset since",
            )
        if c.saturated(marker.kind):
            raise DeviceError(self.name, f"the {marker.kind} counter is saturated at 9999 {c.unit}")
        base = base_in if marker.kind == "dispense" else base_wd
        return max(0.0, c.counter_ul(marker.kind) - base)

    async def delivered_since(self, marker: ActionMarker) -> Delivery:
        """What the pump moved for ``marker``, from its ``DIS`` counters; works from a new driver
        object after a crash. :class:`DeviceStateLost` when the pump reported a power-up reset
        after the marker was taken, or its counters are below the baseline (cleared)."""
        return (await self._delivery(marker))[0]

    async def _delivery(self, marker: ActionMarker) -> tuple[Delivery, Counters]:
        self._check_marker_device(marker)
        identity = await self._identity()
        if identity != marker.identity:
            raise DeviceError(self.name, f"marker is for {marker.identity}, pump is {identity}")
        reply = await self._query_through_alarm("DIS")
        self._refuse_if_reset(marker)
        c = self._counters(reply)
        delivered = self._delivered(marker, c)
        return Delivery(delivered, c.moving, marker), c

    def _alarms_for(self, cursor: int, after: float | None) -> list[str]:
        """Alarms latched after ``cursor`` (and, when following a move found running, reported
        after the marker was taken): what may have stopped the action. A reset is handled apart
        (:class:`DeviceStateLost`)."""
        return [
            e.code
            for e in self.alarms.since(cursor)
            if (after is None or e.timestamp > after) and e.code != "R"
        ]

    async def _follow(
        self,
        status: ActionStatus,
        marker: ActionMarker,
        cursor: int,
        *,
        check_now: bool = False,
        after: float | None = None,
    ) -> PumpResult:
        """Poll ``DIS`` until the pump stops; the result or the error that says why it stopped."""
        target = marker.target_ul
        rate = max(marker.rate_ul_min, 1e-9)
        moved = 0.0
        failures = 0
        # About 50 progress reports per action, never closer than poll_interval nor further
        # apart than max_poll_interval, and one poll timed for the expected end.
        step = target / rate * 60.0 / 50
        step = min(self.max_poll_interval, max(self.poll_interval, step))
        first = check_now
        while True:
            if not first:
                remaining_s = max(0.0, (target - moved) / rate * 60.0)
                if self._paused:
                    wait = step
                elif remaining_s >= self.poll_interval:
                    wait = min(step, remaining_s)
                else:
                    wait = self.poll_interval
                await self.clock.sleep(wait)
            first = False
            try:
                reply = await self._send("DIS")
            except _LINE_ERRORS:
                failures += 1
                if failures > self.poll_failures:
                    raise
                continue
            failures = 0
            if reply.alarm is not None:
                # Latched by the parser; the pump has stopped. Read what it delivered.
                reply = await self._query_through_alarm("DIS")
            self._check(reply, "DIS")
            self._refuse_if_reset(marker)
            c = self._counters(reply)
            moved = self._delivered(marker, c)
            fraction = min(1.0, moved / target)
            status.report(Progress(fraction, moved, target, "uL", c.status_text))
            if c.moving or c.status in ("P", "T", "U"):
                continue
            # Stopped: either the volume was reached or something stopped it.
            if moved >= target - marker.step_ul:
                return PumpResult(moved, target, marker)
            alarms = self._alarms_for(cursor, after)
            if alarms:
                code = alarms[-1]
                e: DeviceError = DeviceAlarm(self.name, code, ALARMS.get(code, "unknown alarm"))
            else:
                why = "stop requested" if self._stop_requested else "pump stopped, no reason given"
                e = ActionIncomplete(
                    self.name, f"{why} after {moved:g} of {target:g} uL ({c.status_text})"
                )
            e.delivered_ul = moved
            e.marker = marker
            raise e

    # -- pause / resume --------------------------------------------------------------------------
    async def _pause_action(self) -> None:
        """``STP`` once: a running program pauses (``P``) and keeps its remainder."""
        if not self._started:
            if self._hold is None:
                self._hold = asyncio.Event()  # not started yet: hold before RUN
            return
        try:
            reply = await self._send("STP")
        except _LINE_ERRORS:
            reply = await self._query_through_alarm("")  # did the STP land?
            if reply.moving:
                raise DeviceError(
                    self.name, "pause not confirmed: the pump is still moving"
                ) from None
        self._check(reply, "STP")
        self._paused = True
        log.info("%s: paused (%s)", self.name, reply.status_text)

    async def _resume_action(self) -> None:
        """``RUN`` once on a paused program: the pump goes on with the same program's
        remainder. Never sent twice: a lost reply is resolved by asking the status."""
        if self._hold is not None and not self._started:
            hold, self._hold = self._hold, None
            hold.set()
            return
        state = await self._query_through_alarm("")
        if state.status != "P":
            self._paused = False
            if state.moving:
                return
            raise DeviceError(self.name, f"nothing to resume: the pump is {state.status_text}")
        try:
            reply = await self._send("RUN")
        except _LINE_ERRORS as e:
            state = await self._query_through_alarm("")
            if not state.moving:
                raise DeviceError(
                    self.name, f"resume not confirmed ({e.message}); pump is {state.status_text}"
                ) from None
            reply = state
        self._check(reply, "RUN")
        self._paused = False
        log.info("%s: resumed (%s)", self.name, reply.status_text)
