"""The New Era command table: which commands may be repeated, reply checks, argument text.

:data:`COMMANDS` is the idempotence table, the one place that says which commands are safe to
send again after a lost reply (:func:`is_idempotent`); :func:`reply_check` gives the check a
reply's data must pass for its command. :func:`rate_text` and :func:`volume_text` write the
arguments of ``RAT`` and ``VOL`` in the pump's 4 digits. The bytes themselves are in
:mod:`kiboauto.drivers.newera_wire`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kiboauto.devices import DeviceDisconnected, DeviceTimeout, FramingError
from kiboauto.units import UnitError

from .newera_wire import RATE_UNITS, VOLUME_UNITS, format_number, strict_number
from .transport import BadFrame

__all__ = [
    "COMMANDS",
    "LINE_ERRORS",
    "RESYNC_COMMAND",
    "CommandSpec",
    "is_idempotent",
    "rate_text",
    "rate_value",
    "reply_check",
    "volume_text",
]

#: what can go wrong on the line: after one of these a command's fate is unknown
LINE_ERRORS: Final = (DeviceTimeout, FramingError, DeviceDisconnected)


# ---------------------------------------------------------------------------------------------
# Reply shapes
# ---------------------------------------------------------------------------------------------
_NUM = r"[0-9]{0,4}(?:\.[0-9]{0,3})?"
VER_RE: Final = re.compile(r"NE[0-9]{3,4}V[0-9]{1,2}\.[0-9]{1,4}")
DIS_RE: Final = re.compile(rf"I({_NUM})W({_NUM})(UL|ML)")
VOL_RE: Final = re.compile(rf"({_NUM})(UL|ML)")
RAT_RE: Final = re.compile(rf"({_NUM})(UM|MM|UH|MH)")
_DIA_RE = re.compile(_NUM)
_DIR_RE = re.compile(r"INF|WDR")
_SAF_RE = re.compile(r"[0-9]{1,3}")
_AL_RE = re.compile(r"[01]")


def _check_empty(data: str) -> None:
    if data:
        raise BadFrame(f"unexpected data {data!r} (this command answers with a status only)")


def _check_ver(data: str) -> None:
    if VER_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not a firmware version")


def _check_dia(data: str) -> None:
    if _DIA_RE.fullmatch(data) is None:
        raise BadFrame(f"{data!r} is not a diameter")
    strict_number(data, low=0.001, high=100.0)


def _number_with_unit(pattern: re.Pattern[str], what: str) -> Callable[[str], None]:
    """The check of a reply that is a number followed by its unit (``RAT``, ``VOL``)."""

    def check(data: str) -> None:
        m = pattern.fullmatch(data)
        if m is None:
            raise BadFrame(f"{data!r} is not a {what}")
        strict_number(m.group(1))

    return check


_check_rat = _number_with_unit(RAT_RE, "rate")
_check_vol = _number_with_unit(VOL_RE, "volume")


def _check_dis(data: str) -> None:
    m = DIS_RE.fullmatch(data)
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


# ---------------------------------------------------------------------------------------------
# The idempotence table
# ---------------------------------------------------------------------------------------------
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
#: so after a timeout nothing but its own answer can end the resync (see ``NewEraPump._resync``)
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


def reply_check(command: str) -> Callable[[str], None]:
    """The check the data of a reply to ``command`` must pass (raises :class:`BadFrame`)."""
    name, arg = _split(command)
    spec = COMMANDS.get(name)
    if spec is None:
        return _check_any
    if arg == "" and spec.query is not None:
        return spec.query
    return _check_empty


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def rate_text(ul_min: float) -> str:
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


def rate_value(text: str) -> float:
    """A checked ``RAT`` reply (or :func:`rate_text`) in uL/min."""
    m = RAT_RE.fullmatch(text)
    assert m is not None  # checked by the frame parser
    return float(m.group(1)) * RATE_UNITS[m.group(2)]


def volume_text(ul: float) -> tuple[str, str]:
    """(number, unit) for a volume: microlitres while they fit in 4 digits, else mL."""
    for unit in ("UL", "ML"):
        try:
            text = format_number(ul / VOLUME_UNITS[unit])
        except ValueError:
            continue
        if float(text) > 0:
            return text, unit
    raise UnitError(f"volume {ul:g} uL cannot be written in 4 digits")
