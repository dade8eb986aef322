"""A CN7500/DTB-style temperature controller with a thermal plant behind it, on Modbus RTU.

Requests are decoded and replies encoded by pymodbus's server-side PDU decoder and RTU framer, so
the same simulator answers a pty, a TCP socket or an in-process memory pipe, and pymodbus's own
client can talk to it. Behind the register map sits:

* a first-order plant (a small incubator): ``dT/dt = (T_amb - T)/tau + h*u_heat - c*u_cool``,
  with ``u`` in 0..1, ``h`` the heater's and ``c`` the Peltier cooler's full-power rates;
* the controller's own loop: PID (proportional band, Ti, Td as the device stores them) with
  output saturation and conditional integration, ON/OFF with hysteresis, or manual outputs;
* the alarms: alarm 1 is by default an absolute upper limit at ``over_temp_c`` and is the
  system alarm, which latches, switches both outputs off and lights its lamps until the host
  writes RUN again below the limit;
* sensor faults: the PV register then reads the manual's error code (``0x8003`` ...).

Physics advance lazily to ``clock.now()`` whenever a request arrives, in one-second controller
steps, and jump analytically when nothing changes (outputs off, manual, or settled), so two
weeks of idle protocol time cost a handful of operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from kiboauto.clock import Clock
from kiboauto.drivers import modbus_tc_wire as m
from kiboauto.drivers.modbus_tc_wire import from_word, tenths, to_word

from .base import Simulator

__all__ = ["ThermalSim"]

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04

STEP_S = 1.0  # controller update period of the simulated loop
MAX_ADU = 256  # longest RTU frame; a longer undecodable buffer is line noise


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# register -> (default, low, high) for plain settings stored as words; signed where low < 0
_SETTINGS: dict[int, tuple[int, int, int]] = {
    m.REG_SENSOR_TYPE: (12, 0, 17),
    m.REG_CONTROL_METHOD: (0, 0, 2),
    m.REG_HEAT_COOL: (2, 0, 3),
    m.REG_CYCLE1: (4, 0, 99),
    m.REG_CYCLE2: (4, 0, 99),
    m.REG_PB: (150, 1, 9999),
    m.REG_TI: (600, 0, 9999),
    m.REG_TD: (0, 0, 9999),
    m.REG_INTEGRAL_DEFAULT: (0, 0, 1000),
    m.REG_P_OFFSET: (0, 0, 1000),
    m.REG_COEF: (100, 1, 9999),
    m.REG_DEAD_BAND: (0, -999, 9999),
    m.REG_HYST1: (2, 0, 9999),
    m.REG_HYST2: (2, 0, 9999),
    m.REG_PV_OFFSET: (0, -999, 999),
    m.REG_ALARM1_TYPE: (6, 0, 13),
    m.REG_ALARM2_TYPE: (0, 0, 13),
    m.REG_ALARM3_TYPE: (0, 0, 13),
    m.REG_SYSTEM_ALARM: (1, 0, 3),
    m.REG_ALARM1_HIGH: (450, -1999, 9999),
    m.REG_ALARM1_LOW: (-200, -1999, 9999),
    m.REG_ALARM2_HIGH: (0, -1999, 9999),
    m.REG_ALARM2_LOW: (0, -1999, 9999),
    m.REG_ALARM3_HIGH: (0, -1999, 9999),
    m.REG_ALARM3_LOW: (0, -1999, 9999),
    m.REG_LOCK: (0, 0, 2),
}
_READ_ONLY = {m.REG_PV, m.REG_LED_STATUS, m.REG_KEY_STATUS, m.REG_SOFTWARE_VERSION}
_SPECIAL = {m.REG_SV, m.REG_UPPER_LIMIT, m.REG_LOWER_LIMIT, m.REG_OUTPUT1, m.REG_OUTPUT2}
_REGISTERS = set(_SETTINGS) | _READ_ONLY | _SPECIAL
_BITS_READABLE = set(range(m.BIT_AT_LED, m.BIT_SYSTEM_ALARM + 1)) | set(
    range(m.BIT_COMM_WRITE, m.BIT_RUN + 1)
)
_BITS_WRITABLE = {m.BIT_COMM_WRITE, m.BIT_UNIT_C, m.BIT_DECIMAL, m.BIT_AUTOTUNE, m.BIT_RUN}

# LED word (102Ah) bit positions as we read the manual: b0 AL3, b1 AL2, b2 degF, b3 degC,
# b4 AL1, b5 OUT2, b6 OUT1, b7 AT.
_LED_BITS = {"AL3": 0, "AL2": 1, "F": 2, "C": 3, "AL1": 4, "OUT2": 5, "OUT1": 6, "AT": 7}

_PV_FAULTS = {f"0x{code:04x}": code for code in m.PV_ERRORS}
_OVERTEMP_WORDS = {"overtemp", "over_temp", "over-temperature"}
_CLEAR_WORDS = {"clear", "reset", "none", ""}
_ALARM_WORDS = {*_OVERTEMP_WORDS, "runaway", *_CLEAR_WORDS}


class ThermalSim(Simulator):
    """A Modbus RTU temperature controller and the incubator it heats and cools."""

    protocol: ClassVar[str] = "modbus-tc"
    kind: ClassVar[str] = "thermal"

    def __init__(
        self,
        name: str,
        clock: Clock | None = None,
        *,
        seed: int = 0,
        unit: int = 1,
        baudrate: int = 9600,
        ambient_c: float = 22.0,
        initial_c: float | None = None,
        setpoint_c: float | None = None,
        time_constant_s: float = 600.0,
        heater_max_c_per_s: float = 0.05,
        cooler_max_c_per_s: float = 0.04,
        pid_pb_c: float = 15.0,
        pid_ti_s: int = 600,
        pid_td_s: int = 0,
        over_temp_c: float = 45.0,
        upper_limit_c: float = 60.0,
        lower_limit_c: float = -10.0,
        noise_c: float = 0.0,
        startup_s: float = 0.0,
        running: bool = True,
        comm_write: bool = False,
        firmware: str = "V1.00",
    ) -> None:
        super().__init__(name, clock, seed=seed)
        if not 1 <= unit <= 247:
            raise ValueError(f"unit must be 1..247, got {unit}")
        if time_constant_s <= 0 or heater_max_c_per_s < 0 or cooler_max_c_per_s < 0:
            raise ValueError("time constant must be > 0 and heater/cooler rates >= 0")
        self.unit = unit
        self.baudrate = baudrate
        self.ambient_c = float(ambient_c)
        self.tau = float(time_constant_s)
        self.heater_rate = float(heater_max_c_per_s)
        self.cooler_rate = float(cooler_max_c_per_s)
        self.noise_c = float(noise_c)
        self.startup_s = float(startup_s)
        self.firmware = firmware
        self._framer = FramerRTU(DecodePDU(True))

        # settings
        self.regs: dict[int, int] = {a: to_word(d) for a, (d, _lo, _hi) in _SETTINGS.items()}
        self.regs[m.REG_PB] = max(1, tenths(pid_pb_c))
        self.regs[m.REG_TI] = int(pid_ti_s)
        self.regs[m.REG_TD] = int(pid_td_s)
        self.regs[m.REG_ALARM1_HIGH] = to_word(tenths(over_temp_c))
        self.upper = tenths(upper_limit_c)
        self.lower = tenths(lower_limit_c)
        sv = self.ambient_c if setpoint_c is None else setpoint_c
        self.sv = min(max(tenths(sv), self.lower), self.upper)
        self.manual_out = [0, 0]  # 0.1 % for outputs 1 and 2 in manual mode
        self.bits = {
            m.BIT_COMM_WRITE: comm_write,
            m.BIT_UNIT_C: True,
            m.BIT_DECIMAL: True,
            m.BIT_AUTOTUNE: False,
            m.BIT_RUN: running,
        }

        # plant and loop state
        self.temp_c = self.ambient_c if initial_c is None else float(initial_c)
        self._t = self.clock.now()
        self._t0 = self._t
        self._integral = 0.0  # % of output, PID integral term
        self._last_pv: float | None = None
        self.out = (0.0, 0.0)  # heater, cooler fraction 0..1 (what the plant receives)
        self._on_off_state = 0  # -1 cooling, 0 idle, +1 heating (ON/OFF mode)

        # faults
        self.pv_fault: int | None = None
        self.tripped = False
        self.runaway = False
        self.trips = 0

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "baudrate": self.baudrate,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
            "framing": "rtu",
        }

    # -- ground truth --------------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        """The plant and the controller now: true temperature, PV, SV, outputs, alarms."""
        self._advance()
        heat, cool = self.out
        pv_word = self._pv_word()
        truth = super().truth()
        truth.update(
            {
                "unit": self.unit,
                "temperature_c": self.temp_c,
                "pv_c": None if pv_word in m.PV_ERRORS else from_word(pv_word) / 10.0,
                "pv_word": pv_word,
                "sv_c": self.sv / 10.0,
                "ambient_c": self.ambient_c,
                "heater_pct": heat * 100.0,
                "cooler_pct": cool * 100.0,
                "running": self.bits[m.BIT_RUN],
                "control_method": self.regs[m.REG_CONTROL_METHOD],
                "tripped": self.tripped,
                "trips": self.trips,
                "runaway": self.runaway,
                "pv_fault": None if self.pv_fault is None else f"0x{self.pv_fault:04x}",
                "comm_write": self.bits[m.BIT_COMM_WRITE],
            }
        )
        return truth

    # -- faults --------------------------------------------------------------------------------
    @classmethod
    def check_alarm(cls, alarm: str) -> None:
        key = alarm.strip().lower()
        if key not in _PV_FAULTS and key not in _ALARM_WORDS:
            known = [*sorted(_PV_FAULTS), "overtemp", "runaway", "clear"]
            raise ValueError(f"unknown thermal alarm {alarm!r}; known: {known}")

    def raise_alarm(self, alarm: str) -> None:
        """``0x8002``..``0x8007``: the PV register reads that code (sensor/ADC/memory fault);
        ``overtemp``: the over-temperature trip latches now; ``runaway``: the heater is stuck
        fully on (only the trip can cut it); ``clear``: sensor back, heater freed, trip
        re-armable (the host still writes RUN to restart, as on the real unit)."""
        self.check_alarm(alarm)
        self._advance()
        key = alarm.strip().lower()
        if key in _PV_FAULTS:
            self.pv_fault = _PV_FAULTS[key]
        elif key in _OVERTEMP_WORDS:
            self._trip()
        elif key == "runaway":
            self.runaway = True
        else:  # one of _CLEAR_WORDS (check_alarm refused anything else)
            self.pv_fault = None
            self.runaway = False
        if self._passive() or self.runaway:
            self.out = self._fixed_outputs()  # the outputs react at once

    # -- bytes ---------------------------------------------------------------------------------
    def handle_bytes(self, data: bytes) -> list[bytes]:
        self._rx.extend(data)
        replies: list[bytes] = []
        while len(self._rx) >= FramerRTU.MIN_SIZE:
            buf = bytes(self._rx)
            try:
                used, dev_id, _tid, pdu_bytes = self._framer.decode(buf)
            except Exception:  # pymodbus could not even size it: line noise
                self._rx.clear()
                break
            if used == 0:
                if self._unknown_function_frame(buf):
                    self._rx.clear()
                    replies.append(self._exception_frame(buf[1], ILLEGAL_FUNCTION))
                elif len(buf) > MAX_ADU:
                    self._rx.clear()
                break
            if not pdu_bytes:  # CRC failure: a real slave stays silent
                self._rx.clear()
                break
            frame = bytes([dev_id]) + pdu_bytes
            start = buf.find(frame)
            del self._rx[: start + len(frame) + 2 if start >= 0 else len(buf)]
            reply = self._answer(dev_id, pdu_bytes)
            if reply is not None:
                replies.append(reply)
        return replies

    def _unknown_function_frame(self, buf: bytes) -> bool:
        """A whole, CRC-correct frame for us whose function pymodbus does not know."""
        if buf[0] != self.unit or len(buf) > MAX_ADU:
            return False
        return FramerRTU.check_CRC(buf[:-2], int.from_bytes(buf[-2:], "big"))

    def _exception_frame(self, function_code: int, code: int) -> bytes:
        reply = ExceptionResponse(function_code & 0x7F, code, device_id=self.unit)
        return self._framer.buildFrame(reply)

    def _answer(self, dev_id: int, pdu_bytes: bytes) -> bytes | None:
        if dev_id not in (self.unit, 0):
            return None  # another slave on the bus
        broadcast = dev_id == 0
        fc = pdu_bytes[0]
        request = self._framer.decoder.decode(pdu_bytes)
        if request is None:  # known function, impossible fields (count 0, > 125 ...)
            return None if broadcast else self._exception_frame(fc, ILLEGAL_VALUE)
        self._advance()
        try:
            coil = isinstance(request, WriteSingleCoilRequest)
            if coil and pdu_bytes[1:] != _clean_coil(request):  # type: ignore[arg-type]
                raise _Refused(ILLEGAL_VALUE)  # a coil value other than FF00h / 0000h
            response = self._execute(request)
        except _Refused as refused:
            return None if broadcast else self._exception_frame(fc, refused.code)
        if self._passive() or self.runaway:
            self.out = self._fixed_outputs()  # stop, manual levels and trips act at once
        if broadcast:
            return None
        response.dev_id = self.unit
        return self._framer.buildFrame(response)

    # -- Modbus functions -----------------------------------------------------------------------
    def _execute(self, req: ModbusPDU) -> ModbusPDU:
        if isinstance(req, ReadHoldingRegistersRequest) and req.function_code == 3:
            if not 1 <= req.count <= m.MAX_READ_WORDS:
                raise _Refused(ILLEGAL_VALUE)
            addresses = range(req.address, req.address + req.count)
            if any(a not in _REGISTERS for a in addresses):
                raise _Refused(ILLEGAL_ADDRESS)
            return ReadHoldingRegistersResponse(registers=[self._read(a) for a in addresses])
        if isinstance(req, WriteSingleRegisterRequest):
            value = req.registers[0]
            self._write_registers(req.address, [value])
            return WriteSingleRegisterResponse(address=req.address, registers=[value])
        if isinstance(req, WriteMultipleRegistersRequest):
            words = list(req.registers)
            if (
                not 1 <= req.count <= m.MAX_READ_WORDS
                or len(words) != req.count
                or req.byte_count != 2 * req.count
            ):
                raise _Refused(ILLEGAL_VALUE)
            self._write_registers(req.address, words)
            return WriteMultipleRegistersResponse(address=req.address, count=req.count)
        if isinstance(req, ReadDiscreteInputsRequest) and req.function_code == 2:
            if not 1 <= req.count <= m.MAX_READ_BITS:
                raise _Refused(ILLEGAL_VALUE)
            addresses = range(req.address, req.address + req.count)
            if any(a not in _BITS_READABLE for a in addresses):
                raise _Refused(ILLEGAL_ADDRESS)
            return ReadDiscreteInputsResponse(bits=[self._read_bit(a) for a in addresses])
        if isinstance(req, WriteSingleCoilRequest):
            on = bool(req.bits[0])
            self._write_bit(req.address, on)
            return WriteSingleCoilResponse(address=req.address, bits=[on])
        raise _Refused(ILLEGAL_FUNCTION)

    def _read(self, address: int) -> int:
        if address == m.REG_PV:
            return self._pv_word()
        if address == m.REG_SV:
            return to_word(self.sv)
        if address == m.REG_UPPER_LIMIT:
            return to_word(self.upper)
        if address == m.REG_LOWER_LIMIT:
            return to_word(self.lower)
        if address == m.REG_OUTPUT1:
            return self._output_words()[0]
        if address == m.REG_OUTPUT2:
            return self._output_words()[1]
        if address == m.REG_LED_STATUS:
            return self._led_word()
        if address == m.REG_KEY_STATUS:
            return 0x000F  # no key pressed (a pressed key reads 0)
        if address == m.REG_SOFTWARE_VERSION:
            return _version_word(self.firmware)
        return self.regs[address]

    def _write_registers(self, address: int, words: list[int]) -> None:
        """Check every word first, then apply them all (a refused request changes nothing)."""
        addresses = list(range(address, address + len(words)))
        if any(a not in _REGISTERS or a in _READ_ONLY for a in addresses):
            raise _Refused(ILLEGAL_ADDRESS)
        if not self.bits[m.BIT_COMM_WRITE]:
            raise _Refused(ILLEGAL_FUNCTION)  # writes over the line not enabled (bit 0810h)
        if self.pv_fault == 0x8007:
            raise _Refused(DEVICE_FAILURE)  # settings memory broken
        staged = {a: w for a, w in zip(addresses, words, strict=True)}
        upper = from_word(staged.get(m.REG_UPPER_LIMIT, to_word(self.upper)))
        lower = from_word(staged.get(m.REG_LOWER_LIMIT, to_word(self.lower)))
        if not -1999 <= lower < upper <= 9999:
            raise _Refused(ILLEGAL_VALUE)
        manual = staged.get(m.REG_CONTROL_METHOD, self.regs[m.REG_CONTROL_METHOD]) == 2
        for a, w in staged.items():
            if a == m.REG_SV:
                if not lower <= from_word(w) <= upper:
                    raise _Refused(ILLEGAL_VALUE)
            elif a in (m.REG_OUTPUT1, m.REG_OUTPUT2):
                if not manual or not 0 <= w <= 1000:
                    raise _Refused(ILLEGAL_VALUE)
            elif a in _SETTINGS:
                _d, lo, hi = _SETTINGS[a]
                value = from_word(w) if lo < 0 else w
                if not lo <= value <= hi:
                    raise _Refused(ILLEGAL_VALUE)
        for a, w in staged.items():
            if a == m.REG_SV:
                self.sv = from_word(w)
            elif a == m.REG_UPPER_LIMIT:
                self.upper = from_word(w)
            elif a == m.REG_LOWER_LIMIT:
                self.lower = from_word(w)
            elif a == m.REG_OUTPUT1:
                self.manual_out[0] = w
            elif a == m.REG_OUTPUT2:
                self.manual_out[1] = w
            else:
                if a == m.REG_CONTROL_METHOD and w != self.regs[a]:
                    self._integral = 0.0
                self.regs[a] = w
        self.sv = min(max(self.sv, self.lower), self.upper)

    def _read_bit(self, address: int) -> bool:
        if address in self.bits:
            return self.bits[address]
        heat, cool = self.out
        leds = {
            m.BIT_AT_LED: self.bits[m.BIT_AUTOTUNE],
            m.BIT_OUT1_LED: heat > 0 if self._heat_on_out1() else cool > 0,
            m.BIT_OUT2_LED: cool > 0 if self._heat_on_out1() else heat > 0,
            m.BIT_ALARM1_LED: self._alarm_active(1),
            m.BIT_DEGF_LED: not self.bits[m.BIT_UNIT_C],
            m.BIT_DEGC_LED: self.bits[m.BIT_UNIT_C],
            m.BIT_ALARM2_LED: self._alarm_active(2),
            m.BIT_ALARM3_LED: self._alarm_active(3),
            m.BIT_SYSTEM_ALARM: self.tripped,
        }
        if address in leds:
            return leds[address]
        # keys read 1 while released; events 1/2 and reserved bits read 0
        return m.BIT_KEY_SET <= address <= m.BIT_KEY_DOWN

    def _write_bit(self, address: int, on: bool) -> None:
        if address not in _BITS_WRITABLE:
            raise _Refused(ILLEGAL_ADDRESS)
        if address != m.BIT_COMM_WRITE and not self.bits[m.BIT_COMM_WRITE]:
            raise _Refused(ILLEGAL_FUNCTION)
        if address == m.BIT_RUN:
            if on and self.tripped and not self._over_limit():
                self.tripped = False  # RUN re-arms a cleared trip
            if on != self.bits[m.BIT_RUN]:
                self._integral = 0.0
        self.bits[address] = on

    # -- derived words ---------------------------------------------------------------------------
    def _pv_word(self) -> int:
        if self.clock.now() - self._t0 < self.startup_s:
            return 0x8002
        if self.pv_fault is not None:
            return self.pv_fault
        pv = self.temp_c + from_word(self.regs[m.REG_PV_OFFSET]) / 10.0
        if self.noise_c > 0:
            pv += self.random.gauss(0.0, self.noise_c)
        return to_word(max(-1999, min(9999, tenths(pv))))

    def _heat_on_out1(self) -> bool:
        return self.regs[m.REG_HEAT_COOL] != 3 and self.regs[m.REG_HEAT_COOL] != 1

    def _output_words(self) -> tuple[int, int]:
        heat, cool = (round(x * 1000) for x in self.out)
        return (heat, cool) if self._heat_on_out1() else (cool, heat)

    def _led_word(self) -> int:
        out1, out2 = self._output_words()
        lit = {
            "AL1": self._alarm_active(1),
            "AL2": self._alarm_active(2),
            "AL3": self._alarm_active(3),
            "C": self.bits[m.BIT_UNIT_C],
            "F": not self.bits[m.BIT_UNIT_C],
            "OUT1": out1 > 0,
            "OUT2": out2 > 0,
            "AT": self.bits[m.BIT_AUTOTUNE],
        }
        return sum(1 << _LED_BITS[k] for k, on in lit.items() if on)

    def _alarm_active(self, n: int) -> bool:
        """Alarm ``n`` (1..3) by its type code, on the true temperature."""
        if self.tripped and self.regs[m.REG_SYSTEM_ALARM] == n:
            return True
        kind = self.regs[m.REG_ALARM1_TYPE + n - 1]
        high = from_word(self.regs[m.REG_ALARM1_HIGH + 2 * (n - 1)]) / 10.0
        low = from_word(self.regs[m.REG_ALARM1_LOW + 2 * (n - 1)]) / 10.0
        t, sv = self.temp_c, self.sv / 10.0
        checks: dict[int, Callable[[], bool]] = {
            1: lambda: t > sv + high or t < sv - low,
            2: lambda: t > sv + high,
            3: lambda: t < sv - low,
            4: lambda: sv - low <= t <= sv + high,
            5: lambda: t > high or t < low,
            6: lambda: t > high,
            7: lambda: t < low,
        }
        check = checks.get(kind)
        return bool(check and check())

    def _over_limit(self) -> bool:
        n = self.regs[m.REG_SYSTEM_ALARM]
        if n == 0:
            return False
        was, self.tripped = self.tripped, False
        try:
            return self._alarm_active(n)
        finally:
            self.tripped = was

    def _trip(self) -> None:
        if not self.tripped:
            self.trips += 1
        self.tripped = True
        self.out = (0.0, 0.0)
        self._integral = 0.0

    # -- physics ---------------------------------------------------------------------------------
    def _equilibrium(self, heat: float, cool: float) -> float:
        return self.ambient_c + self.tau * (self.heater_rate * heat - self.cooler_rate * cool)

    def _relax(self, dt: float, heat: float, cool: float) -> None:
        """Exact first-order response over ``dt`` with constant outputs."""
        target = self._equilibrium(heat, cool)
        self.temp_c = target + (self.temp_c - target) * math.exp(-dt / self.tau)

    def _passive(self) -> bool:
        """Outputs do not depend on the temperature right now (no loop to step)."""
        return (
            self.tripped
            or self.pv_fault is not None
            or not self.bits[m.BIT_RUN]
            or self.regs[m.REG_CONTROL_METHOD] == 2
        )

    def _fixed_outputs(self) -> tuple[float, float]:
        if self.runaway and not self.tripped:
            return (1.0, 0.0)
        if self.tripped or self.pv_fault is not None or not self.bits[m.BIT_RUN]:
            return (0.0, 0.0)
        out1, out2 = (x / 1000.0 for x in self.manual_out)
        return (out1, out2) if self._heat_on_out1() else (out2, out1)

    def _advance(self) -> None:
        """Bring the plant and the loop up to the clock's present."""
        now = self.clock.now()
        remaining = now - self._t
        self._t = now
        while remaining > 1e-9:
            if self._passive() or self.runaway:
                self.out = self._fixed_outputs()
                if self.out == (0.0, 0.0):
                    self._relax(remaining, 0.0, 0.0)  # analytic: nothing drives the plant
                    if self._over_limit():
                        self._trip()
                    return
                dt = min(STEP_S, remaining)
            else:
                if self._settled():
                    return  # PID at rest: nothing changes until someone writes
                dt = min(STEP_S, remaining)
                self.out = self._control(dt)
            self._relax(dt, *self.out)
            remaining -= dt
            if self._over_limit():
                self._trip()

    def _settled(self) -> bool:
        if self.regs[m.REG_CONTROL_METHOD] != 0 or self.runaway:
            return False
        heat, cool = self.out
        sv = self.sv / 10.0
        return (
            abs(self.temp_c - sv) < 1e-4
            and abs(self._equilibrium(heat, cool) - self.temp_c) < 1e-4
            and self._last_pv is not None
            and abs(self._last_pv - self.temp_c) < 1e-5
        )

    def _control(self, dt: float) -> tuple[float, float]:
        """One controller update: (heater, cooler) fractions for the next ``dt``."""
        pv = self.temp_c
        sv = self.sv / 10.0
        error = sv - pv
        mode = self.regs[m.REG_HEAT_COOL]
        can_heat = mode in (0, 2, 3)
        can_cool = mode in (1, 2, 3)
        if self.regs[m.REG_CONTROL_METHOD] == 1:  # ON/OFF with hysteresis
            h1 = self.regs[m.REG_HYST1] / 10.0
            h2 = self.regs[m.REG_HYST2] / 10.0
            if error > h1:
                self._on_off_state = 1
            elif error < -h2:
                self._on_off_state = -1
            elif (self._on_off_state == 1 and error <= 0) or (
                self._on_off_state == -1 and error >= 0
            ):
                self._on_off_state = 0
            self._last_pv = pv
            return (
                1.0 if self._on_off_state == 1 and can_heat else 0.0,
                1.0 if self._on_off_state == -1 and can_cool else 0.0,
            )
        pb = max(0.1, self.regs[m.REG_PB] / 10.0)
        ti = float(self.regs[m.REG_TI])
        td = float(self.regs[m.REG_TD])
        gain = 100.0 / pb  # % of output per degree of error
        low = -100.0 if can_cool else 0.0
        high = 100.0 if can_heat else 0.0
        p = gain * error
        d = 0.0
        if td > 0 and self._last_pv is not None:
            d = -gain * td * (pv - self._last_pv) / dt  # on the measurement: no set-point kick
        self._last_pv = pv
        if ti > 0:
            candidate = self._integral + gain * error * dt / ti
            trial = p + d + candidate
            # conditional integration: hold the integral while it would deepen saturation
            if not ((trial > high and error > 0) or (trial < low and error < 0)):
                self._integral = max(low, min(high, candidate))
            u = p + d + self._integral
        else:
            u = p + d + self.regs[m.REG_P_OFFSET] / 10.0
        u = max(low, min(high, u))
        coef = self.regs[m.REG_COEF] / 100.0
        heat = max(0.0, u) / 100.0 if can_heat else 0.0
        cool = min(1.0, max(0.0, -u) * coef / 100.0) if can_cool else 0.0
        return (heat, cool)

    # -- test helpers ---------------------------------------------------------------------------
    def temperature(self) -> float:
        """The plant's true temperature now (for tests and the rig console)."""
        self._advance()
        return self.temp_c


def _clean_coil(req: WriteSingleCoilRequest) -> bytes:
    """The PDU body pymodbus encodes for this address and state (value FF00h or 0000h)."""
    return WriteSingleCoilRequest(address=req.address, bits=[bool(req.bits[0])]).encode()


def _version_word(firmware: str) -> int:
    """``"V1.00"`` as the controller's version word 0x0100."""
    text = firmware.strip().lstrip("Vv")
    major, _, minor = text.partition(".")
    try:
        return (int(major, 16) << 8) | int(minor or "0", 16)
    except ValueError:
        return 0x0100
