"""Alarm conditions of the Modbus thermal controller, latched from whichever read saw them.

The controller reports an alarm as a state (a PV error code in 1000h, a lamp in the LED word or
a status bit, the system alarm bit) for as long as it acts. :class:`AlarmConditions` turns those
states into events: a condition is latched in the driver's
:class:`~kiboauto.devices.AlarmLatch` once, when a read first shows it, and forgotten when a read
no longer does. Sensor errors and the system alarm also end a running settle, even when another
reader (a telemetry poller) saw them first: :meth:`AlarmConditions.stopping_alarm`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from kiboauto.clock import Clock
from kiboauto.devices import AlarmLatch, DeviceAlarm, Severity

from .modbus_tc_wire import (
    BIT_ALARM1_LED,
    BIT_ALARM2_LED,
    BIT_ALARM3_LED,
    BIT_AT_LED,
    BIT_SYSTEM_ALARM,
    LED_AL1,
    LED_AL2,
    LED_AL3,
    PV_ERRORS,
)

__all__ = ["LAMPS", "AlarmConditions", "pv_error_alarm", "system_alarm_code"]

log = logging.getLogger(__name__)

#: Alarm lamps: name, bit address, bit in the LED word.
LAMPS: tuple[tuple[str, int, int], ...] = (
    ("AL1", BIT_ALARM1_LED, LED_AL1),
    ("AL2", BIT_ALARM2_LED, LED_AL2),
    ("AL3", BIT_ALARM3_LED, LED_AL3),
)
_PV_KEYS = frozenset(f"pv:0x{code:04X}" for code in PV_ERRORS)
"""Condition keys of the PV error codes (see :meth:`AlarmConditions.observe_pv`)."""


def pv_error_alarm(device: str, word: int) -> DeviceAlarm | None:
    """The sensor alarm a PV word (1000h) stands for, or None for a temperature."""
    if word in PV_ERRORS:
        return DeviceAlarm(device, f"0x{word:04X}", PV_ERRORS[word])
    return None


def system_alarm_code(bits: list[bool]) -> str | None:
    """The code of the system alarm in status bits read from ``BIT_AT_LED``, None if it is off.

    The code is the first lamp lit (the alarm that tripped), else ``"SYS"``.
    """
    if not bits[BIT_SYSTEM_ALARM - BIT_AT_LED]:
        return None
    lamps = [n for n, b, _m in LAMPS if bits[b - BIT_AT_LED]]
    return lamps[0] if lamps else "SYS"


@dataclass(frozen=True)
class _Stop:
    """An alarm that ends a settle: latched as event number ``number``."""

    number: int
    code: str
    message: str


class AlarmConditions:
    """The alarm conditions one controller shows, latched once each into ``latch``.

    The driver feeds it every PV word, LED word and status bits it reads; alarms that end a
    settle (sensor errors, the system alarm) are also remembered with their event numbers.
    """

    def __init__(self, device: str, latch: AlarmLatch, clock: Clock) -> None:
        self.device = device
        self.latch = latch
        self.clock = clock
        self.present: set[str] = set()  # alarm conditions the last reads showed
        self._stops: deque[_Stop] = deque(maxlen=256)

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
        if present and key not in self.present:
            self.present.add(key)
            self.latch.latch(code, message, self.clock.wall(), severity)
            if stops:
                self._stops.append(_Stop(self.latch.count, code, message))
        elif not present and key in self.present:
            self.present.discard(key)
            log.info("%s: %s no longer reported", self.device, key)

    def _lamp(self, lamp: str, on: bool) -> None:
        self._condition(f"lamp:{lamp}", on, lamp, f"alarm {lamp[-1]} acting")

    def observe_pv(self, word: int) -> None:
        """A PV word (1000h) was read: latch or forget the sensor errors."""
        if word not in PV_ERRORS and not self.present.intersection(_PV_KEYS):
            return  # the common case, on every PV read: a temperature and no error pending
        for code, meaning in PV_ERRORS.items():
            text = f"0x{code:04X}"
            severity = Severity.MINOR if code == 0x8002 else Severity.MAJOR
            self._condition(f"pv:{text}", word == code, text, meaning, severity, stops=True)

    def observe_leds(self, word: int) -> None:
        """The LED word was read: latch or forget the alarm lamps."""
        for lamp, _bit, mask in LAMPS:
            self._lamp(lamp, bool(word & mask))

    def observe_bits(self, address: int, bits: list[bool]) -> None:
        """Bits ``address``.. were read: latch or forget the lamps and the system alarm."""
        seen = dict(zip(range(address, address + len(bits)), bits, strict=True))
        lit: list[str] = []
        for lamp, bit, _mask in LAMPS:
            if bit in seen:
                self._lamp(lamp, seen[bit])
            if seen.get(bit, f"lamp:{lamp}" in self.present):
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

    def stopping_alarm(self, cursor: int, pv_word: int, bits: list[bool]) -> DeviceAlarm | None:
        """The alarm that ends a settle: latched since ``cursor`` by any reader, or acting now
        (in ``pv_word`` and the status ``bits`` read from ``BIT_AT_LED``)."""
        for stop in self._stops:
            if stop.number > cursor:
                return DeviceAlarm(self.device, stop.code, stop.message)
        sensor = pv_error_alarm(self.device, pv_word)
        if sensor is not None:
            return sensor
        code = system_alarm_code(bits)
        if code is not None:
            return DeviceAlarm(self.device, code, "system alarm acting: outputs are off")
        return None
