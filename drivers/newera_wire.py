"""New Era NE-500 / NE-1000 wire format: message constants, encoders and decoders.

* Basic mode. Host to pump: ASCII ``[address][command]`` ended by CR. Pump to host:
  ``STX <address:2 digits> <status> [data] ETX``.
* Safe mode. Both directions: ``STX <length> <data> <CRC-16 hi> <CRC-16 lo> ETX`` where
  ``length`` counts the bytes after STX (itself, the data, the two CRC bytes and ETX) and the
  CRC is CRC-16/CCITT as in XMODEM (poly 0x1021, init 0) over ``data`` only.
* ``status`` is one of ``I W S P T U X`` or an alarm ``A?<type>``; an error ``?``, ``?NA``,
  ``?OOR``, ``?COM`` or ``?IGN`` may follow the status in place of data.

The driver (:mod:`kiboauto.drivers.newera`) and the simulator (``kiboauto.hil.newera_sim``) both
speak through this module, so they use exactly the same bytes. See ``docs/protocols/newera.md``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from .transport import BadFrame

__all__ = [
    "ALARMS",
    "COUNTER_LIMIT",
    "CR",
    "ERRORS",
    "ETX",
    "MAX_REPLY",
    "MAX_SAFE_LENGTH",
    "MIN_SAFE_LENGTH",
    "MOVING",
    "RATE_UNITS",
    "STATUS_TEXT",
    "STX",
    "VOLUME_UNITS",
    "Reply",
    "crc16_xmodem",
    "decode_reply_data",
    "display_resolution",
    "encode_basic_command",
    "encode_basic_reply",
    "encode_reply_data",
    "encode_safe_frame",
    "format_number",
    "number_fits",
    "parse_any_reply",
    "parse_basic_reply",
    "parse_number",
    "parse_safe_frame",
    "parse_safe_reply",
    "strict_number",
]

# ---------------------------------------------------------------------------------------------
# Message constants
# ---------------------------------------------------------------------------------------------
STX: Final = 0x02
ETX: Final = 0x03
CR: Final = 0x0D

#: status (prompt) characters and what they mean
STATUS_TEXT: Final[dict[str, str]] = {
    "I": "infusing",
    "W": "withdrawing",
    "S": "stopped",
    "P": "paused",
    "T": "timed pause phase",
    "U": "waiting for user trigger",
    "X": "purging",
}
#: status characters while the plunger moves
MOVING: Final = frozenset("IWX")
#: alarm types after ``A?``
ALARMS: Final[dict[str, str]] = {
    "R": "pump was reset (power was interrupted)",
    "S": "pump motor stalled",
    "T": "safe mode communications time out",
    "E": "pumping program error",
    "O": "pumping program phase is out of range",
}
#: command errors after ``?`` ("" is the bare ``?``)
ERRORS: Final[dict[str, str]] = {
    "": "command not recognised",
    "NA": "command not currently applicable",
    "OOR": "command data out of range",
    "COM": "invalid communications packet received",
    "IGN": "command ignored (simultaneous new phase start)",
}
#: volume units and their size in microlitres
VOLUME_UNITS: Final[dict[str, float]] = {"UL": 1.0, "ML": 1000.0}
#: rate units and their size in microlitres per minute
RATE_UNITS: Final[dict[str, float]] = {
    "UM": 1.0,
    "MM": 1000.0,
    "UH": 1.0 / 60.0,
    "MH": 1000.0 / 60.0,
}

#: the longest basic reply we accept before declaring the bytes garbage
MAX_REPLY: Final = 64
#: safe-mode length byte limits (length, data, CRC, ETX)
MIN_SAFE_LENGTH: Final = 4
MAX_SAFE_LENGTH: Final = 255

#: the largest number a 4-digit display shows: a ``DIS`` counter stops here (saturates)
COUNTER_LIMIT: Final = 9999.0

_ADDRESS_RE = re.compile(r"[0-9]{2}")
_NUMBER_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?")


# ---------------------------------------------------------------------------------------------
# CRC and numbers
# ---------------------------------------------------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE: Final = _crc_table()


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (CCITT polynomial 0x1021, initial value 0, no reflection)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def format_number(value: float) -> str:
    """A number as the pump writes and reads it: at most 4 digits and at most 3 decimals.

    ``12.34``, ``1.234``, ``0.012``, ``123.4``, ``1234``. Raises :class:`ValueError` when the
    value is negative, not finite or too large for 4 digits.
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} cannot be sent to the pump")
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if len(text.replace(".", "")) <= 4 and len(text.split(".")[0]) <= 4 - decimals:
            return text
    raise ValueError(f"{value!r} does not fit in 4 digits")


def parse_number(text: str) -> float | None:
    """The value of a pump number (digits with at most one point), or None if it is not one.

    Length limits are not checked here; see :func:`number_fits`.
    """
    m = _NUMBER_RE.fullmatch(text)
    if m is None or not (m.group(1) or m.group(2)):
        return None
    return float(text)


def strict_number(text: str, *, low: float = 0.0, high: float = COUNTER_LIMIT) -> float:
    """A number in a reply, checked: digits with at most one point, at most 4 digits of which
    at most 3 after the point, and ``low <= value <= high``.

    Raises :class:`BadFrame` otherwise (``"1.2.3"``, ``"."``, ``"-1"``, ``"12345"``), so a frame
    parser that calls it turns a malformed number into a framing error.
    """
    value = parse_number(text)
    if value is None or not number_fits(text):
        raise BadFrame(f"{text!r} is not a pump number")
    if not low <= value <= high:
        raise BadFrame(f"{text!r} is outside {low:g}..{high:g}")
    return value


def display_resolution(value: float) -> float:
    """One count of the last digit when the pump writes ``value`` in 4 digits (in its unit).

    ``0.125`` and ``9.999`` -> 0.001, ``12.34`` -> 0.01, ``123.4`` -> 0.1, ``1234`` -> 1.
    """
    text = format_number(min(max(0.0, value), COUNTER_LIMIT))
    _, _, frac = text.partition(".")
    return 10.0 ** (-len(frac))


def number_fits(text: str) -> bool:
    """True when a number has at most 4 digits and at most 3 of them after the point."""
    whole, _, frac = text.partition(".")
    return len(whole) + len(frac) <= 4 and len(frac) <= 3


# ---------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """One decoded reply: address, status char, alarm type or error code, and data."""

    address: int
    status: str
    data: str = ""
    alarm: str | None = None
    error: str | None = None
    safe: bool = False

    @property
    def moving(self) -> bool:
        return self.alarm is None and self.status in MOVING

    @property
    def status_text(self) -> str:
        if self.alarm is not None:
            return f"alarm {self.alarm}: {ALARMS.get(self.alarm, 'unknown alarm')}"
        return STATUS_TEXT.get(self.status, f"status {self.status!r}")


def encode_reply_data(
    address: int, status: str, data: str = "", *, alarm: str | None = None
) -> bytes:
    """The ``<address><status>[data]`` text of a reply (``status`` ignored for an alarm)."""
    if alarm is not None:
        return f"{address:02d}A?{alarm}".encode("ascii")
    return f"{address:02d}{status}{data}".encode("ascii")


def decode_reply_data(text: bytes, *, safe: bool = False) -> Reply:
    """Decode ``<address><status>[data]``; raises :class:`BadFrame` when it cannot be a reply."""
    if any(b < 0x20 or b > 0x7E for b in text):
        raise BadFrame(f"non-printable byte in reply {text!r}")
    s = text.decode("ascii")
    if len(s) < 3 or _ADDRESS_RE.fullmatch(s[:2]) is None:
        raise BadFrame(f"reply {s!r} does not start with a 2-digit address and a status")
    address, status, rest = int(s[:2]), s[2], s[3:]
    if status == "A":
        if len(rest) != 2 or rest[0] != "?" or rest[1] not in ALARMS:
            raise BadFrame(f"malformed alarm reply {s!r}")
        return Reply(address, "A", alarm=rest[1], safe=safe)
    if status not in STATUS_TEXT:
        raise BadFrame(f"unknown status {status!r} in reply {s!r}")
    if rest.startswith("?"):
        code = rest[1:]
        if code not in ERRORS:
            raise BadFrame(f"unknown error {rest!r} in reply {s!r}")
        return Reply(address, status, error=code, safe=safe)
    return Reply(address, status, data=rest, safe=safe)


def encode_basic_command(address: int | None, command: str) -> bytes:
    """``[address]command<CR>`` (no address: every pump that listens to address-less commands)."""
    prefix = "" if address is None else str(address)
    return f"{prefix}{command}\r".encode("ascii")


def encode_basic_reply(data: bytes) -> bytes:
    return bytes([STX]) + data + bytes([ETX])


def encode_safe_frame(data: bytes) -> bytes:
    """``STX <length> data <CRC hi> <CRC lo> ETX`` (same shape both ways)."""
    length = len(data) + 4
    if length > MAX_SAFE_LENGTH:
        raise ValueError(f"safe-mode packet of {len(data)} data bytes is too long")
    crc = crc16_xmodem(data)
    return bytes([STX, length]) + data + bytes([crc >> 8, crc & 0xFF, ETX])


def parse_safe_frame(buf: bytes) -> tuple[bytes, int] | None:
    """One safe-mode packet at the start of ``buf``: ``(data, consumed)``, None if incomplete.

    Raises :class:`BadFrame` for a wrong start byte, an impossible length, a missing ETX or a
    CRC that does not match.
    """
    if not buf:
        return None
    if buf[0] != STX:
        raise BadFrame(f"safe packet starts with 0x{buf[0]:02x}, not STX")
    if len(buf) < 2:
        return None
    length = buf[1]
    if length < MIN_SAFE_LENGTH:
        raise BadFrame(f"safe packet length byte {length} is too small")
    total = 1 + length
    if len(buf) < total:
        return None
    frame = buf[:total]
    if frame[-1] != ETX:
        raise BadFrame(f"safe packet does not end with ETX (0x{frame[-1]:02x})")
    data = frame[2:-3]
    got = (frame[-3] << 8) | frame[-2]
    want = crc16_xmodem(data)
    if got != want:
        raise BadFrame(f"safe packet CRC 0x{got:04x} does not match 0x{want:04x}")
    return data, total


def parse_basic_reply(buf: bytes) -> tuple[Reply, int] | None:
    """A basic-mode reply ``STX ... ETX`` at the start of ``buf`` (None while incomplete)."""
    if not buf:
        return None
    if buf[0] != STX:
        raise BadFrame(f"reply starts with 0x{buf[0]:02x}, not STX")
    end = buf.find(bytes([ETX]), 1)
    body = buf[1:] if end < 0 else buf[1:end]
    bad = next((b for b in body if b < 0x20 or b > 0x7E), None)
    if bad is not None:
        raise BadFrame(f"non-printable byte 0x{bad:02x} in reply")
    if end < 0:
        if len(buf) > MAX_REPLY:
            raise BadFrame(f"no ETX within {MAX_REPLY} bytes")
        return None
    return decode_reply_data(body), end + 1


def parse_safe_reply(buf: bytes) -> tuple[Reply, int] | None:
    """A safe-mode reply at the start of ``buf`` (None while incomplete)."""
    parsed = parse_safe_frame(buf)
    if parsed is None:
        return None
    data, used = parsed
    return decode_reply_data(data, safe=True), used


def parse_any_reply(buf: bytes) -> tuple[Reply, int] | None:
    """A reply in either framing: after STX, a digit starts a basic reply, anything else a length.

    (A safe packet whose length byte is an ASCII digit would be 48..57 bytes long; no reply this
    driver asks for is that long.)
    """
    if len(buf) < 2:
        if buf and buf[0] != STX:
            raise BadFrame(f"reply starts with 0x{buf[0]:02x}, not STX")
        return None
    if 0x30 <= buf[1] <= 0x39:
        return parse_basic_reply(buf)
    return parse_safe_reply(buf)
