"""The Omega CN7500 / Delta DTB temperature controller's Modbus message constants: register and
bit addresses, limits, exception and mode names, and the 16-bit word encodings of temperatures.

Shared by the driver (:mod:`kiboauto.drivers.modbus_tc`) and the simulator
(``kiboauto.hil.thermal_sim``), so both sides agree by construction. The Modbus bytes themselves
are pymodbus's.
"""

from __future__ import annotations

import math

# ---------------------------------------------------------------------------------------------
# Register map (holding registers: read with 03, write with 06 or 10h)
# ---------------------------------------------------------------------------------------------
REG_PV = 0x1000  # process value, 0.1 degree, signed; 0x8002.. = sensor/ADC errors
REG_SV = 0x1001  # set value, 0.1 degree, signed
REG_UPPER_LIMIT = 0x1002  # upper limit of the temperature range (SV may not exceed it)
REG_LOWER_LIMIT = 0x1003  # lower limit of the temperature range
REG_SENSOR_TYPE = 0x1004  # input sensor type code (manual's table; 12 = Pt100)
REG_CONTROL_METHOD = 0x1005  # 0 PID, 1 ON/OFF, 2 manual tuning, 3 PID program
REG_HEAT_COOL = 0x1006  # 0 heating, 1 cooling, 2 heating/cooling, 3 cooling/heating
REG_CYCLE1 = 0x1007  # control cycle of output group 1 (s; 0 = 0.5 s)
REG_CYCLE2 = 0x1008  # control cycle of output group 2
REG_PB = 0x1009  # proportional band, 0.1 degree
REG_TI = 0x100A  # integral time, s (0 = no integral action)
REG_TD = 0x100B  # derivative time, s
REG_INTEGRAL_DEFAULT = 0x100C  # integral preset, 0.1 %
REG_P_OFFSET = 0x100D  # proportional offset when Ti = 0, 0.1 %
REG_COEF = 0x100E  # dual-loop cooling coefficient, 0.01
REG_DEAD_BAND = 0x100F  # dual-loop dead band, 0.1 degree
REG_HYST1 = 0x1010  # ON/OFF hysteresis of output group 1, 0.1 degree
REG_HYST2 = 0x1011  # ON/OFF hysteresis of output group 2
REG_OUTPUT1 = 0x1012  # output 1 level, 0.1 % (writable in manual mode only)
REG_OUTPUT2 = 0x1013  # output 2 level, 0.1 %
REG_PV_OFFSET = 0x1016  # temperature regulation value (PV offset), 0.1 degree
REG_ALARM1_TYPE = 0x1020  # alarm type codes (0 off, 6 absolute upper limit, ...)
REG_ALARM2_TYPE = 0x1021
REG_ALARM3_TYPE = 0x1022
REG_SYSTEM_ALARM = 0x1023  # which alarm (1..3) is the system alarm; 0 none
REG_ALARM1_HIGH = 0x1024  # alarm limits, 0.1 degree
REG_ALARM1_LOW = 0x1025
REG_ALARM2_HIGH = 0x1026
REG_ALARM2_LOW = 0x1027
REG_ALARM3_HIGH = 0x1028
REG_ALARM3_LOW = 0x1029
REG_LED_STATUS = 0x102A  # front-panel lamps as a word (read only)
REG_KEY_STATUS = 0x102B  # push buttons as a word (read only; 0 = pressed)
REG_LOCK = 0x102C  # front-panel setting lock
REG_SOFTWARE_VERSION = 0x102F  # 0x0100 = V1.00 (read only)

# ---------------------------------------------------------------------------------------------
# Bit map (read with 02, write with 05)
# ---------------------------------------------------------------------------------------------
BIT_AT_LED = 0x0800
BIT_OUT1_LED = 0x0801
BIT_OUT2_LED = 0x0802
BIT_ALARM1_LED = 0x0803
BIT_DEGF_LED = 0x0804
BIT_DEGC_LED = 0x0805
BIT_ALARM2_LED = 0x0806
BIT_ALARM3_LED = 0x0807
BIT_KEY_SET = 0x0808  # key bits read 0 while pressed
BIT_KEY_FUNCTION = 0x0809
BIT_KEY_UP = 0x080A
BIT_KEY_DOWN = 0x080B
BIT_EVENT1 = 0x080C
BIT_EVENT2 = 0x080D
BIT_SYSTEM_ALARM = 0x080E  # 1 while the system alarm acts
BIT_COMM_WRITE = 0x0810  # 1 = writes over the line allowed (factory default 0)
BIT_UNIT_C = 0x0811  # 1 = Celsius, 0 = Fahrenheit
BIT_DECIMAL = 0x0812  # 1 = one decimal place shown
BIT_AUTOTUNE = 0x0813  # auto-tuning on/off
BIT_RUN = 0x0814  # 1 = RUN (control outputs active), 0 = STOP

MAX_READ_WORDS = 8  # the controller answers at most 8 words per read
MAX_READ_BITS = 16  # and at most 16 bits
_STATUS_BITS = BIT_SYSTEM_ALARM - BIT_AT_LED + 1  # 0800h..080Eh: lamps, keys, events, alarm

# LED status word (102Ah) bits, as we read the manual (not checked on hardware)
LED_AL3 = 1 << 0
LED_AL2 = 1 << 1
LED_DEGF = 1 << 2
LED_DEGC = 1 << 3
LED_AL1 = 1 << 4
LED_OUT2 = 1 << 5
LED_OUT1 = 1 << 6
LED_AT = 1 << 7

# What the registers can hold: temperatures are shown on four digits with one decimal
# (-199.9 .. 999.9, in tenths), output levels are 0.0 .. 100.0 % (in tenths of a percent).
TEMP_MIN_TENTHS = -1999
TEMP_MAX_TENTHS = 9999
OUTPUT_MAX_TENTHS = 1000

PV_ERRORS: dict[int, str] = {
    0x8002: "initial process: no temperature measured yet",
    0x8003: "temperature sensor not connected",
    0x8004: "temperature sensor input error",
    0x8006: "cannot get a temperature: ADC input error",
    0x8007: "memory read/write error",
}

EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "slave device failure",
    0x05: "acknowledge",
    0x06: "slave device busy",
}

CONTROL_METHODS = {0: "PID", 1: "ON/OFF", 2: "manual", 3: "PID program"}
HEAT_COOL_MODES = {0: "heating", 1: "cooling", 2: "heating/cooling", 3: "cooling/heating"}


def from_word(word: int) -> int:
    """A 16-bit register as a signed integer."""
    return word - 0x10000 if word & 0x8000 else word


def to_word(value: int) -> int:
    """A signed integer (-32768..32767) as a 16-bit register."""
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{value} does not fit a signed 16-bit register")
    return value & 0xFFFF


def tenths(value: float) -> int:
    """Degrees as the controller's tenths (rounded half away from zero)."""
    return int(math.copysign(math.floor(abs(value) * 10 + 0.5), value))
