"""Temperature controller with the Omega CN7500 / Delta DTB register map, over Modbus RTU.

The controller is a Modbus slave (address 1 by default, 9600 baud; we use RTU framing, 8 data
bits, no parity, 1 stop bit). Temperatures travel as signed 16-bit words in tenths of a degree;
run/stop and the status lamps are single bits. Every Modbus byte is built and parsed by pymodbus's
PDU classes and RTU framer (CRC included); this module only chooses addresses, counts and values,
and carries the frames over our own :class:`~kiboauto.drivers.transport.SerialTransport` so the
line is traced, timed by the injected clock and reconnected like every other device.

The register and bit addresses are the device's message constants, in
:mod:`kiboauto.drivers.modbus_tc_wire`, which the simulator in ``kiboauto.hil.thermal_sim``
imports too, so both sides agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pymodbus.exceptions import ModbusException
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
    DeviceAlarm,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    Progress,
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
    MAX_READ_BITS,
    MAX_READ_WORDS,
    PV_ERRORS,
    REG_CONTROL_METHOD,
    REG_LED_STATUS,
    REG_OUTPUT1,
    REG_PB,
    REG_PV,
    REG_SOFTWARE_VERSION,
    REG_SV,
    REG_UPPER_LIMIT,
    from_word,
    tenths,
    to_word,
)
from .transport import BadFrame, SerialTransport

__all__ = [
    "BIT_ALARM1_LED",
    "BIT_AUTOTUNE",
    "BIT_COMM_WRITE",
    "BIT_RUN",
    "BIT_SYSTEM_ALARM",
    "EXCEPTION_NAMES",
    "MAX_READ_BITS",
    "MAX_READ_WORDS",
    "PV_ERRORS",
    "REG_PV",
    "REG_SV",
    "ModbusExceptionReply",
    "ModbusThermalController",
    "SetpointOutOfRange",
    "ThermalStatus",
    "from_word",
    "to_word",
]


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


class SetpointOutOfRange(DeviceError, ValueError):
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


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class ModbusThermalController:
    """A CN7500/DTB-style temperature controller on a Modbus RTU line.

    Options: ``unit`` (slave address, 1..247), ``timeout`` (s per reply), ``retries`` (for
    queries and idempotent writes), ``poll_interval`` (s between looks while settling),
    ``model`` (shown by :meth:`identify`), ``enable_comm_write`` (set the write-enable bit on
    connect, as the factory default refuses writes over the line).
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
        self.firmware = ""

    def __repr__(self) -> str:
        return f"ModbusThermalController({self.name!r}, unit={self.unit}, port={self.port!r})"

    @property
    def port(self) -> str:
        return self.transport.port

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, check the controller answers, allow writes; nothing is switched."""
        await self.transport.open()
        self.firmware = await self.read_version()
        if self.enable_comm_write:
            await self.write_bit(BIT_COMM_WRITE, True)
        self._limits = await self.read_limits()

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

    # -- raw Modbus --------------------------------------------------------------------------------
    def _parser(
        self, function_code: int, reply_size: int
    ) -> Callable[[bytes], tuple[ModbusPDU, int] | None]:
        """Frame parser for one reply: pymodbus's RTU framer does the CRC and the PDU."""
        framer = self._framer
        unit = self.unit

        def parse(buf: bytes) -> tuple[ModbusPDU, int] | None:
            if len(buf) < ExceptionResponse.rtu_frame_size:
                return None
            try:
                used, dev_id, _tid, pdu_bytes = framer.decode(buf)
            except Exception as e:  # pymodbus could not size the frame at all
                raise BadFrame(f"undecodable RTU frame: {e}") from e
            if used == 0:
                if len(buf) >= reply_size:
                    raise BadFrame(f"no valid {reply_size}-byte RTU reply in {len(buf)} bytes")
                return None
            if not pdu_bytes:
                raise BadFrame("RTU CRC check failed")
            if dev_id != unit:
                raise BadFrame(f"reply from unit {dev_id}, expected unit {unit}")
            pdu = framer.decoder.decode(pdu_bytes)
            if pdu is None:
                raise BadFrame(f"pymodbus cannot decode PDU {pdu_bytes.hex(' ')}")
            if pdu.function_code & 0x7F != function_code:
                raise BadFrame(
                    f"reply has function 0x{pdu.function_code:02X}, "
                    f"request had 0x{function_code:02X}"
                )
            return pdu, used

        return parse

    async def _transact(
        self, request: ModbusPDU, reply_size: int, *, retries: int, what: str
    ) -> ModbusPDU:
        request.dev_id = self.unit
        try:
            frame = self._framer.buildFrame(request)
        except (ModbusException, ValueError) as e:
            raise ValueError(f"{self.name}: cannot build {what}: {e}") from e
        fc = request.function_code
        reply = await self.transport.request(
            frame,
            self._parser(fc, reply_size),
            timeout=self.timeout,
            retries=retries,
            what=what,
        )
        if isinstance(reply, ExceptionResponse) or reply.function_code & 0x80:
            raise ModbusExceptionReply(self.name, fc, reply.exception_code, what)
        return reply

    async def read_registers(self, address: int, count: int = 1) -> list[int]:
        """Holding registers ``address``.. (function 03, at most 8), as raw 16-bit words."""
        if not 1 <= count <= MAX_READ_WORDS:
            raise ValueError(f"read 1..{MAX_READ_WORDS} registers at a time, not {count}")
        reply = await self._transact(
            ReadHoldingRegistersRequest(address=address, count=count),
            5 + 2 * count,
            retries=self.retries,
            what=f"read 0x{address:04X}x{count}",
        )
        words = list(reply.registers)
        if len(words) != count:
            raise DeviceError(self.name, f"asked for {count} registers, got {len(words)}")
        return words

    async def write_register(self, address: int, word: int, *, retries: int | None = None) -> None:
        """One holding register (function 06); the controller echoes the request."""
        what = f"write 0x{address:04X}=0x{word:04X}"
        reply = await self._transact(
            WriteSingleRegisterRequest(address=address, registers=[word]),
            8,
            retries=self.retries if retries is None else retries,
            what=what,
        )
        if reply.address != address or list(reply.registers) != [word]:
            raise DeviceError(self.name, f"{what}: echo differs ({reply})")

    async def write_registers(
        self, address: int, words: list[int], *, retries: int | None = None
    ) -> None:
        """Consecutive holding registers (function 10h, at most 8)."""
        if not 1 <= len(words) <= MAX_READ_WORDS:
            raise ValueError(f"write 1..{MAX_READ_WORDS} registers at a time")
        what = f"write 0x{address:04X}x{len(words)}"
        reply = await self._transact(
            WriteMultipleRegistersRequest(address=address, registers=words, count=len(words)),
            8,
            retries=self.retries if retries is None else retries,
            what=what,
        )
        if reply.address != address or reply.count != len(words):
            raise DeviceError(self.name, f"{what}: reply names 0x{reply.address:04X}x{reply.count}")

    async def read_bits(self, address: int, count: int = 1) -> list[bool]:
        """Bits ``address``.. (function 02, at most 16)."""
        if not 1 <= count <= MAX_READ_BITS:
            raise ValueError(f"read 1..{MAX_READ_BITS} bits at a time, not {count}")
        reply = await self._transact(
            ReadDiscreteInputsRequest(address=address, count=count),
            5 + (count + 7) // 8,
            retries=self.retries,
            what=f"read bits 0x{address:04X}x{count}",
        )
        bits = list(reply.bits)
        if len(bits) < count:
            raise DeviceError(self.name, f"asked for {count} bits, got {len(bits)}")
        return bits[:count]

    async def write_bit(self, address: int, on: bool, *, retries: int | None = None) -> None:
        """One bit (function 05: FF00h sets, 0000h clears); the controller echoes it."""
        what = f"write bit 0x{address:04X}={int(on)}"
        reply = await self._transact(
            WriteSingleCoilRequest(address=address, bits=[on]),
            8,
            retries=self.retries if retries is None else retries,
            what=what,
        )
        if reply.address != address or list(reply.bits)[:1] != [on]:
            raise DeviceError(self.name, f"{what}: echo differs ({reply})")

    # -- temperatures --------------------------------------------------------------------------
    def _check_pv(self, word: int) -> float:
        if word in PV_ERRORS:
            raise DeviceAlarm(self.name, f"0x{word:04X}", PV_ERRORS[word])
        return from_word(word) / 10.0

    async def read_temperature(self) -> Any:
        """Process value as a ``degC`` quantity (:class:`DeviceAlarm` for a sensor error)."""
        (word,) = await self.read_registers(REG_PV, 1)
        return Q_(self._check_pv(word), "degC")

    async def read_setpoint(self) -> Any:
        (word,) = await self.read_registers(REG_SV, 1)
        return Q_(from_word(word) / 10.0, "degC")

    async def read_limits(self) -> tuple[float, float]:
        """(lower, upper) limits of the temperature range in degC; SV must lie inside."""
        upper, lower = await self.read_registers(REG_UPPER_LIMIT, 2)
        self._limits = (from_word(lower) / 10.0, from_word(upper) / 10.0)
        return self._limits

    async def set_limits(self, lower: Any, upper: Any) -> None:
        """Write the temperature range (upper, lower) in one 10h request."""
        lo = magnitude_in(lower, "degC")
        hi = magnitude_in(upper, "degC")
        if not lo < hi:
            raise ValueError(f"lower limit {lo} must be below upper limit {hi}")
        await self.write_registers(REG_UPPER_LIMIT, [to_word(tenths(hi)), to_word(tenths(lo))])
        self._limits = (lo, hi)

    async def set_setpoint(self, temperature: Any) -> None:
        """Write SV (idempotent, so it may be retried); refused outside the range limits."""
        value = magnitude_in(temperature, "degC")
        lower, upper = self._limits if self._limits is not None else await self.read_limits()
        if not lower <= value <= upper:
            raise SetpointOutOfRange(
                self.name, f"set value {value:g} °C is outside the range {lower:g}..{upper:g} °C"
            )
        await self.write_register(REG_SV, to_word(tenths(value)))

    # -- run / stop and modes -------------------------------------------------------------------
    async def run(self, on: bool = True) -> None:
        """RUN (control outputs act) or STOP (outputs off) via bit 0814h."""
        await self.write_bit(BIT_RUN, bool(on))

    async def is_running(self) -> bool:
        (bit,) = await self.read_bits(BIT_RUN, 1)
        return bit

    async def read_version(self) -> str:
        (word,) = await self.read_registers(REG_SOFTWARE_VERSION, 1)
        return f"V{word >> 8:X}.{word & 0xFF:02X}"

    async def set_control_method(self, method: int) -> None:
        if method not in CONTROL_METHODS:
            raise ValueError(f"control method must be one of {CONTROL_METHODS}")
        await self.write_register(REG_CONTROL_METHOD, method)

    async def set_pid(self, pb: Any, ti_s: int, td_s: int) -> None:
        """Proportional band (degrees), integral and derivative times (s) in one request."""
        band = magnitude_in(pb, "delta_degC") if not isinstance(pb, int | float) else float(pb)
        await self.write_registers(REG_PB, [to_word(tenths(band)), int(ti_s), int(td_s)])

    async def status(self) -> ThermalStatus:
        """PV, SV, limits, mode, outputs, lamps and alarms in four short requests."""
        pv_w, sv_w, hi_w, lo_w, _sensor, method, mode = await self.read_registers(REG_PV, 7)
        out1, out2 = await self.read_registers(REG_OUTPUT1, 2)
        (leds,) = await self.read_registers(REG_LED_STATUS, 1)
        bits = await self.read_bits(BIT_AT_LED, _STATUS_BITS)
        (run_bit,) = await self.read_bits(BIT_RUN, 1)
        pv_error = f"0x{pv_w:04X}" if pv_w in PV_ERRORS else None
        return ThermalStatus(
            pv=None if pv_error else from_word(pv_w) / 10.0,
            pv_error=pv_error,
            sv=from_word(sv_w) / 10.0,
            running=run_bit,
            control_method=CONTROL_METHODS.get(method, f"code {method}"),
            heat_cool=HEAT_COOL_MODES.get(mode, f"code {mode}"),
            output1_pct=out1 / 10.0,
            output2_pct=out2 / 10.0,
            alarm1=bits[BIT_ALARM1_LED - BIT_AT_LED],
            alarm2=bits[BIT_ALARM2_LED - BIT_AT_LED],
            alarm3=bits[BIT_ALARM3_LED - BIT_AT_LED],
            system_alarm=bits[BIT_SYSTEM_ALARM - BIT_AT_LED],
            autotuning=bits[BIT_AT_LED - BIT_AT_LED],
            leds=leds,
            limits=(from_word(lo_w) / 10.0, from_word(hi_w) / 10.0),
            details={"pv_word": pv_w},
        )

    async def check_alarms(self) -> None:
        """Raise :class:`DeviceAlarm` if the system alarm (the over-temperature trip) acts."""
        bits = await self.read_bits(BIT_AT_LED, _STATUS_BITS)
        if bits[BIT_SYSTEM_ALARM - BIT_AT_LED]:
            lamps = (("AL1", BIT_ALARM1_LED), ("AL2", BIT_ALARM2_LED), ("AL3", BIT_ALARM3_LED))
            which = [n for n, b in lamps if bits[b - BIT_AT_LED]]
            code = which[0] if which else "SYS"
            raise DeviceAlarm(self.name, code, "system alarm acting: control outputs are off")

    # -- settle ----------------------------------------------------------------------------------
    def settle(self, target: Any, tolerance: Any, hold: Any, timeout: Any) -> ActionStatus:
        """Set ``target``, make sure the loop runs, and finish after ±``tolerance`` for ``hold``.

        PV is polled on the injected clock every ``poll_interval``; progress reports PV against
        the target. A sensor error or the system alarm ends the action with
        :class:`DeviceAlarm`; the ``timeout`` budget ends it with :class:`DeviceTimeout`.
        """
        t = magnitude_in(target, "degC")
        tol = _temperature_difference(tolerance)
        hold_s = magnitude_in(hold, "s")
        budget = magnitude_in(timeout, "s")
        if tol <= 0 or hold_s < 0 or budget <= 0:
            raise ValueError("settle needs tolerance > 0, hold >= 0 and timeout > 0")

        async def body(status: ActionStatus) -> Any:
            start = self.clock.now()
            last: list[float] = []
            try:
                async with self.clock.timeout(budget):
                    return await self._settle_loop(status, t, tol, hold_s, start, last)
            except TimeoutError:
                seen = f"; last PV {last[-1]:.1f} °C" if last else ""
                raise DeviceTimeout(
                    self.name,
                    f"not within ±{tol:g} °C of {t:g} °C for {hold_s:g} s "
                    f"within {budget:g} s{seen}",
                ) from None

        return ActionStatus(f"{self.name}:settle {t:g} degC", body)

    async def _settle_loop(
        self,
        status: ActionStatus,
        t: float,
        tol: float,
        hold_s: float,
        start: float,
        last: list[float],
    ) -> Any:
        await self.set_setpoint(t)
        if not await self.is_running():
            await self.run(True)
        first: float | None = None
        inside_since: float | None = None
        while True:
            pv = self._check_pv((await self.read_registers(REG_PV, 1))[0])
            await self.check_alarms()
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


def _temperature_difference(value: Any) -> float:
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
