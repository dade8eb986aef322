"""Temperature controller with the Omega CN7500 / Delta DTB register map, over Modbus RTU.

The controller is a Modbus slave (address 1 by default, 9600 baud; we use RTU framing, 8 data
bits, no parity, 1 stop bit). Temperatures travel as signed 16-bit words in tenths of a degree;
run/stop and the status lamps are single bits. Every Modbus request is built by pymodbus's PDU
classes and RTU framer (CRC included) and every reply PDU is decoded by pymodbus; this module
chooses addresses, counts and values, checks what each reply holds, and carries the frames over
our own :class:`~kiboauto.drivers.transport.SerialTransport` so the line is traced, timed by the
injected clock and reconnected like every other device. It is the driver core: raw reads and
writes, temperatures, status, readings and settle. The rest lives beside it:

- :mod:`kiboauto.drivers.modbus_tc_wire`: the register and bit addresses, the device's message
  constants, which the simulator in ``kiboauto.hil.thermal_sim`` imports too, so both sides
  agree by construction;
- :mod:`kiboauto.drivers.modbus_tc_frames`: the request kinds and :data:`IDEMPOTENT` (which
  requests may be repeated after a lost reply, declared once), the parsers that match each reply
  to its request (an RTU reply carries no transaction number) and the resynchronisation query
  :data:`RESYNC_WORDS` sent after a timeout or a bad frame, so a late reply is never taken for
  another request's;
- :mod:`kiboauto.drivers.modbus_tc_alarms`: everything the device reports that is an alarm (PV
  error codes, alarm lamps, the system alarm) is latched in
  :attr:`ModbusThermalController.alarms`, from whichever read saw it (slave device failure is
  latched here, by :meth:`ModbusThermalController._transact`);
- :mod:`kiboauto.drivers.modbus_tc_status` (:class:`ThermalStatus`) and
  :mod:`kiboauto.drivers.modbus_tc_errors` (the driver's own errors).

Every public name this module offered before the split is still imported from here (see
``__all__``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
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

from .modbus_tc_alarms import AlarmConditions, system_alarm_code
from .modbus_tc_errors import InvalidRequest, ModbusExceptionReply, SetpointOutOfRange
from .modbus_tc_frames import (
    IDEMPOTENT,
    RESYNC_ADDRESS,
    RESYNC_WORDS,
    RequestKind,
    reply_parser,
    request_kind,
    resync_parse,
)
from .modbus_tc_status import ThermalStatus, heater_cooler
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
from .transport import Resync, SerialTransport

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
        self._conditions = AlarmConditions(name, self.alarms, clock)
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
    def _parser(
        self, function_code: int, reply_size: int, echo: bytes | None = None
    ) -> Callable[[bytes], tuple[ModbusPDU, int] | None]:
        """Frame parser for the reply to one request (see :func:`.reply_parser`)."""
        return reply_parser(self._framer, self.unit, function_code, reply_size, echo)

    def _resync_parse(self, buf: bytes) -> tuple[bool, int] | None:
        """Cut one frame off ``buf``: (True, n) for the resync answer (:func:`.resync_parse`)."""
        return resync_parse(self._framer, self.unit, buf)

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
                reply_parser(self._framer, self.unit, fc, reply_size, echo),
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
                self._conditions.observe_pv(word)
            elif address + offset == REG_LED_STATUS:
                self._conditions.observe_leds(word)
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
        await self._write(
            WriteSingleRegisterRequest(address=address, registers=[word]),
            RequestKind.WRITE_WORD,
            f"write 0x{address:04X}=0x{word:04X}",
        )

    async def write_registers(self, address: int, words: list[int]) -> None:
        """Consecutive holding registers (function 10h, at most 8); the reply names them."""
        if not 1 <= len(words) <= MAX_READ_WORDS or not 0 <= address <= 0xFFFF:
            raise InvalidRequest(self.name, f"write 1..{MAX_READ_WORDS} registers at a time")
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise InvalidRequest(self.name, f"register values must be 0..FFFFh: {words}")
        await self._write(
            WriteMultipleRegistersRequest(address=address, registers=words, count=len(words)),
            RequestKind.WRITE_WORDS,
            f"write 0x{address:04X}x{len(words)}",
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
        self._conditions.observe_bits(address, bits)
        return bits

    async def write_bit(self, address: int, on: bool) -> None:
        """One bit (function 05: FF00h sets, 0000h clears); the controller echoes it.

        Sent again after a lost echo only if :data:`IDEMPOTENT` says so for its kind (setting
        bit 0813h, the start of auto-tuning, is sent once).
        """
        if not 0 <= address <= 0xFFFF:
            raise InvalidRequest(self.name, f"no bit 0x{address:X}")
        await self._write(
            WriteSingleCoilRequest(address=address, bits=[bool(on)]),
            request_kind(0x05, address, bool(on)),
            f"write bit 0x{address:04X}={int(on)}",
        )

    async def _write(self, request: ModbusPDU, kind: RequestKind, what: str) -> None:
        """Send a write (05, 06 or 10h): its 8-byte reply echoes the request's first 5 PDU bytes
        (address and value, or address and count)."""
        await self._transact(request, kind, 8, what=what, echo_len=5)

    # -- alarms ------------------------------------------------------------------------------------
    async def check_alarms(self) -> None:
        """Raise :class:`DeviceAlarm` if the system alarm (the over-temperature trip) acts."""
        code = system_alarm_code(await self.read_bits(BIT_AT_LED, _STATUS_BITS))
        if code is not None:
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
        heater, cooler = heater_cooler(self._heat_cool or "heating/cooling", 0.0, 0.0)
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
            alarm = self._conditions.stopping_alarm(cursor, word, bits)
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
