"""Tecan Cavro XCalibur / XP3000 wire format: both serial framings, status byte, error codes.

Wire format (RS-232/RS-485, 9600 8N1 by default), as the Cavro operating manuals describe it:

* **DT** ("data terminal") framing. Host: ``/`` + address character + command string + ``R``
  (execute) + CR. Pump: ``/`` + ``0`` (master address) + status byte + data + ETX + CR + LF.
* **OEM** framing. Host: STX + address + sequence byte + command string + ETX + checksum.
  Pump: STX + ``0`` + status byte + data + ETX + checksum. The checksum is the XOR of every byte
  from STX through ETX. The sequence byte is ``0b0011_RSSS``: sequence ``SSS`` (1..7) and the
  repeat flag ``R``; a block sent again with the repeat flag and the same sequence number is
  acknowledged but not executed a second time, so the OEM framing can resend any command safely.

The status byte is ``0x40 | 0x20 (ready) | error code (0..15)``: ``'`'`` (0x60) is ready without
error, ``'@'`` (0x40) busy without error, ``'g'`` (0x67) "device not initialized" while ready.

Addresses: a pump whose address switch is at ``s`` (0..14) answers to the character
``chr(0x31 + s)``, i.e. ``'1'``..``'9'``, ``':'``..``'?'`` for pumps 1..15; ``'A'``, ``'C'``, ...
reach two pumps, ``'Q'``, ``'U'``, ``'Y'``, ``']'`` four, ``'_'`` all of them (those are not
answered). Here ``address`` is the pump number 1..15 (switch setting + 1).

Units of the model used here: the plunger's full stroke is 3000 increments (``N0``) or 24000
(``N1``, fine positioning); speeds (``V``, ``v``, ``c``) are in pulses (half-steps) per second, a
full stroke being 6000 pulses in either resolution; the ramp slope ``L<n>`` is ``n * 2500``
pulses/s².
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .transport import BadFrame

__all__ = [
    "ALL_PUMPS_ADDRESS",
    "ANY",
    "CR",
    "CUTOFF_SPEED_RANGE",
    "DT_START",
    "EMPTY",
    "ERROR_MESSAGES",
    "ETX",
    "FATAL_ERRORS",
    "INTEGER",
    "LF",
    "MASTER_ADDRESS",
    "PULSES_PER_STROKE",
    "SLOPE_RANGE",
    "SPEED_CODES",
    "START_SPEED_RANGE",
    "STATUS_BASE",
    "STATUS_READY",
    "STEPS_PER_STROKE",
    "STROKE_LENGTH_MM",
    "STX",
    "TOP_SPEED_RANGE",
    "VALVE",
    "CavroAnswer",
    "address_char",
    "build_dt_answer",
    "build_dt_command",
    "build_oem_answer",
    "build_oem_command",
    "dual_address_char",
    "parse_any_answer",
    "parse_dt_answer",
    "parse_oem_answer",
    "quad_address_char",
    "sequence_byte",
    "status_byte",
    "xor_checksum",
]

# ---------------------------------------------------------------------------------------------
# Message constants (the simulator imports these)
# ---------------------------------------------------------------------------------------------
STX = 0x02
ETX = 0x03
CR = 0x0D
LF = 0x0A
DT_START = 0x2F  # '/'
MASTER_ADDRESS = 0x30  # '0': the host
ALL_PUMPS_ADDRESS = 0x5F  # '_'
STATUS_BASE = 0x40
STATUS_READY = 0x20
ERROR_MASK = 0x0F
SEQUENCE_BASE = 0x30
REPEAT_FLAG = 0x08
MAX_ANSWER_DATA = 128

ERROR_MESSAGES: dict[int, str] = {
    0: "no error",
    1: "initialization error",
    2: "invalid command",
    3: "invalid operand",
    4: "invalid command sequence",
    5: "fluid detection",
    6: "EEPROM failure",
    7: "device not initialized",
    9: "plunger overload",
    10: "valve overload",
    11: "plunger move not allowed",
    15: "command overflow",
}
FATAL_ERRORS = frozenset({1, 9, 10})
"""Errors after which the pump must be initialised again before it moves."""

STEPS_PER_STROKE: dict[int, int] = {0: 3000, 1: 24000}
"""Plunger increments in a full stroke per resolution mode ``N0`` / ``N1``."""
PULSES_PER_STROKE = 6000
"""Speed units (pulses = half-steps) in a full stroke; ``V6000`` moves one stroke a second."""
STROKE_LENGTH_MM = 30.0
"""Plunger travel of a full stroke (syringe volume = bore area x 30 mm)."""

SPEED_CODES: tuple[int, ...] = (
    6000, 5600, 5000, 4400, 3800, 3200, 2600, 2200, 2000, 1800,
    1600, 1400, 1200, 1000, 800, 600, 400, 200, 190, 180,
    170, 160, 150, 140, 130, 120, 110, 100, 90, 80,
    70, 60, 50, 40, 30, 20, 18, 16, 14, 12,
    10,
)  # fmt: skip
"""Top speed in pulses/s for the speed codes ``S0``..``S40``."""

TOP_SPEED_RANGE = (5, 6000)
START_SPEED_RANGE = (50, 1000)
CUTOFF_SPEED_RANGE = (50, 2700)
SLOPE_RANGE = (1, 20)


# ---------------------------------------------------------------------------------------------
# Addresses, status byte, checksum
# ---------------------------------------------------------------------------------------------
def address_char(address: int) -> int:
    """The address byte of pump number ``address`` (1..15): ``'1'``..``'9'``, ``':'``..``'?'``."""
    if not 1 <= address <= 15:
        raise ValueError(f"Cavro pump address must be 1..15, got {address!r}")
    return 0x30 + address


def dual_address_char(address: int) -> int:
    """The address byte that reaches this pump and its neighbour (``'A'``, ``'C'``, ...)."""
    return 0x41 + ((address - 1) & ~1)


def quad_address_char(address: int) -> int:
    """The address byte that reaches this pump's group of four (``'Q'``, ``'U'``, ...)."""
    return 0x51 + ((address - 1) & ~3)


def status_byte(ready: bool, error: int = 0) -> int:
    if not 0 <= error <= 15:
        raise ValueError(f"Cavro error code must be 0..15, got {error!r}")
    return STATUS_BASE | (STATUS_READY if ready else 0) | error


def sequence_byte(sequence: int, repeat: bool = False) -> int:
    """OEM sequence/repeat byte: ``0011 R S2 S1 S0`` with ``sequence`` 1..7."""
    if not 1 <= sequence <= 7:
        raise ValueError(f"OEM sequence number must be 1..7, got {sequence!r}")
    return SEQUENCE_BASE | (REPEAT_FLAG if repeat else 0) | sequence


def xor_checksum(data: bytes) -> int:
    value = 0
    for b in data:
        value ^= b
    return value


def _valid_status(b: int) -> bool:
    # bit 7 = 0, bit 6 = 1, bit 4 = 0; bit 5 is ready/busy, bits 0..3 the error code.
    return (b & 0xD0) == 0x40


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------
def _ascii(command: str) -> bytes:
    try:
        data = command.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"Cavro commands are ASCII: {command!r}") from None
    if any(b < 0x20 or b > 0x7E for b in data):
        raise ValueError(f"Cavro commands are printable ASCII: {command!r}")
    return data


def build_dt_command(address: int | str, command: str, *, execute: bool = True) -> bytes:
    """``/`` + address + command (+ ``R``) + CR. ``address`` is a pump number or an address char."""
    addr = address_char(address) if isinstance(address, int) else ord(address)
    body = _ascii(command)
    if execute and not body.endswith(b"R"):
        body += b"R"
    return bytes([DT_START, addr]) + body + bytes([CR])


def build_oem_command(
    address: int | str,
    sequence: int,
    command: str,
    *,
    repeat: bool = False,
    execute: bool = True,
) -> bytes:
    """STX + address + sequence byte + command (+ ``R``) + ETX + XOR checksum."""
    addr = address_char(address) if isinstance(address, int) else ord(address)
    body = _ascii(command)
    if execute and not body.endswith(b"R"):
        body += b"R"
    frame = bytes([STX, addr, sequence_byte(sequence, repeat)]) + body + bytes([ETX])
    return frame + bytes([xor_checksum(frame)])


def build_dt_answer(status: int, data: str = "") -> bytes:
    """A pump's DT answer (for tests and tools; the simulator builds its own)."""
    return bytes([DT_START, MASTER_ADDRESS, status]) + data.encode("ascii") + bytes([ETX, CR, LF])


def build_oem_answer(status: int, data: str = "") -> bytes:
    frame = bytes([STX, MASTER_ADDRESS, status]) + data.encode("ascii") + bytes([ETX])
    return frame + bytes([xor_checksum(frame)])


@dataclass(frozen=True)
class CavroAnswer:
    """One answer block: the status byte and the (ASCII) data block."""

    status: int
    data: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.status & STATUS_READY)

    @property
    def busy(self) -> bool:
        return not self.ready

    @property
    def error(self) -> int:
        return self.status & ERROR_MASK

    @property
    def error_message(self) -> str:
        return ERROR_MESSAGES.get(self.error, f"undocumented error {self.error}")


ANY = re.compile(r"[\x20-\x7e]*")
EMPTY = re.compile(r"")
INTEGER = re.compile(r"-?\d{1,7}")
VALVE = re.compile(r"\d{1,2}|[iobeIOBE]")

_SKIP = frozenset({0x00, 0xFF, CR, LF})  # line noise before an answer: idle bytes, stray line ends


def _scan_data(buf: bytes, start: int) -> int | None:
    """Index of the ETX that ends the data block starting at ``start`` (None: not there yet)."""
    j = start
    while j < len(buf):
        b = buf[j]
        if b == ETX:
            return j
        if b < 0x20 or b > 0x7E:
            raise BadFrame(f"byte 0x{b:02x} inside the data block")
        if j - start >= MAX_ANSWER_DATA:
            raise BadFrame(f"data block longer than {MAX_ANSWER_DATA} bytes")
        j += 1
    if j - start > MAX_ANSWER_DATA:
        raise BadFrame(f"data block longer than {MAX_ANSWER_DATA} bytes")
    return None


def _check_data(status: int, data: bytes, expect: re.Pattern[str]) -> str:
    text = data.decode("ascii")
    if expect.fullmatch(text) is None and not (status & ERROR_MASK and text == ""):
        raise BadFrame(f"unexpected data {text!r} in the answer")
    return text


def _head(buf: bytes, first: int, skip: frozenset[int]) -> tuple[int, int] | None:
    """(start index, status) of an answer after line noise; None while incomplete."""
    i = 0
    while i < len(buf) and buf[i] in skip:
        i += 1
    if i == len(buf):
        return None
    if buf[i] != first:
        raise BadFrame(f"answer starts with 0x{buf[i]:02x}, expected 0x{first:02x}")
    if len(buf) < i + 3:
        return None
    if buf[i + 1] != MASTER_ADDRESS:
        raise BadFrame(f"answer addressed to 0x{buf[i + 1]:02x}, not the master '0'")
    if not _valid_status(buf[i + 2]):
        raise BadFrame(f"invalid status byte 0x{buf[i + 2]:02x}")
    return i, buf[i + 2]


def parse_dt_answer(buf: bytes, expect: re.Pattern[str] = ANY) -> tuple[CavroAnswer, int] | None:
    """Frame parser for DT answers: ``/0`` status data ETX CR LF."""
    head = _head(buf, DT_START, _SKIP)
    if head is None:
        return None
    i, status = head
    j = _scan_data(buf, i + 3)
    if j is None:
        return None
    if len(buf) < j + 3:
        if len(buf) == j + 2 and buf[j + 1] != CR:
            raise BadFrame("ETX not followed by CR")
        return None
    if buf[j + 1] != CR or buf[j + 2] != LF:
        raise BadFrame("answer does not end with ETX CR LF")
    return CavroAnswer(status, _check_data(status, buf[i + 3 : j], expect)), j + 3


def parse_oem_answer(buf: bytes, expect: re.Pattern[str] = ANY) -> tuple[CavroAnswer, int] | None:
    """Frame parser for OEM answers: STX ``0`` status data ETX checksum."""
    head = _head(buf, STX, frozenset({0xFF}))
    if head is None:
        return None
    i, status = head
    j = _scan_data(buf, i + 3)
    if j is None or len(buf) < j + 2:
        return None
    if xor_checksum(buf[i : j + 1]) != buf[j + 1]:
        raise BadFrame(
            f"checksum 0x{buf[j + 1]:02x} != 0x{xor_checksum(buf[i : j + 1]):02x} computed"
        )
    return CavroAnswer(status, _check_data(status, buf[i + 3 : j], expect)), j + 2


def parse_any_answer(buf: bytes) -> tuple[CavroAnswer, bool, int] | None:
    """An answer in either framing: ``(answer, oem, used)``; None while incomplete.

    Used to get back in step after a timeout, when late answers of either framing may be on the
    line. Line noise (NUL, 0xFF, CR, LF) before the answer is skipped; anything else that is not
    the start of an answer is a :class:`BadFrame`.
    """
    i = 0
    while i < len(buf) and buf[i] in _SKIP:
        i += 1
    if i == len(buf):
        return None
    if buf[i] == STX:
        got = parse_oem_answer(buf[i:], ANY)
        oem = True
    elif buf[i] == DT_START:
        got = parse_dt_answer(buf[i:], ANY)
        oem = False
    else:
        raise BadFrame(f"answer starts with 0x{buf[i]:02x}, neither '/' nor STX")
    if got is None:
        return None
    answer, used = got
    return answer, oem, i + used
