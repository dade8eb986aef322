"""Temperature controller with the Omega CN7500 / Delta DTB register map, over Modbus RTU.

The controller is a Modbus slave (address 1 by default, 9600 baud; we use RTU framing, 8 data
bits, no parity, 1 stop bit). Temperatures travel as signed 16-bit words in tenths of a degree;
run/stop and the status lamps are single bits. Every Modbus request is built by pymodbus's PDU
classes and RTU framer (CRC included) and every reply PDU is decoded by pymodbus; this module
chooses addresses, counts and values, checks that each reply belongs to its request, and carries
the frames over our own :class:`~kiboauto.drivers.transport.SerialTransport` so the line is
traced, timed by the injected clock and reconnected like every other device.

Replies are matched to requests. An RTU reply carries no transaction number, so the parser of
each request accepts only a frame from our unit with the request's function code and the exact
shape of its answer (the byte count of a read, the echoed address and value of a write). After a
timeout or a bad frame the transport sends :data:`RESYNC_WORDS` holding registers' read, a count
no other request of this driver uses, and throws away every frame until its answer (a 16-byte
read reply nothing else can produce). Only then does the next request go out, so a late reply is
never taken for another request's.

Which requests may be repeated after a lost reply is declared once, in :data:`IDEMPOTENT`.
Everything the device reports that is an alarm (PV error codes, alarm lamps, the system alarm,
slave device failure) is latched in :attr:`ModbusThermalController.alarms`, from whichever read
saw it.

The register and bit addresses are the device's message constants, in
:mod:`kiboauto.drivers.modbus_tc_wire`, which the simulator in ``kiboauto.hil.thermal_sim``
imports too, so both sides agree by construction.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadDiscreteInputsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionStatus,
    AlarmLatch,
    AnyQuantity,
    DeviceAlarm,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    FramingError,
    Progress,
    QuantityLike,
    Reading,
    ReadingDescription,
    Severity,
)
from kiboauto.units import Q_, UnitError, as_quantity, magnitude_in, ureg

from .modbus_tc_wire import (
    _STATUS_BITS,
    BIT_ALARM1_LED,
    BIT_ALARM2_LED,
    BIT_ALARM3_LED,
    BIT_AT_LED,
    BIT_AUTOTUNE,
    BIT_COMM_WRITE,
    BIT_RUN,
    BIT_SYSTEM_ALARM,
    CONTROL_METHODS,
    EXCEPTION_NAMES,
    HEAT_COOL_MODES,
    LED_AL1,
    LED_AL2,
    LED_AL3,
    MAX_READ_BITS,
    MAX_READ_WORDS,
    OUTPUT_MAX_TENTHS,
    PV_ERRORS,
    REG_CONTROL_METHOD,
    REG_HEAT_COOL,
    REG_LED_STATUS,
    REG_LOWER_LIMIT,
    REG_OUTPUT1,
    REG_OUTPUT2,
    REG_PB,
    REG_PV,
    REG_SOFTWARE_VERSION,
    REG_SV,
    REG_UPPER_LIMIT,
    TEMP_MAX_TENTHS,
    TEMP_MIN_TENTHS,
    from_word,
    tenths,
    to_word,
)
from .transport import BadFrame, Resync, SerialTransport

__all__ = [
    "BIT_ALARM1_LED",
    "BIT_AUTOTUNE",
    "BIT_COMM_WRITE",
    "BIT_RUN",
    "BIT_SYSTEM_ALARM",
    "EXCEPTION_NAMES",
    "IDEMPOTENT",
    "MAX_READ_BITS",
    "MAX_READ_WORDS",
    "PV_ERRORS",
    "REG_PV",
    "REG_SV",
    "RESYNC_ADDRESS",
    "RESYNC_WORDS",
    "InvalidRequest",
    "ModbusExceptionReply",
    "ModbusThermalController",
    "RequestKind",
    "SetpointOutOfRange",
    "ThermalStatus",
    "from_word",
    "request_kind",
    "to_word",
]

log = logging.getLogger(__name__)
_DEGC = ureg.Unit("degC")  # parsed once: unit strings cost a parse on every quantity
_PV_KEYS = frozenset(f"pv:0x{code:04X}" for code in PV_ERRORS)
"""Alarm-condition keys of the PV error codes (see ``_observe_pv``)."""


# ---------------------------------------------------------------------------------------------
# What may be sent twice: declared once
# ---------------------------------------------------------------------------------------------
class RequestKind(StrEnum):
    """Every kind of request this driver sends (see :func:`request_kind`)."""

    READ_WORDS = "read holding registers (03)"
    READ_BITS = "read bits (02)"
    WRITE_WORD = "write one register (06): an absolute setting"
    WRITE_WORDS = "write consecutive registers (10h): absolute settings"
    WRITE_SWITCH = "write one bit (05) to an absolute on/off setting"
    START_AUTOTUNE = "set bit 0813h: starts the auto-tuning procedure"


IDEMPOTENT: Final[Mapping[RequestKind, bool]] = MappingProxyType(
    {
        # queries change nothing
        RequestKind.READ_WORDS: True,
        RequestKind.READ_BITS: True,
        # every register of this map holds an absolute value: the second write of the same
        # value leaves the controller as the first one did
        RequestKind.WRITE_WORD: True,
        RequestKind.WRITE_WORDS: True,
        # RUN/STOP, write-in, unit, decimal point and "auto-tuning off" are states, not toggles
        RequestKind.WRITE_SWITCH: True,
        # starting auto-tuning starts a procedure: a second start could restart it
        RequestKind.START_AUTOTUNE: False,
    }
)
"""Which request kinds the transport may send again after a timeout or a garbled reply."""


def request_kind(function_code: int, address: int = 0, on: bool = False) -> RequestKind:
    """The kind of a request, from its function code (and, for bit writes, address and value)."""
    if function_code == 0x03:
        return RequestKind.READ_WORDS
    if function_code == 0x02:
        return RequestKind.READ_BITS
    if function_code == 0x06:
        return RequestKind.WRITE_WORD
    if function_code == 0x10:
        return RequestKind.WRITE_WORDS
    if function_code == 0x05:
        if address == BIT_AUTOTUNE and on:
            return RequestKind.START_AUTOTUNE
        return RequestKind.WRITE_SWITCH
    raise ValueError(f"this driver sends no function 0x{function_code:02X}")


#: The resynchronisation query: holding registers 1000h..1007h in one read. No other request of
#: this driver reads 8 words (a caller's 8-word read is sent as two 4-word reads), so its answer,
#: function 03 with byte count 16, can only belong to it.
RESYNC_ADDRESS: Final = REG_PV
RESYNC_WORDS: Final = MAX_READ_WORDS
_LONGEST_REPLY = 5 + 2 * RESYNC_WORDS  # no request of ours is answered by a longer frame

# holding registers whose contents are range-checked on every read: (low, high, signed)
_WORD_RANGES: dict[int, tuple[int, int, bool]] = {
    REG_PV: (TEMP_MIN_TENTHS, TEMP_MAX_TENTHS, True),
    REG_SV: (TEMP_MIN_TENTHS, TEMP_MAX_TENTHS, True),
    REG_UPPER_LIMIT: (TEMP_MIN_TENTHS, TEMP_MAX_TENTHS, True),
    REG_LOWER_LIMIT: (TEMP_MIN_TENTHS, TEMP_MAX_TENTHS, True),
    REG_CONTROL_METHOD: (min(CONTROL_METHODS), max(CONTROL_METHODS), False),
    REG_HEAT_COOL: (min(HEAT_COOL_MODES), max(HEAT_COOL_MODES), False),
    REG_OUTPUT1: (0, OUTPUT_MAX_TENTHS, False),
    REG_OUTPUT2: (0, OUTPUT_MAX_TENTHS, False),
}

# alarm lamps: name, bit address, bit in the LED word
_LAMPS: tuple[tuple[str, int, int], ...] = (
    ("AL1", BIT_ALARM1_LED, LED_AL1),
    ("AL2", BIT_ALARM2_LED, LED_AL2),
    ("AL3", BIT_ALARM3_LED, LED_AL3),
)


# ---------------------------------------------------------------------------------------------
# Errors and status
# ---------------------------------------------------------------------------------------------
class ModbusExceptionReply(DeviceAlarm):
    """The controller answered with a Modbus exception (``code`` is ``"modbus-0x02"`` etc.)."""

    def __init__(self, device: str, function_code: int, exception_code: int, what: str) -> None:
        name = EXCEPTION_NAMES.get(exception_code, "unknown exception")
        super().__init__(
            device,
            f"modbus-0x{exception_code:02X}",
            f"{what} refused (function 0x{function_code:02X}): {name}",
        )
        self.function_code = function_code
        self.exception_code = exception_code


class InvalidRequest(DeviceError, ValueError):
    """A request this driver cannot send (a count, address, value or unit the caller gave)."""


class SetpointOutOfRange(InvalidRequest):
    """A set value outside the controller's configured temperature range."""


@dataclass(frozen=True)
class ThermalStatus:
    """One look at the controller: what ``status()`` returns."""

    pv: float | None  # degC, None while the PV register holds an error code
    pv_error: str | None  # "0x8003" etc.
    sv: float
    running: bool
    control_method: str
    heat_cool: str
    output1_pct: float
    output2_pct: float
    alarm1: bool
    alarm2: bool
    alarm3: bool
    system_alarm: bool
    autotuning: bool
    leds: int
    limits: tuple[float, float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def alarms(self) -> list[str]:
        names = [("AL1", self.alarm1), ("AL2", self.alarm2), ("AL3", self.alarm3)]
        out = [n for n, on in names if on]
        if self.system_alarm:
            out.append("SYS")
        if self.pv_error:
            out.append(self.pv_error)
        return out

    @property
    def heater_pct(self) -> float | None:
        """The heating output's level, by the heating/cooling selection (None: no heater)."""
        return _heater_cooler(self.heat_cool, self.output1_pct, self.output2_pct)[0]

    @property
    def cooler_pct(self) -> float | None:
        """The cooling output's level (None when the selection has no cooling output)."""
        return _heater_cooler(self.heat_cool, self.output1_pct, self.output2_pct)[1]


def _heater_cooler(mode: str, out1: float, out2: float) -> tuple[float | None, float | None]:
    """(heater, cooler) levels for a heating/cooling selection (1006h) and output levels."""
    if mode == "heating":
        return out1, None
    if mode == "cooling":
        return None, out1
    if mode == "cooling/heating":
        return out2, out1
    return out1, out2  # "heating/cooling": heater on output 1, cooler on output 2


@dataclass(frozen=True)
class _Stop:
    """An alarm that ends a settle: latched as event number ``number``."""

    number: int
    code: str
    message: str


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class ModbusThermalController:
    """A CN7500/DTB-style temperature controller on a Modbus RTU line.

    Options: ``unit`` (slave address, 1..247), ``timeout`` (s per reply), ``retries`` (how often
    a request that :data:`IDEMPOTENT` declares safe is sent again after a lost or garbled
    reply), ``poll_interval`` (s between looks while settling), ``model`` (shown by
    :meth:`identify`), ``enable_comm_write`` (set the write-enable bit on connect, as the
    factory default refuses writes over the line).

    ``alarms`` is the :class:`~kiboauto.devices.AlarmLatch` every reply feeds; subscribe to it
    for alarm events. ``last_status`` is what the last :meth:`status` (or :meth:`connect`) read.
    """

    protocol: ClassVar[str] = "modbus-tc"
    kind: ClassVar[str] = "thermal"
    default_baudrate: ClassVar[int] = 9600

    def __init__(
        self,
        name: str,
        transport: SerialTransport,
        *,
        clock: Clock,
        unit: int = 1,
        timeout: float = 0.5,
        retries: int = 2,
        poll_interval: float = 2.0,
        model: str = "CN7500/DTB",
        enable_comm_write: bool = True,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"{name}: unknown modbus-tc option(s) {sorted(options)}")
        if not 1 <= int(unit) <= 247:
            raise ValueError(f"{name}: Modbus unit must be 1..247, got {unit}")
        self.name = name
        self.transport = transport
        self.clock = clock
        self.unit = int(unit)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.poll_interval = float(poll_interval)
        self.model = model
        self.enable_comm_write = enable_comm_write
        self._framer = FramerRTU(DecodePDU(False))
        self._limits: tuple[float, float] | None = None
        self._heat_cool: str | None = None
        self.firmware = ""
        self.last_status: ThermalStatus | None = None
        self.alarms = AlarmLatch(name)
        self._present: set[str] = set()  # alarm conditions the last reads showed
        self._stops: deque[_Stop] = deque(maxlen=256)
        resync = self._framer.buildFrame(
            ReadHoldingRegistersRequest(address=RESYNC_ADDRESS, count=RESYNC_WORDS, dev_id=unit)
        )
        transport.set_resync(
            Resync(resync, self._resync_parse, what=f"resync read 0x{RESYNC_ADDRESS:04X}x8")
        )

    def __repr__(self) -> str:
        return f"ModbusThermalController({self.name!r}, unit={self.unit}, port={self.port!r})"

    @property
    def port(self) -> str:
        return self.transport.port

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, check the controller answers, allow writes, read its state.

        Nothing is switched: SV, run state and outputs are what the controller kept (they
        survive a crash of the host); they are read into :attr:`last_status`, and alarms the
        controller shows now are latched.
        """
        await self.transport.open()
        self.firmware = await self.read_version()
        if self.enable_comm_write:
            await self.write_bit(BIT_COMM_WRITE, True)
        st = await self.status()
        log.info(
            "%s: connected (%s), SV %.1f °C, %s%s",
            self.name,
            self.firmware,
            st.sv,
            "RUN" if st.running else "STOP",
            f", alarms {','.join(st.alarms)}" if st.alarms else "",
        )

    async def close(self) -> None:
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        version = await self.read_version()
        st = await self.status()
        text = "RUN" if st.running else "STOP"
        if st.alarms:
            text += " alarm " + ",".join(st.alarms)
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model=self.model,
            firmware=version,
            port=self.port,
            status=text,
            details={
                "unit": self.unit,
                "pv_c": st.pv,
                "sv_c": st.sv,
                "control": st.control_method,
                "mode": st.heat_cool,
                "limits_c": list(st.limits),
            },
        )

    # -- frames ----------------------------------------------------------------------------------
    def _decode_pdu(self, pdu_bytes: bytes) -> ModbusPDU:
        try:
            pdu = self._framer.decoder.decode(pdu_bytes)
        except Exception as e:  # pymodbus raises its own exceptions, struct.error, ...
            raise BadFrame(f"pymodbus cannot decode PDU {pdu_bytes.hex(' ')}: {e}") from e
        if pdu is None:
            raise BadFrame(f"pymodbus cannot decode PDU {pdu_bytes.hex(' ')}")
        return pdu

    def _parser(
        self, function_code: int, reply_size: int, echo: bytes | None = None
    ) -> Callable[[bytes], tuple[ModbusPDU, int] | None]:
        """Frame parser for the reply to one request.

        It accepts only a frame from our unit, with the request's function code (or its
        exception), exactly ``reply_size`` bytes long (so a read's byte count must be the one
        asked for), with a good CRC and, for writes, the request's ``echo`` (the PDU the
        controller must send back: address and value, or address and count). Anything else is
        :class:`BadFrame` at once; fewer bytes are incomplete (``None``).
        """
        unit = self.unit

        def parse(buf: bytes) -> tuple[ModbusPDU, int] | None:
            if not buf:
                return None
            if buf[0] != unit:
                raise BadFrame(f"reply from unit {buf[0]}, expected unit {unit}")
            if len(buf) < 2:
                return None
            fc = buf[1]
            if fc & 0x7F != function_code:
                raise BadFrame(f"reply has function 0x{fc:02X}, request had 0x{function_code:02X}")
            exception = bool(fc & 0x80)
            size = ExceptionResponse.rtu_frame_size if exception else reply_size
            if not exception and echo is None and len(buf) >= 3 and buf[2] + 5 != reply_size:
                raise BadFrame(f"byte count {buf[2]}, expected {reply_size - 5}")
            if len(buf) < size:
                return None
            frame = buf[:size]
            if not FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")):
                raise BadFrame("RTU CRC check failed")
            pdu_bytes = frame[1:-2]
            if echo is not None and not exception and pdu_bytes != echo:
                raise BadFrame(f"echo {pdu_bytes.hex(' ')} differs from request {echo.hex(' ')}")
            return self._decode_pdu(pdu_bytes), size

        return parse

    def _resync_parse(self, buf: bytes) -> tuple[bool, int] | None:
        """Cut one frame off ``buf``: (True, n) for the resync answer, (False, n) otherwise.

        Bytes that cannot start a reply of ours (another unit, an unknown function, a frame
        longer than any reply we provoke, a bad CRC) are skipped up to the next byte that could.
        """
        unit = self.unit

        def skip() -> tuple[bool, int]:
            nxt = buf.find(bytes([unit]), 1)
            return False, nxt if nxt > 0 else len(buf)

        if not buf:
            return None
        if buf[0] != unit:
            return skip()
        if len(buf) < 2:
            return None
        fc = buf[1]
        try:
            pdu_class = self._framer.decoder.lookupPduClass(buf)
            size = pdu_class.calculateRtuFrameSize(buf) if pdu_class is not None else -1
        except Exception:  # a function pymodbus cannot size
            size = -1
        if size < 0 or size > _LONGEST_REPLY:
            return skip()
        if size == 0 or len(buf) < size:
            return None  # the byte count, or the rest of the frame, is still on its way
        if not FramerRTU.check_CRC(buf[: size - 2], int.from_bytes(buf[size - 2 : size], "big")):
            return skip()
        return fc == 0x03 and buf[2] == 2 * RESYNC_WORDS, size

    async def _transact(
        self,
        request: ModbusPDU,
        kind: RequestKind,
        reply_size: int,
        *,
        what: str,
        echo_len: int = 0,
    ) -> ModbusPDU:
        request.dev_id = self.unit
        try:
            frame = self._framer.buildFrame(request)
        except Exception as e:  # pymodbus refuses the values (struct.error, ValueError, ...)
            raise InvalidRequest(self.name, f"cannot build {what}: {e}") from e
        fc = request.function_code
        echo = frame[1 : 1 + echo_len] if echo_len else None
        try:
            reply = await self.transport.request(
                frame,
                self._parser(fc, reply_size, echo),
                timeout=self.timeout,
                retries=self.retries if IDEMPOTENT[kind] else 0,
                what=what,
            )
        except asyncio.CancelledError:
            # Cancelled after the request went out: its reply may still come. Resynchronise
            # before the next request so that reply is never taken for another one's.
            self.transport.out_of_step = True
            raise
        if reply.function_code & 0x80:
            code = int(getattr(reply, "exception_code", 0))
            error = ModbusExceptionReply(self.name, fc, code, what)
            if code == 0x04:  # slave device failure: the controller itself is in trouble
                self.alarms.latch(error.code, error.alarm_message, self.clock.wall())
            raise error
        return reply

    def _unbelievable(self, message: str) -> FramingError:
        """A well-formed reply holding a value the controller cannot hold: resync, then raise."""
        self.transport.out_of_step = True
        return FramingError(self.name, message)

    # -- raw Modbus --------------------------------------------------------------------------------
    async def read_registers(self, address: int, count: int = 1) -> list[int]:
        """Holding registers ``address``.. (function 03, at most 8), as raw 16-bit words.

        Known registers are range-checked (a temperature outside -199.9..999.9 °C that is not a
        PV error code, an output level above 100 %, an unknown mode: :class:`FramingError`), and
        PV error codes and lamps are latched as alarms. Eight words are read as two reads of
        four: a single 8-word read is the resynchronisation query.
        """
        if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_READ_WORDS:
            raise InvalidRequest(
                self.name, f"read 1..{MAX_READ_WORDS} registers at 0..FFFFh, not {count}"
            )
        if count == RESYNC_WORDS:
            half = count // 2
            return await self.read_registers(address, half) + await self.read_registers(
                address + half, count - half
            )
        reply = await self._transact(
            ReadHoldingRegistersRequest(address=address, count=count),
            RequestKind.READ_WORDS,
            5 + 2 * count,
            what=f"read 0x{address:04X}x{count}",
        )
        words = [int(w) for w in getattr(reply, "registers", [])]
        if len(words) != count:
            raise self._unbelievable(f"asked for {count} registers, got {len(words)}")
        for offset, word in enumerate(words):
            self._check_word(address + offset, word)
        for offset, word in enumerate(words):
            if address + offset == REG_PV:
                self._observe_pv(word)
            elif address + offset == REG_LED_STATUS:
                self._observe_leds(word)
        return words

    def _check_word(self, address: int, word: int) -> None:
        rule = _WORD_RANGES.get(address)
        if rule is None or (address == REG_PV and word in PV_ERRORS):
            return
        low, high, signed = rule
        value = from_word(word) if signed else word
        if not low <= value <= high:
            raise self._unbelievable(
                f"register 0x{address:04X} holds {value} (0x{word:04X}), outside {low}..{high}"
            )

    async def write_register(self, address: int, word: int) -> None:
        """One holding register (function 06); the controller echoes the request."""
        if not 0 <= address <= 0xFFFF or not 0 <= word <= 0xFFFF:
            raise InvalidRequest(self.name, f"cannot write 0x{word:X} to 0x{address:X}")
        await self._transact(
            WriteSingleRegisterRequest(address=address, registers=[word]),
            RequestKind.WRITE_WORD,
            8,
            what=f"write 0x{address:04X}=0x{word:04X}",
            echo_len=5,
        )

    async def write_registers(self, address: int, words: list[int]) -> None:
        """Consecutive holding registers (function 10h, at most 8); the reply names them."""
        if not 1 <= len(words) <= MAX_READ_WORDS or not 0 <= address <= 0xFFFF:
            raise InvalidRequest(self.name, f"write 1..{MAX_READ_WORDS} registers at a time")
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise InvalidRequest(self.name, f"register values must be 0..FFFFh: {words}")
        await self._transact(
            WriteMultipleRegistersRequest(address=address, registers=words, count=len(words)),
            RequestKind.WRITE_WORDS,
            8,
            what=f"write 0x{address:04X}x{len(words)}",
            echo_len=5,
        )

    async def read_bits(self, address: int, count: int = 1) -> list[bool]:
        """Bits ``address``.. (function 02, at most 16); lamps and the system alarm are latched."""
        if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_READ_BITS:
            raise InvalidRequest(self.name, f"read 1..{MAX_READ_BITS} bits at a time, not {count}")
        reply = await self._transact(
            ReadDiscreteInputsRequest(address=address, count=count),
            RequestKind.READ_BITS,
            5 + (count + 7) // 8,
            what=f"read bits 0x{address:04X}x{count}",
        )
        bits = [bool(b) for b in getattr(reply, "bits", [])]
        if len(bits) < count:
            raise self._unbelievable(f"asked for {count} bits, got {len(bits)}")
        bits = bits[:count]
        self._observe_bits(address, bits)
        return bits

    async def write_bit(self, address: int, on: bool) -> None:
        """One bit (function 05: FF00h sets, 0000h clears); the controller echoes it.

        Sent again after a lost echo only if :data:`IDEMPOTENT` says so for its kind (setting
        bit 0813h, the start of auto-tuning, is sent once).
        """
        if not 0 <= address <= 0xFFFF:
            raise InvalidRequest(self.name, f"no bit 0x{address:X}")
        await self._transact(
            WriteSingleCoilRequest(address=address, bits=[bool(on)]),
            request_kind(0x05, address, bool(on)),
            8,
            what=f"write bit 0x{address:04X}={int(on)}",
            echo_len=5,
        )

    # -- alarms ------------------------------------------------------------------------------------
    def _condition(
        self,
        key: str,
        present: bool,
        code: str,
        message: str,
        severity: Severity = Severity.MAJOR,
        stops: bool = False,
    ) -> None:
        """Latch ``code`` when condition ``key`` appears; forget the condition when it is gone."""
        if present and key not in self._present:
            self._present.add(key)
            self.alarms.latch(code, message, self.clock.wall(), severity)
            if stops:
                self._stops.append(_Stop(self.alarms.count, code, message))
        elif not present and key in self._present:
            self._present.discard(key)
            log.info("%s: %s no longer reported", self.name, key)

    def _observe_pv(self, word: int) -> None:
        if word not in PV_ERRORS and not self._present.intersection(_PV_KEYS):
            return  # the common case, on every PV read: a temperature and no error pending
        for code, meaning in PV_ERRORS.items():
            text = f"0x{code:04X}"
            severity = Severity.MINOR if code == 0x8002 else Severity.MAJOR
            self._condition(f"pv:{text}", word == code, text, meaning, severity, stops=True)

    def _observe_leds(self, word: int) -> None:
        for lamp, _bit, mask in _LAMPS:
            self._condition(f"lamp:{lamp}", bool(word & mask), lamp, f"alarm {lamp[-1]} acting")

    def _observe_bits(self, address: int, bits: list[bool]) -> None:
        seen = dict(zip(range(address, address + len(bits)), bits, strict=True))
        lit: list[str] = []
        for lamp, bit, _mask in _LAMPS:
            if bit in seen:
                self._condition(f"lamp:{lamp}", seen[bit], lamp, f"alarm {lamp[-1]} acting")
            if seen.get(bit, f"lamp:{lamp}" in self._present):
                lit.append(lamp)
        if BIT_SYSTEM_ALARM in seen:
            code = lit[0] if lit else "SYS"
            self._condition(
                "SYS",
                seen[BIT_SYSTEM_ALARM],
                code,
                "system alarm acting: control outputs are off",
                stops=True,
            )

    async def check_alarms(self) -> None:
        """Raise :class:`DeviceAlarm` if the system alarm (the over-temperature trip) acts."""
        bits = await self.read_bits(BIT_AT_LED, _STATUS_BITS)
        if bits[BIT_SYSTEM_ALARM - BIT_AT_LED]:
            lamps = [n for n, b, _m in _LAMPS if bits[b - BIT_AT_LED]]
            code = lamps[0] if lamps else "SYS"
            raise DeviceAlarm(self.name, code, "system alarm acting: control outputs are off")

    # -- temperatures --------------------------------------------------------------------------
    def _check_pv(self, word: int) -> float:
        if word in PV_ERRORS:
            raise DeviceAlarm(self.name, f"0x{word:04X}", PV_ERRORS[word])
        return from_word(word) / 10.0

    async def read_temperature(self) -> AnyQuantity:
        """Process value as a ``degC`` quantity (:class:`DeviceAlarm` for a sensor error)."""
        (word,) = await self.read_registers(REG_PV, 1)
        return Q_(self._check_pv(word), _DEGC)

    async def read_setpoint(self) -> AnyQuantity:
        """Set value (1001h) as a ``degC`` quantity."""
        (word,) = await self.read_registers(REG_SV, 1)
        return Q_(from_word(word) / 10.0, _DEGC)

    async def read_limits(self) -> tuple[float, float]:
        """(lower, upper) limits of the temperature range in degC; SV must lie inside."""
        upper, lower = await self.read_registers(REG_UPPER_LIMIT, 2)
        self._limits = self._limit_pair(lower, upper)
        return self._limits

    def _limit_pair(self, lower: int, upper: int) -> tuple[float, float]:
        lo, hi = from_word(lower) / 10.0, from_word(upper) / 10.0
        if not lo < hi:
            raise self._unbelievable(f"lower limit {lo:g} °C is not below upper limit {hi:g} °C")
        return lo, hi

    def _degrees(self, value: QuantityLike, what: str) -> float:
        try:
            degrees = magnitude_in(value, "degC")
        except (UnitError, ValueError, TypeError) as e:
            raise InvalidRequest(self.name, f"{what}: {e}") from e
        if not math.isfinite(degrees):
            raise InvalidRequest(self.name, f"{what}: {degrees} is not a temperature")
        return degrees

    async def set_limits(self, lower: QuantityLike, upper: QuantityLike) -> None:
        """Write the temperature range (upper, lower) in one 10h request."""
        lo = self._degrees(lower, "lower limit")
        hi = self._degrees(upper, "upper limit")
        if not TEMP_MIN_TENTHS <= tenths(lo) < tenths(hi) <= TEMP_MAX_TENTHS:
            raise InvalidRequest(
                self.name, f"limits {lo:g}..{hi:g} °C: need lower < upper within -199.9..999.9"
            )
        await self.write_registers(REG_UPPER_LIMIT, [to_word(tenths(hi)), to_word(tenths(lo))])
        self._limits = (lo, hi)

    async def set_setpoint(self, temperature: QuantityLike) -> None:
        """Write SV (an absolute value: repeatable); refused outside the range limits."""
        value = self._degrees(temperature, "set value")
        lower, upper = self._limits if self._limits is not None else await self.read_limits()
        if not lower <= value <= upper:
            raise SetpointOutOfRange(
                self.name, f"set value {value:g} °C is outside the range {lower:g}..{upper:g} °C"
            )
        log.info("%s: set value %.1f °C", self.name, value)
        await self.write_register(REG_SV, to_word(tenths(value)))

    # -- run / stop and modes -------------------------------------------------------------------
    async def run(self, on: bool = True) -> None:
        """RUN (control outputs act) or STOP (outputs off) via bit 0814h (a state: repeatable)."""
        log.info("%s: %s", self.name, "RUN" if on else "STOP")
        await self.write_bit(BIT_RUN, bool(on))

    async def is_running(self) -> bool:
        (bit,) = await self.read_bits(BIT_RUN, 1)
        return bit

    async def autotune(self, on: bool = True) -> None:
        """Start (``True``) or abort (``False``) the controller's auto-tuning (bit 0813h).

        A start is sent once. If its echo is lost, the driver asks the device (bit 0813h)
        instead of sending it again: tuning that runs means the start arrived; otherwise the
        original error is raised.
        """
        log.info("%s: auto-tuning %s", self.name, "start" if on else "off")
        try:
            await self.write_bit(BIT_AUTOTUNE, bool(on))
        except (DeviceTimeout, FramingError) as e:
            if not on:
                raise
            try:
                (tuning,) = await self.read_bits(BIT_AUTOTUNE, 1)
            except DeviceError as check:
                raise DeviceError(
                    self.name,
                    f"auto-tuning start not confirmed ({e.message}); check failed: {check}",
                ) from e
            if not tuning:
                raise
            log.info("%s: auto-tuning start confirmed by bit 0813h after %s", self.name, e)

    async def read_version(self) -> str:
        (word,) = await self.read_registers(REG_SOFTWARE_VERSION, 1)
        return f"V{word >> 8:X}.{word & 0xFF:02X}"

    async def set_control_method(self, method: int) -> None:
        if method not in CONTROL_METHODS:
            raise InvalidRequest(self.name, f"control method must be one of {CONTROL_METHODS}")
        await self.write_register(REG_CONTROL_METHOD, method)

    async def set_pid(self, pb: QuantityLike | float, ti_s: int, td_s: int) -> None:
        """Proportional band (degrees), integral and derivative times (s) in one request."""
        try:
            band = _temperature_difference(pb)
            words = [to_word(tenths(band)), int(ti_s), int(td_s)]
        except (UnitError, ValueError, TypeError) as e:
            raise InvalidRequest(self.name, f"PID settings: {e}") from e
        await self.write_registers(REG_PB, words)

    async def status(self) -> ThermalStatus:
        """PV, SV, limits, mode, outputs, lamps and alarms in five short requests."""
        pv_w, sv_w, hi_w, lo_w, _sensor, method, mode = await self.read_registers(REG_PV, 7)
        out1, out2 = await self.read_registers(REG_OUTPUT1, 2)
        (leds,) = await self.read_registers(REG_LED_STATUS, 1)
        bits = await self.read_bits(BIT_AT_LED, _STATUS_BITS)
        (run_bit,) = await self.read_bits(BIT_RUN, 1)
        pv_error = f"0x{pv_w:04X}" if pv_w in PV_ERRORS else None
        limits = self._limit_pair(lo_w, hi_w)
        self._limits = limits
        self._heat_cool = HEAT_COOL_MODES[mode]
        st = ThermalStatus(
            pv=None if pv_error else from_word(pv_w) / 10.0,
            pv_error=pv_error,
            sv=from_word(sv_w) / 10.0,
            running=run_bit,
            control_method=CONTROL_METHODS[method],
            heat_cool=HEAT_COOL_MODES[mode],
            output1_pct=out1 / 10.0,
            output2_pct=out2 / 10.0,
            alarm1=bits[BIT_ALARM1_LED - BIT_AT_LED],
            alarm2=bits[BIT_ALARM2_LED - BIT_AT_LED],
            alarm3=bits[BIT_ALARM3_LED - BIT_AT_LED],
            system_alarm=bits[BIT_SYSTEM_ALARM - BIT_AT_LED],
            autotuning=bits[BIT_AT_LED - BIT_AT_LED],
            leds=leds,
            limits=limits,
            details={"pv_word": pv_w, "heat_cool_code": mode, "control_code": method},
        )
        self.last_status = st
        return st

    # -- readings --------------------------------------------------------------------------------
    async def read(self) -> dict[str, Reading]:
        """Temperature, set value, heater (and cooler) output, run state and alarms.

        The temperature is ``INVALID`` (a NaN quantity) while PV holds an error code, ``MAJOR``
        while an alarm acts; the outputs are ``MAJOR`` while the system alarm cuts them.
        """
        st = await self.status()
        now = self.clock.wall()
        acting = [a for a in st.alarms if not a.startswith("0x")]
        alarm_severity = Severity.MAJOR if acting else Severity.OK
        if st.pv_error is not None:
            word = int(st.details["pv_word"])
            temperature = Reading(
                Q_(math.nan, "degC"), now, Severity.INVALID, f"{st.pv_error}: {PV_ERRORS[word]}"
            )
        else:
            assert st.pv is not None
            temperature = Reading(Q_(st.pv, "degC"), now, alarm_severity, ",".join(acting))
        cut = Severity.MAJOR if st.system_alarm else Severity.OK
        why = "system alarm: outputs cut" if st.system_alarm else ""
        readings = {
            "temperature": temperature,
            "setpoint": Reading(Q_(st.sv, "degC"), now),
        }
        if st.heater_pct is not None:
            readings["heater_output"] = Reading(Q_(st.heater_pct, "percent"), now, cut, why)
        if st.cooler_pct is not None:
            readings["cooler_output"] = Reading(Q_(st.cooler_pct, "percent"), now, cut, why)
        readings["running"] = Reading(st.running, now)
        latched = self.alarms.active
        severity = max(
            alarm_severity,
            Severity.INVALID if st.pv_error else Severity.OK,
            self.alarms.severity,
        )
        readings["alarms"] = Reading(
            ",".join(st.alarms),
            now,
            severity,
            f"latched, not acknowledged: {','.join(latched)}" if latched else "",
        )
        return readings

    def describe(self) -> dict[str, ReadingDescription]:
        """Units and limits of :meth:`read` (temperature limits: the controller's range, as read
        at connect or by the last status; the outputs shown follow its heating/cooling mode)."""
        limits = self._limits
        heater, cooler = _heater_cooler(self._heat_cool or "heating/cooling", 0.0, 0.0)
        out: dict[str, ReadingDescription] = {
            "temperature": ReadingDescription(
                "degC", limits, "process value PV (1000h); NaN and INVALID on a sensor error"
            ),
            "setpoint": ReadingDescription("degC", limits, "set value SV (1001h)"),
        }
        if heater is not None:
            out["heater_output"] = ReadingDescription(
                "percent", (0.0, 100.0), "heating output level (output 1 or 2 by 1006h)"
            )
        if cooler is not None:
            out["cooler_output"] = ReadingDescription(
                "percent", (0.0, 100.0), "cooling output level (output 2 or 1 by 1006h)"
            )
        out["running"] = ReadingDescription("", None, "control loop RUN (bit 0814h)")
        out["alarms"] = ReadingDescription(
            "", None, "alarms acting now (AL1..AL3, SYS, PV error code), comma-separated"
        )
        return out

    # -- settle ----------------------------------------------------------------------------------
    def settle(
        self,
        target: QuantityLike,
        tolerance: QuantityLike,
        hold: QuantityLike,
        timeout: QuantityLike,
    ) -> ActionStatus:
        """Set ``target``, make sure the loop runs, and finish after ±``tolerance`` for ``hold``.

        PV is polled on the injected clock every ``poll_interval``; progress reports PV against
        the target. A sensor error or the system alarm ends the action with
        :class:`DeviceAlarm`, also when another reader (a telemetry poller) saw it first, while
        the action's own polls did not; the ``timeout`` budget ends it with
        :class:`DeviceTimeout`.
        """
        t = self._degrees(target, "settle target")
        try:
            tol = _temperature_difference(tolerance)
            hold_s = magnitude_in(hold, "s")
            budget = magnitude_in(timeout, "s")
        except (UnitError, ValueError, TypeError) as e:
            raise InvalidRequest(self.name, f"settle: {e}") from e
        if not (tol > 0 and hold_s >= 0 and budget > 0):
            raise InvalidRequest(self.name, "settle needs tolerance > 0, hold >= 0, timeout > 0")

        async def body(status: ActionStatus) -> AnyQuantity:
            start = self.clock.now()
            cursor = self.alarms.count
            last: list[float] = []
            log.info(
                "%s: settle to %.1f ±%g °C for %g s (budget %g s)",
                self.name,
                t,
                tol,
                hold_s,
                budget,
            )
            try:
                async with self.clock.timeout(budget):
                    result = await self._settle_loop(status, t, tol, hold_s, start, cursor, last)
            except TimeoutError:
                seen = f"; last PV {last[-1]:.1f} °C" if last else ""
                raise DeviceTimeout(
                    self.name,
                    f"not within ±{tol:g} °C of {t:g} °C for {hold_s:g} s "
                    f"within {budget:g} s{seen}",
                ) from None
            log.info("%s: settled at %s", self.name, result)
            return result

        return ActionStatus(f"{self.name}:settle {t:g} degC", body)

    def _stopping_alarm(self, cursor: int, pv_word: int, bits: list[bool]) -> DeviceAlarm | None:
        """The alarm that ends a settle: latched since ``cursor`` by any reader, or acting now."""
        for stop in self._stops:
            if stop.number > cursor:
                return DeviceAlarm(self.name, stop.code, stop.message)
        if pv_word in PV_ERRORS:
            return DeviceAlarm(self.name, f"0x{pv_word:04X}", PV_ERRORS[pv_word])
        if bits[BIT_SYSTEM_ALARM - BIT_AT_LED]:
            lamps = [n for n, b, _m in _LAMPS if bits[b - BIT_AT_LED]]
            return DeviceAlarm(
                self.name, lamps[0] if lamps else "SYS", "system alarm acting: outputs are off"
            )
        return None

    async def _settle_loop(
        self,
        status: ActionStatus,
        t: float,
        tol: float,
        hold_s: float,
        start: float,
        cursor: int,
        last: list[float],
    ) -> AnyQuantity:
        await self.set_setpoint(Q_(t, "degC"))
        if not await self.is_running():
            await self.run(True)
        first: float | None = None
        inside_since: float | None = None
        while True:
            (word,) = await self.read_registers(REG_PV, 1)
            bits = await self.read_bits(BIT_AT_LED, _STATUS_BITS)
            alarm = self._stopping_alarm(cursor, word, bits)
            if alarm is not None:
                log.info("%s: settle to %.1f °C stopped by %s", self.name, t, alarm)
                raise alarm
            pv = from_word(word) / 10.0
            now = self.clock.now()
            last.append(pv)
            del last[:-1]
            if first is None:
                first = pv
            error = abs(pv - t)
            if error <= tol:
                inside_since = now if inside_since is None else inside_since
                held = now - inside_since
                frac = 0.9 + 0.1 * (1.0 if hold_s == 0 else min(1.0, held / hold_s))
                status.report(Progress(frac, pv, t, "degC", f"holding {held:.0f}/{hold_s:.0f} s"))
                if held >= hold_s:
                    return Q_(pv, "degC")
                wait = min(self.poll_interval, hold_s - held)
            else:
                inside_since = None
                span = max(abs(first - t), tol)
                frac = 0.9 * max(0.0, min(1.0, 1.0 - (error - tol) / span))
                status.report(Progress(frac, pv, t, "degC", f"approaching ({now - start:.0f} s)"))
                wait = self.poll_interval
            await self.clock.sleep(max(wait, 0.0))


def _temperature_difference(value: QuantityLike | float) -> float:
    """A tolerance such as ``"0.1 degC"``, ``"0.1 K"`` or ``0.1`` as kelvin-sized degrees."""
    if isinstance(value, int | float):
        return float(value)
    q = as_quantity(value)
    if q.units == ureg.degC:  # "0.1 degC" read as a difference, as people write it
        return float(q.magnitude)
    if q.units == ureg.degF:
        return float(q.magnitude) * 5.0 / 9.0
    try:
        return float(q.to("delta_degC").magnitude)
    except Exception as e:
        raise UnitError(f"{value!r} is not a temperature difference") from e
