"""Tecan Cavro: which commands may be sent again after a lost answer, declared once.

:data:`REPEAT_POLICY` gives the policy of every command letter and :func:`repeat_policy` the
policy of a command string; :class:`kiboauto.drivers.cavro.CavroPump` applies it in its exchanges
(and re-exports these names). See ``docs/protocols/cavro.md``.
"""

from __future__ import annotations

import re
from enum import Enum

from kiboauto.devices import DeviceDisconnected, DeviceTimeout, FramingError

__all__ = ["LOST_ANSWER", "REPEAT_POLICY", "REPORT_LETTERS", "Repeat", "repeat_policy"]

LOST_ANSWER = (DeviceTimeout, FramingError, DeviceDisconnected)
"""What a lost, late or garbled answer looks like to the driver."""


class Repeat(Enum):
    """May a command be sent again after its answer was lost?"""

    ALWAYS = "always"  # queries and idempotent settings: the same result however often
    OEM_ONLY = "oem"  # moves: only as an OEM block with the repeat flag (the pump de-duplicates)
    NEVER = "never"  # Q: reading the status clears the pending error, a second Q would lose it


REPEAT_POLICY: dict[str, Repeat] = {
    # reports
    "?": Repeat.ALWAYS,
    "&": Repeat.ALWAYS,
    "#": Repeat.ALWAYS,
    "F": Repeat.ALWAYS,
    "Q": Repeat.NEVER,
    # settings: setting the same value twice changes nothing
    "V": Repeat.ALWAYS,
    "v": Repeat.ALWAYS,
    "c": Repeat.ALWAYS,
    "L": Repeat.ALWAYS,
    "S": Repeat.ALWAYS,
    "N": Repeat.ALWAYS,
    "K": Repeat.ALWAYS,
    "k": Repeat.ALWAYS,
    # terminate: stopping a stopped plunger does nothing
    "T": Repeat.ALWAYS,
    # everything that moves or runs
    "A": Repeat.OEM_ONLY,
    "a": Repeat.OEM_ONLY,
    "P": Repeat.OEM_ONLY,
    "p": Repeat.OEM_ONLY,
    "D": Repeat.OEM_ONLY,
    "d": Repeat.OEM_ONLY,
    "I": Repeat.OEM_ONLY,
    "O": Repeat.OEM_ONLY,
    "B": Repeat.OEM_ONLY,
    "E": Repeat.OEM_ONLY,
    "Z": Repeat.OEM_ONLY,
    "Y": Repeat.OEM_ONLY,
    "W": Repeat.OEM_ONLY,
    "M": Repeat.OEM_ONLY,
    "R": Repeat.OEM_ONLY,
    "X": Repeat.OEM_ONLY,
    "z": Repeat.OEM_ONLY,
}
"""Repeat policy of every command letter the driver knows; unknown letters count as moves."""

REPORT_LETTERS = frozenset("?&#F")
"""The report commands: one command with its operand, always safe to repeat."""
_ORDER = {Repeat.ALWAYS: 0, Repeat.OEM_ONLY: 1, Repeat.NEVER: 2}


def repeat_policy(command: str) -> Repeat:
    """The policy of a command string: the strictest of its commands'.

    A report (``?``, ``&``, ``#``, ``F``) is one command with its operand; ``Q`` never repeats;
    a string of commands repeats only if every command in it does.
    """
    if not command:
        return Repeat.OEM_ONLY  # a bare R runs a loaded string
    if command[0] in REPORT_LETTERS:
        return Repeat.ALWAYS
    if command[0] == "Q":
        return Repeat.NEVER
    worst = Repeat.ALWAYS
    for letter in re.findall(r"[A-Za-z?&#]", command):
        policy = REPEAT_POLICY.get(letter, Repeat.OEM_ONLY)
        if _ORDER[policy] > _ORDER[worst]:
            worst = policy
    return worst
