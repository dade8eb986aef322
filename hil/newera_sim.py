"""A New Era NE-500 / NE-1000 syringe pump that speaks the real bytes (basic and safe mode).

The model: a syringe of known inside diameter and capacity whose plunger moves at the programmed
rate while the pumping program runs. Everything is computed lazily from ``self.clock.now()`` when
bytes arrive (or when a test looks), so hours of pumping cost nothing under a virtual clock.

What it models (see ``docs/protocols/newera.md``): addressing (0-99, ``*``, network command
bursts), basic and safe framing with CRC-16/XMODEM and ``?COM``, the 0.5 s inter-byte time-out of
safe packets, the safe-mode communications time-out alarm, the power-up reset alarm and its
acknowledgement, volume targets, STP pause/stop, volume dispensed per direction, a blocked line
(stall) and the end of the syringe (stall), range checks with ``?OOR`` / ``?NA`` / ``?``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.drivers.newera_wire import (
    CR,
    MAX_SAFE_LENGTH,
    MIN_SAFE_LENGTH,
    RATE_UNITS,
    STX,
    VOLUME_UNITS,
    crc16_xmodem,
    encode_basic_reply,
    encode_reply_data,
    encode_safe_frame,
    format_number,
    number_fits,
    parse_number,
)

from .base import Simulator

__all__ = ["NewEraSim"]

#: plunger speed limits (mm/h). Derived from the NE-1000 rate specification: 1699 mL/h with a
#: 60 mL syringe (26.59 mm) at the top, 0.73 uL/h with a 1 mL syringe (4.699 mm) at the bottom.
MAX_SPEED_MM_H = 1_699_000.0 / (math.pi / 4 * 26.59**2)
MIN_SPEED_MM_H = 0.73 / (math.pi / 4 * 4.699**2)
#: diameters the pump accepts (mm)
MIN_DIAMETER_MM = 0.1
MAX_DIAMETER_MM = 50.0
#: at or below this diameter the volume units are uL, above it mL (manual rule)
UL_UNITS_UP_TO_MM = 14.0
#: incomplete safe packets are dropped after this silence between bytes (s)
INTER_BYTE_TIMEOUT = 0.5
#: a basic line longer than this without CR is thrown away
MAX_LINE = 128
#: how many received commands :attr:`NewEraSim.commands` keeps (oldest dropped first)
COMMAND_HISTORY = 1000
#: how many alarms :attr:`NewEraSim.alarm_history` keeps (oldest dropped first)
ALARM_HISTORY = 1000

_COMMANDS = ("DIA", "RAT", "VOL", "DIR", "RUN", "STP", "DIS", "CLD", "VER", "SAF", "AL")
_ADDR_RE = re.compile(r"(\*|[0-9]{1,2})?(.*)")
_RATE_ARG_RE = re.compile(r"([0-9.]+)(UM|MM|UH|MH)?")
_ALARM_NAMES = {
    "R": "R",
    "RESET": "R",
    "POWER": "R",
    "S": "S",
    "STALL": "S",
    "STALLED": "S",
    "BLOCKED": "S",
    "T": "T",
    "TIMEOUT": "T",
    "E": "E",
    "O": "O",
}


class NewEraSim(Simulator):
    """Behaviour model of an NE-500 / NE-1000 on one serial line.

    ``commands`` keeps the last :data:`COMMAND_HISTORY` commands received (address stripped) and
    ``alarm_history`` the last :data:`ALARM_HISTORY` alarms, so a long run stays bounded.
    """

    protocol: ClassVar[str] = "newera"
    kind: ClassVar[str] = "pump"

    def __init__(
        self,
        name: str,
        clock: Clock | None = None,
        *,
        seed: int = 0,
        address: int = 0,
        model: str = "NE-1000",
        firmware: str | None = None,
        diameter_mm: float = 14.43,
        baudrate: int = 19200,
        syringe_volume_ul: float = 10_000.0,
        fill_ul: float | None = None,
        blocked: bool = False,
        safe_timeout: int = 0,
        power_on_alarm: bool = True,
        stall_delay_s: float = 1.0,
    ) -> None:
        super().__init__(name, clock, seed=seed)
        if not 0 <= int(address) <= 99:
            raise ValueError(f"address must be 0..99, got {address!r}")
        if not MIN_DIAMETER_MM <= float(diameter_mm) <= MAX_DIAMETER_MM:
            raise ValueError(f"diameter_mm must be {MIN_DIAMETER_MM}..{MAX_DIAMETER_MM}")
        if not 0 <= int(safe_timeout) <= 255:
            raise ValueError("safe_timeout must be 0..255 s")
        self.address = int(address)
        self.model = model
        digits = "".join(ch for ch in model if ch.isdigit()) or "1000"
        self.firmware = firmware or f"NE{digits}V3.928"
        self.baudrate = int(baudrate)
        self.capacity_ul = float(syringe_volume_ul)
        self.contents_ul = self.capacity_ul if fill_ul is None else float(fill_ul)
        self.stall_delay_s = float(stall_delay_s)
        # settings kept in the pump's non-volatile memory
        self.diameter_mm = float(diameter_mm)
        self.volume_units = self._units_for(self.diameter_mm)
        self.rate_value = 10.0
        self.rate_units = "UM"
        self.volume_ul = 0.0  # volume to be dispensed; 0 = until stopped
        self.direction = "INF"
        self.safe_timeout = int(safe_timeout)
        self.alarm_enabled = True
        # state
        self.state = "S"  # S stopped, P paused, I infusing, W withdrawing
        self.alarm: str | None = "R" if power_on_alarm else None
        self.infused_ul = 0.0
        self.withdrawn_ul = 0.0
        self.run_done_ul = 0.0
        self.alarm_history: list[str] = ["R"] if power_on_alarm else []
        self.commands: deque[str] = deque(maxlen=COMMAND_HISTORY)
        # ground truth the host cannot clear (CLD clears only the DIS counters)
        self.power_ons = 1
        self.infused_since_power_on_ul = 0.0
        self.withdrawn_since_power_on_ul = 0.0
        self.lifetime_infused_ul = 0.0
        self.lifetime_withdrawn_ul = 0.0
        self._t = self.clock.now()
        self._blocked = bool(blocked)
        self._stall_at = math.inf
        self._comm_deadline: float | None = None

    # -- settings a rig or a test may change --------------------------------------------------
    @property
    def blocked(self) -> bool:
        return self._blocked

    @blocked.setter
    def blocked(self, value: bool) -> None:
        self.advance()
        self._blocked = bool(value)
        self._stall_at = self.clock.now() + self.stall_delay_s if value else math.inf

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "baudrate": self.baudrate,
            "model": self.model,
            "firmware": self.firmware,
            "safe_mode": self.safe_timeout > 0,
            "diameter_mm": self.diameter_mm,
        }

    # -- ground truth ------------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        """Motion, syringe contents, alarms and the volume moved since power-on, advanced to now."""
        self.advance()
        motion = {"I": "infusing", "W": "withdrawing", "P": "paused", "S": "stopped"}[self.state]
        truth = super().truth()
        truth.update(
            {
                "model": self.model,
                "address": self.address,
                "motion": motion,
                "state": self.state,
                "direction": self.direction,
                "rate_ul_min": self.rate_ul_min,
                "target_ul": self.volume_ul,
                "run_done_ul": self.run_done_ul,
                "infused_ul": self.infused_since_power_on_ul,
                "withdrawn_ul": self.withdrawn_since_power_on_ul,
                "lifetime_infused_ul": self.lifetime_infused_ul,
                "lifetime_withdrawn_ul": self.lifetime_withdrawn_ul,
                "dis_infused_ul": self.infused_ul,
                "dis_withdrawn_ul": self.withdrawn_ul,
                "contents_ul": self.contents_ul,
                "capacity_ul": self.capacity_ul,
                "diameter_mm": self.diameter_mm,
                "alarm": self.alarm,
                "last_alarm": self.alarm_history[-1] if self.alarm_history else None,
                "blocked": self._blocked,
                "safe_timeout_s": self.safe_timeout,
                "power_ons": self.power_ons,
                "commands": len(self.commands),
            }
        )
        return truth

    # -- alarms ------------------------------------------------------------------------------
    @classmethod
    def check_alarm(cls, alarm: str) -> None:
        if alarm.strip().upper() not in _ALARM_NAMES:
            known = sorted(k.lower() for k in _ALARM_NAMES)
            raise ValueError(f"unknown New Era alarm {alarm!r}; known: {known}")

    def raise_alarm(self, alarm: str) -> None:
        self.check_alarm(alarm)
        code = _ALARM_NAMES[alarm.strip().upper()]
        self.advance()
        if code == "R":
            self.power_cycle()
            return
        self._alarm(code)

    def power_cycle(self) -> None:
        """Power interrupted and back: program stopped, dispensed volumes cleared, alarm R."""
        self.advance()
        self.state = "S"
        self.run_done_ul = 0.0
        self.infused_ul = 0.0
        self.withdrawn_ul = 0.0
        self.power_ons += 1
        self.infused_since_power_on_ul = 0.0
        self.withdrawn_since_power_on_ul = 0.0
        self._comm_deadline = None
        self.reset_line()
        self._alarm("R")

    def _alarm(self, code: str) -> None:
        self.state = "S"
        self.run_done_ul = 0.0
        self.alarm = code
        self.alarm_history.append(code)
        if len(self.alarm_history) > ALARM_HISTORY:
            del self.alarm_history[: len(self.alarm_history) - ALARM_HISTORY]

    # -- physics -----------------------------------------------------------------------------
    @staticmethod
    def _units_for(diameter_mm: float) -> str:
        return "UL" if diameter_mm <= UL_UNITS_UP_TO_MM else "ML"

    @property
    def area_mm2(self) -> float:
        return math.pi / 4 * self.diameter_mm**2

    @property
    def rate_ul_min(self) -> float:
        return self.rate_value * RATE_UNITS[self.rate_units]

    def _speed_ok(self, rate_ul_min: float) -> bool:
        speed = rate_ul_min * 60.0 / self.area_mm2  # uL = mm^3
        return MIN_SPEED_MM_H * 0.999 <= speed <= MAX_SPEED_MM_H * 1.001

    def advance(self, now: float | None = None) -> None:
        """Bring the model up to ``now`` (protocol time), handling every event on the way."""
        now = self.clock.now() if now is None else now
        for _ in range(8):  # a few events at most can fall in one interval
            if self._t >= now:
                return
            t0 = self._t
            events: list[tuple[float, str]] = []
            if self._comm_deadline is not None:
                events.append((self._comm_deadline, "timeout"))
            rate = self.rate_ul_min / 60.0
            running = self.state in ("I", "W")
            if running:
                left = self.volume_ul - self.run_done_ul if self.volume_ul > 0 else math.inf
                room = (
                    self.contents_ul if self.state == "I" else self.capacity_ul - self.contents_ul
                )
                if self._blocked:
                    events.append((max(t0, self._stall_at), "stall"))
                elif rate > 0:
                    events.append((t0 + max(0.0, left) / rate, "done"))
                    events.append((t0 + max(0.0, room) / rate, "end"))
            when, what = min(events) if events else (math.inf, "")
            t1 = min(now, max(t0, when))
            if running and not self._blocked:
                moved = min(rate * (t1 - t0), max(0.0, left), max(0.0, room))
                self._move(moved)
            self._t = t1
            if when > now:
                return
            if what == "done":
                self.state = "S"
                self.run_done_ul = 0.0
            elif what in ("end", "stall"):
                self._alarm("S")
            elif what == "timeout":
                self._comm_deadline = None
                self._alarm("T")
        self._t = max(self._t, now)

    def _move(self, ul: float) -> None:
        if ul <= 0:
            return
        self.run_done_ul += ul
        if self.state == "I":
            self.infused_ul += ul
            self.infused_since_power_on_ul += ul
            self.lifetime_infused_ul += ul
            self.contents_ul = max(0.0, self.contents_ul - ul)
        else:
            self.withdrawn_ul += ul
            self.withdrawn_since_power_on_ul += ul
            self.lifetime_withdrawn_ul += ul
            self.contents_ul = min(self.capacity_ul, self.contents_ul + ul)

    # -- bytes -------------------------------------------------------------------------------
    def handle_bytes(self, data: bytes) -> list[bytes]:
        now = self.clock.now()
        self.advance(now)
        line = self._line  # this connection's receive state
        if line.rx and line.rx[0] == STX and now - line.last_rx > INTER_BYTE_TIMEOUT:
            line.rx.clear()  # an incomplete safe packet timed out between bytes
        line.last_rx = now
        self._rx.extend(data)
        replies: list[bytes] = []
        while True:
            reply, progressed = self._next_packet()
            if reply is not None:
                replies.append(reply)
            if not progressed:
                return replies

    def _next_packet(self) -> tuple[bytes | None, bool]:
        """Take one packet off the receive buffer: (reply or None, whether bytes were used)."""
        rx = self._rx
        if not rx:
            return None, False
        safe_mode = self.safe_timeout > 0
        if rx[0] == STX:
            if len(rx) < 2:
                return None, False
            length = rx[1]
            if length < MIN_SAFE_LENGTH or length > MAX_SAFE_LENGTH:
                del rx[:2]
                return (self._com_error() if safe_mode else None), True
            total = 1 + length
            if len(rx) < total:
                return None, False
            frame = bytes(rx[:total])
            del rx[:total]
            body = frame[2:-3]
            crc = (frame[-3] << 8) | frame[-2]
            if frame[-1] != 0x03 or crc != crc16_xmodem(body):
                return (self._com_error() if safe_mode else None), True
            return self._packet(body, safe=True), True
        cr = rx.find(bytes([CR]))
        if safe_mode:
            stx = rx.find(bytes([STX]))
            if cr >= 0 and (stx < 0 or cr < stx):
                del rx[: cr + 1]
                return self._com_error(), True  # no STX, no length, no CRC: invalid packet
            if stx > 0:
                del rx[:stx]
                return None, True
            if len(rx) > MAX_LINE:
                rx.clear()
            return None, False
        if cr < 0:
            if len(rx) > MAX_LINE:
                rx.clear()
            return None, False
        line = bytes(rx[:cr])
        del rx[: cr + 1]
        return self._packet(line, safe=False), True

    def _com_error(self) -> bytes:
        return encode_safe_frame(encode_reply_data(self.address, self._status(), "?COM"))

    def _frame(self, text: str, *, safe: bool) -> bytes:
        data = text.encode("ascii")
        return encode_safe_frame(data) if safe else encode_basic_reply(data)

    def _packet(self, raw: bytes, *, safe: bool) -> bytes | None:
        """Carry out one received packet; the framed reply, or None if it was not for us."""
        # The pump strips spaces and control characters and reads upper case.
        text = "".join(chr(b) for b in raw if 0x20 < b < 0x7F).upper()
        segments = [s for s in text.split("*") if s] if "*" in text[1:] else [text]
        if len(segments) > 1:  # network command burst: "<n><command>*<n><command>*..."
            reply = None
            for segment in segments:
                if segment[:1].isdigit():
                    reply = self._one(segment, safe=safe) or reply
            return reply
        return self._one(text, safe=safe)

    def _one(self, text: str, *, safe: bool) -> bytes | None:
        m = _ADDR_RE.fullmatch(text)
        assert m is not None  # the pattern matches any string
        addr, rest = m.group(1), m.group(2)
        target = 0 if addr is None else self.address if addr == "*" else int(addr)
        if target != self.address:
            return None
        self.commands.append(rest)
        if self.safe_timeout > 0:
            self._comm_deadline = self.clock.now() + self.safe_timeout
        # Replies are framed in the communications mode in force when they are sent, whatever
        # the framing of the command: a basic-mode pump answers a safe packet in basic framing,
        # and SAF0 sent as a safe packet is answered in basic framing (as NESP-Lib expects).
        if self.alarm is not None:
            code, self.alarm = self.alarm, None  # reporting the alarm acknowledges it
            text = encode_reply_data(self.address, "A", alarm=code).decode()
            return self._frame(text, safe=self.safe_timeout > 0)
        data = self._command(rest)
        return self._frame(f"{self.address:02d}{self._status()}{data}", safe=self.safe_timeout > 0)

    def _status(self) -> str:
        return self.state

    # -- commands ----------------------------------------------------------------------------
    def _command(self, text: str) -> str:
        if text == "":
            return ""
        name = next((c for c in sorted(_COMMANDS, key=len, reverse=True) if text.startswith(c)), "")
        if not name:
            return "?"
        arg = text[len(name) :]
        handler = getattr(self, f"_cmd_{name.lower()}")
        result: str = handler(arg)
        return result

    @property
    def running(self) -> bool:
        return self.state in ("I", "W")

    def _fmt_volume(self, ul: float) -> str:
        value = ul / VOLUME_UNITS[self.volume_units]
        try:
            return format_number(value)
        except ValueError:
            return "9999"

    @staticmethod
    def _number(arg: str) -> float | str:
        """A number argument, or the error text to answer with."""
        value = parse_number(arg)
        if value is None:
            return "?"
        if not number_fits(arg):
            return "?OOR"
        return value

    def _cmd_dia(self, arg: str) -> str:
        if arg == "":
            return format_number(self.diameter_mm)
        value = self._number(arg)
        if isinstance(value, str):
            return value
        if not MIN_DIAMETER_MM <= value <= MAX_DIAMETER_MM:
            return "?OOR"
        if self.running:
            return "?NA"
        self.diameter_mm = value
        self.volume_units = self._units_for(value)
        return ""

    def _cmd_rat(self, arg: str) -> str:
        if arg == "":
            return f"{format_number(self.rate_value)}{self.rate_units}"
        m = _RATE_ARG_RE.fullmatch(arg)
        if m is None:
            return "?"
        value = self._number(m.group(1))
        if isinstance(value, str):
            return value
        units = m.group(2) or self.rate_units
        if self.running and units != self.rate_units:
            return "?NA"  # rate units cannot change while pumping
        if value <= 0 or not self._speed_ok(value * RATE_UNITS[units]):
            return "?OOR"
        self.advance()
        self.rate_value, self.rate_units = value, units
        return ""

    def _cmd_vol(self, arg: str) -> str:
        if arg == "":
            return f"{self._fmt_volume(self.volume_ul)}{self.volume_units}"
        if arg in VOLUME_UNITS:
            if self.running:
                return "?NA"
            self.volume_units = arg
            return ""
        value = self._number(arg)
        if isinstance(value, str):
            return value
        if self.running:
            return "?NA"
        self.volume_ul = value * VOLUME_UNITS[self.volume_units]
        return ""

    def _cmd_dir(self, arg: str) -> str:
        if arg == "":
            return self.direction
        if arg not in ("INF", "WDR", "REV"):
            return "?NA" if arg == "STK" else "?"
        if self.running:
            return "?NA"
        if arg == "REV":
            arg = "WDR" if self.direction == "INF" else "INF"
        self.direction = arg
        return ""

    def _cmd_run(self, arg: str) -> str:
        if arg not in ("", "1"):
            return "?NA" if arg.isdigit() and 1 <= int(arg) <= 41 else "?"
        if self.running:
            return ""
        if self.state == "S":
            self.run_done_ul = 0.0
        self.state = "I" if self.direction == "INF" else "W"
        self._t = self.clock.now()
        if self._blocked:
            self._stall_at = self.clock.now() + self.stall_delay_s
        return ""

    def _cmd_stp(self, arg: str) -> str:
        if arg:
            return "?"
        if self.running:
            self.state = "P"
        elif self.state == "P":
            self.state = "S"
            self.run_done_ul = 0.0
        return ""

    def _cmd_dis(self, arg: str) -> str:
        if arg:
            return "?NA"
        return (
            f"I{self._fmt_volume(self.infused_ul)}W{self._fmt_volume(self.withdrawn_ul)}"
            f"{self.volume_units}"
        )

    def _cmd_cld(self, arg: str) -> str:
        if arg == "INF":
            self.infused_ul = 0.0
        elif arg == "WDR":
            self.withdrawn_ul = 0.0
        else:
            return "?"
        return ""

    def _cmd_ver(self, arg: str) -> str:
        return "?NA" if arg else self.firmware

    def _cmd_saf(self, arg: str) -> str:
        if arg == "":
            return str(self.safe_timeout)
        if not arg.isdigit():
            return "?"
        value = int(arg)
        if value > 255:
            return "?OOR"
        self.safe_timeout = value
        self._comm_deadline = self.clock.now() + value if value > 0 else None
        return ""

    def _cmd_al(self, arg: str) -> str:
        if arg == "":
            return "1" if self.alarm_enabled else "0"
        if arg not in ("0", "1"):
            return "?OOR"
        self.alarm_enabled = arg == "1"
        return ""
