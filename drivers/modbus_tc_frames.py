"""Modbus RTU frames of the thermal controller driver: request kinds, reply parsers, resync query.

Which requests may be repeated after a lost reply is declared once, in :data:`IDEMPOTENT`, and
:func:`request_kind` classifies every request the driver sends.

Replies are matched to requests. An RTU reply carries no transaction number, so the parser
:func:`reply_parser` builds for each request accepts only a frame from our unit with the
request's function code and the exact shape of its answer (the byte count of a read, the echoed
address and value of a write). After a timeout or a bad frame the transport sends
:data:`RESYNC_WORDS` holding registers' read, a count no other request of the driver uses, and
:func:`resync_parse` throws away every frame until its answer (a 16-byte read reply nothing else
can produce).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from .modbus_tc_wire import BIT_AUTOTUNE, MAX_READ_WORDS, REG_PV
from .transport import BadFrame

__all__ = [
    "IDEMPOTENT",
    "RESYNC_ADDRESS",
    "RESYNC_WORDS",
    "RequestKind",
    "decode_pdu",
    "reply_parser",
    "request_kind",
    "resync_parse",
]


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


# ---------------------------------------------------------------------------------------------
# Reply parsers
# ---------------------------------------------------------------------------------------------
def _crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of an RTU ``frame`` are the CRC of the bytes before them."""
    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


def decode_pdu(framer: FramerRTU, pdu_bytes: bytes) -> ModbusPDU:
    """The PDU pymodbus decodes from ``pdu_bytes`` (:class:`BadFrame` if it cannot)."""
    try:
        pdu = framer.decoder.decode(pdu_bytes)
    except Exception as e:  # pymodbus raises its own exceptions, struct.error, ...
        raise BadFrame(f"pymodbus cannot decode PDU {pdu_bytes.hex(' ')}: {e}") from e
    if pdu is None:
        raise BadFrame(f"pymodbus cannot decode PDU {pdu_bytes.hex(' ')}")
    return pdu


def reply_parser(
    framer: FramerRTU, unit: int, function_code: int, reply_size: int, echo: bytes | None = None
) -> Callable[[bytes], tuple[ModbusPDU, int] | None]:
    """Frame parser for the reply to one request.

    It accepts only a frame from ``unit``, with the request's function code (or its
    exception), exactly ``reply_size`` bytes long (so a read's byte count must be the one
    asked for), with a good CRC and, for writes, the request's ``echo`` (the PDU the
    controller must send back: address and value, or address and count). Anything else is
    :class:`BadFrame` at once; fewer bytes are incomplete (``None``).
    """

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
        if not _crc_ok(frame):
            raise BadFrame("RTU CRC check failed")
        pdu_bytes = frame[1:-2]
        if echo is not None and not exception and pdu_bytes != echo:
            raise BadFrame(f"echo {pdu_bytes.hex(' ')} differs from request {echo.hex(' ')}")
        return decode_pdu(framer, pdu_bytes), size

    return parse


def resync_parse(framer: FramerRTU, unit: int, buf: bytes) -> tuple[bool, int] | None:
    """Cut one frame off ``buf``: (True, n) for the resync answer, (False, n) otherwise.

    Bytes that cannot start a reply to ``unit``'s requests (another unit, an unknown function,
    a frame longer than any reply we provoke, a bad CRC) are skipped up to the next byte that
    could.
    """

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
        pdu_class = framer.decoder.lookupPduClass(buf)
        size = pdu_class.calculateRtuFrameSize(buf) if pdu_class is not None else -1
    except Exception:  # a function pymodbus cannot size
        size = -1
    if size < 0 or size > _LONGEST_REPLY:
        return skip()
    if size == 0 or len(buf) < size:
        return None  # the byte count, or the rest of the frame, is still on its way
    if not _crc_ok(buf[:size]):
        return skip()
    return fc == 0x03 and buf[2] == 2 * RESYNC_WORDS, size
