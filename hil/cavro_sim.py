"""A Cavro XCalibur / XP3000 syringe pump with valve, speaking DT and OEM framing byte for byte.

Behaviour model (see docs/protocols/cavro.md):

* plunger position in increments (3000 per stroke in ``N0``, 24000 in ``N1``), moving with a
  trapezoidal speed profile: start speed ``v``, ramp at ``L * 2500`` pulses/s² up to top speed
  ``V``, ramp down to cutoff speed ``c``; a stroke is 6000 pulses;
* valve: a 3-/4-port valve (``ports`` 3 or 4: I/O/B/E) or a distribution valve (``I<n>``/``O<n>``),
  each move taking a time that grows with the angle turned;
* "not initialised" until ``Z``/``Y``/``W``; errors in two classes (docs/protocols/cavro.md):
  *immediate* errors are found before anything runs and reported in the status byte of the
  answer to the command string itself, which is then not executed at all and leaves no error
  for ``Q``: 2 invalid command, 3 invalid operand, 11 plunger move not allowed (valve in
  bypass), 15 command overflow (a command while busy), 7 not initialised and 1/9/10 (a move
  after an overload, before initialising again). *Execution* errors happen while the string
  runs and are reported by the following answers until a ``Q`` reads them: 9 plunger overload
  (a blocked line), and injected alarms. Option ``deferred_errors=True`` reports 3 and 11 the
  XP 3000 manual's way instead (the string runs up to the bad command; ``Q`` reports it);
* time comes from the injected clock, lazily: nothing runs between two looks at the line.

The pump accepts both framings on the same line and answers in the framing of the command.
Commands to a group address (two, four or all pumps) are carried out without an answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.drivers.cavro_wire import (
    ALL_PUMPS_ADDRESS,
    CR,
    DT_START,
    ETX,
    LF,
    MASTER_ADDRESS,
    PULSES_PER_STROKE,
    SPEED_CODES,
    STATUS_BASE,
    STATUS_READY,
    STEPS_PER_STROKE,
    STX,
)

from .base import Simulator
from .motion import MoveProfile

__all__ = ["CavroSim", "MoveProfile"]

FINE_PER_STROKE = 24000  # internal position unit: 1/24000 of a stroke
PULSES_PER_FINE = PULSES_PER_STROKE / FINE_PER_STROKE
SLOPE_UNIT = 2500.0  # pulses/s² per slope code
MAX_LINE = 300  # bytes without a frame end before the pump drops its input buffer

VALVE_HOME_TIME = 0.5  # s: valve drive homing during Z/Y/W
STALL_TIME = 0.1  # s of motion before a plunger pushing against a blocked line stalls

_TOKEN = re.compile(r"([A-Za-z])(-?\d+(?:,-?\d+)*)?")
_SETTINGS = {"V", "v", "c", "S", "L", "N", "K", "k"}
_PLUNGER = {"A", "a", "P", "p", "D", "d"}
_VALVE = {"I", "O", "B", "E"}
_INIT = {"Z", "Y", "W"}
_ACTIONS = _SETTINGS | _PLUNGER | _VALVE | _INIT | {"M", "z"}
_REPORT_START = set("Q?&#F")
_ALARM_NAMES = {"plunger_overload": 9, "overload": 9, "valve_overload": 10, "init": 1}
_POWER_ALARMS = {"power", "reset", "power_cycle"}


@dataclass
class _Segment:
    t0: float
    t1: float
    kind: str  # "plunger", "valve", "wait", "error"
    pos0: float = 0.0
    pos1: float = 0.0
    profile: MoveProfile | None = None
    valve: int = 0
    error: int = 0
    fatal: int = 0
    init: bool = False
    quiet: bool = False  # lowercase a/p/d: reported "not busy" while moving


@dataclass
class _Settings:
    top: int = 1400
    start: int = 900
    cutoff: int = 900
    slope: int = 14
    resolution: int = 0
    backlash: int = 12
    zero_gap: int = 0

    def copy(self) -> _Settings:
        return _Settings(**self.__dict__)


@dataclass
class _Counters:
    inits: int = 0
    plunger_moves: int = 0
    valve_moves: int = 0
    valve_moves_since_report: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Refuse(Exception):
    """A command string refused at once with this error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class CavroSim(Simulator):
    """Behaviour model of a Cavro XCalibur / XP3000 pump (``protocol = "cavro"``)."""

    protocol: ClassVar[str] = "cavro"
    kind: ClassVar[str] = "pump"

    def __init__(
        self,
        name: str,
        clock: Clock | None = None,
        *,
        seed: int = 0,
        address: int = 1,
        model: str = "XCalibur",
        firmware: str | None = None,
        syringe_volume_ul: float = 250.0,
        ports: int = 9,
        resolution: int = 0,
        baudrate: int = 9600,
        blocked: bool = False,
        deferred_errors: bool = False,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"unknown CavroSim option(s): {sorted(options)}")
        super().__init__(name, clock, seed=seed)
        if not 1 <= address <= 15:
            raise ValueError(f"address must be 1..15, got {address}")
        if not 2 <= ports <= 24:
            raise ValueError(f"ports must be 2..24, got {ports}")
        if resolution not in STEPS_PER_STROKE:
            raise ValueError(f"resolution must be 0 or 1, got {resolution}")
        self.address = address
        self.model = model
        self.firmware = firmware or f"{model} SIM 1.0"
        self.syringe_volume_ul = float(syringe_volume_ul)
        self.ports = ports
        self.baudrate = baudrate
        self.blocked = blocked
        self.deferred_errors = bool(deferred_errors)
        self.settings = _Settings(resolution=resolution)
        self.counters = _Counters()
        self.initialized = False
        self.fatal = 0  # 1, 9 or 10: initialise again before moving
        self.error = 0  # pending error, shown in status bytes until read by Q
        self.position = 0.0  # fine units (1/24000 stroke) at the end of the last finished step
        self.valve = 1
        self.segments: list[_Segment] = []
        self.loaded: list[tuple[str, int | None]] | None = None
        self.last_program: list[tuple[str, int | None]] = []
        # ground truth the host cannot clear: volume through the syringe since power-on, by port
        self.power_ons = 1
        self.dispensed_ul = 0.0  # plunger up: out of the syringe
        self.aspirated_ul = 0.0  # plunger down: into the syringe
        self.by_port: dict[int, dict[str, float]] = {}
        self._last_sequence: int | None = None
        self._addr = 0x30 + address
        s = address - 1
        self._group_addrs = {0x41 + (s & ~1), 0x51 + (s & ~3), ALL_PUMPS_ADDRESS}

    # -- description --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "address_char": chr(self._addr),
            "baudrate": self.baudrate,
            "framing": "DT and OEM (answers in the framing of the command)",
            "model": self.model,
            "syringe_volume_ul": self.syringe_volume_ul,
            "ports": self.ports,
            "resolution": self.settings.resolution,
        }

    # -- time ---------------------------------------------------------------------------------
    def _settle(self) -> float:
        now = self.clock.now()
        while self.segments and self.segments[0].t1 <= now:
            self._finish(self.segments.pop(0))
        return now

    def _finish(self, seg: _Segment) -> None:
        if seg.kind == "plunger":
            self._account(seg.pos0, seg.pos1)
            self.position = seg.pos1
            self.counters.plunger_moves += 1
        elif seg.kind == "valve":
            if seg.valve != self.valve:
                self.counters.valve_moves += 1
                self.counters.valve_moves_since_report += 1
            self.valve = seg.valve
        if seg.init:
            self.initialized = True
            self.fatal = 0
            self.counters.inits += 1
        if seg.error:
            self.error = seg.error
        if seg.fatal:
            self.fatal = seg.fatal

    def _live_position(self) -> float:
        now = self._settle()
        if self.segments and self.segments[0].kind == "plunger":
            seg = self.segments[0]
            assert seg.profile is not None
            travelled = seg.profile.distance(now - seg.t0) / PULSES_PER_FINE
            step = travelled if seg.pos1 >= seg.pos0 else -travelled
            return seg.pos0 + step
        return self.position

    @property
    def busy(self) -> bool:
        self._settle()
        return bool(self.segments) and not self.segments[0].quiet

    @property
    def moving(self) -> bool:
        self._settle()
        return bool(self.segments)

    def steps(self) -> int:
        """Plunger position in increments of the current resolution."""
        scale = FINE_PER_STROKE // STEPS_PER_STROKE[self.settings.resolution]
        return math.floor(self._live_position() / scale + 1e-9)

    def _stop_now(self) -> None:
        """Stop whatever runs (T, overloads): the plunger stays where it is."""
        pos = self._live_position()
        if self.segments:
            if self.segments[0].kind == "plunger":
                self._account(self.segments[0].pos0, pos)
            self.position = pos
            self.segments.clear()

    def _account(self, start: float, end: float) -> None:
        """Add a finished plunger travel to the volume counters (at the current valve port)."""
        ul = abs(end - start) / FINE_PER_STROKE * self.syringe_volume_ul
        if ul <= 0:
            return
        port = self.by_port.setdefault(self.valve, {"dispensed_ul": 0.0, "aspirated_ul": 0.0})
        if end < start:
            self.dispensed_ul += ul
            port["dispensed_ul"] += ul
        else:
            self.aspirated_ul += ul
            port["aspirated_ul"] += ul

    # -- ground truth -------------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        """Plunger, valve, errors and the volume moved since power-on, advanced to now."""
        live = self._live_position()  # settles first
        dispensed, aspirated = self.dispensed_ul, self.aspirated_ul
        moving = self.segments[0] if self.segments else None
        if moving is not None and moving.kind == "plunger":
            ul = abs(live - moving.pos0) / FINE_PER_STROKE * self.syringe_volume_ul
            if live < moving.pos0:
                dispensed += ul
            else:
                aspirated += ul
        motion = "idle" if moving is None else moving.kind
        if moving is not None and moving.kind == "error":
            motion = "idle"
        truth = super().truth()
        truth.update(
            {
                "model": self.model,
                "address": self.address,
                "initialized": self.initialized,
                "busy": self.busy,
                "motion": motion,
                "plunger_steps": self.steps(),
                "plunger_fine": live,
                "plunger_ul": live / FINE_PER_STROKE * self.syringe_volume_ul,
                "resolution": self.settings.resolution,
                "valve_port": self.valve,
                "ports": self.ports,
                "error": self.error,
                "fatal": self.fatal,
                "blocked": self.blocked,
                "dispensed_ul": dispensed,
                "aspirated_ul": aspirated,
                "by_port": {str(p): dict(v) for p, v in sorted(self.by_port.items())},
                "syringe_volume_ul": self.syringe_volume_ul,
                "top_speed": self.settings.top,
                "power_ons": self.power_ons,
                "inits": self.counters.inits,
                "plunger_moves": self.counters.plunger_moves,
                "valve_moves": self.counters.valve_moves,
            }
        )
        return truth

    def power_cycle(self) -> None:
        """Power off and on: motion stops, settings and errors reset, not initialised."""
        self._stop_now()
        self.power_ons += 1
        self.initialized = False
        self.fatal = 0
        self.error = 0
        self.settings = _Settings(resolution=self.settings.resolution)
        self.loaded = None
        self.last_program = []
        self.dispensed_ul = self.aspirated_ul = 0.0
        self.by_port.clear()
        self._last_sequence = None
        self.reset_line()

    # -- alarms -------------------------------------------------------------------------------
    @staticmethod
    def _alarm_code(alarm: str) -> int:
        """The error code an alarm name stands for (0: a power cycle); ValueError if unknown."""
        key = alarm.strip().lower()
        if key in _ALARM_NAMES:
            return _ALARM_NAMES[key]
        if key in _POWER_ALARMS:
            return 0
        if key.isdigit() and 1 <= int(key) <= 15:
            return int(key)
        known = [*_ALARM_NAMES, *sorted(_POWER_ALARMS)]
        raise ValueError(f"unknown Cavro alarm {alarm!r}: an error code 1..15 or one of {known}")

    @classmethod
    def check_alarm(cls, alarm: str) -> None:
        cls._alarm_code(alarm)

    def raise_alarm(self, alarm: str) -> None:
        """``"9"``/``plunger_overload``, ``"10"``/``valve_overload``, ``"1"``/``init``, any code
        1..15 (shown until ``Q`` reads it), or ``power``: a power cycle."""
        code = self._alarm_code(alarm)
        if code == 0:
            self.power_cycle()
            return
        self._stop_now()
        self.error = code
        if code in (1, 9, 10):
            self.fatal = code
        if code == 1:
            self.initialized = False

    # -- bytes --------------------------------------------------------------------------------
    def handle_bytes(self, data: bytes) -> list[bytes]:
        self._rx.extend(data)
        replies: list[bytes] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return replies
            oem, addr, seq, body = frame
            if addr != self._addr and addr not in self._group_addrs:
                continue
            if oem and seq & 0x08 and seq & 0x07 == self._last_sequence:
                answer = self._repeated(body)
            else:
                if oem:
                    self._last_sequence = seq & 0x07
                answer = self._command(body)
            if addr == self._addr:
                replies.append(self._encode(oem, *answer))

    def _next_frame(self) -> tuple[bool, int, int, bytes] | None:
        rx = self._rx
        while True:
            start = next((i for i, b in enumerate(rx) if b in (DT_START, STX)), None)
            if start is None:
                rx.clear()
                return None
            del rx[:start]
            if rx[0] == DT_START:
                end = rx.find(bytes([CR]))
                if end < 0:
                    if len(rx) > MAX_LINE:
                        rx.clear()
                    return None
                frame = bytes(rx[1:end])
                del rx[: end + 1]
                if not frame:
                    continue
                return False, frame[0], 0, frame[1:]
            # OEM: STX addr seq data ETX checksum
            end = rx.find(bytes([ETX]), 3)
            if end < 0 or end + 1 >= len(rx):
                if len(rx) > MAX_LINE:
                    del rx[:1]
                    continue
                return None
            block = bytes(rx[: end + 1])
            checksum = rx[end + 1]
            value = 0
            for b in block:
                value ^= b
            if value != checksum or (block[2] & 0xF0) != 0x30 or not 1 <= block[2] & 0x07 <= 7:
                del rx[:1]  # not a valid block: look for the next STX
                continue
            del rx[: end + 2]
            return True, block[1], block[2], block[3:-1]

    def _encode(self, oem: bool, status: int, data: str) -> bytes:
        payload = data.encode("ascii", "replace")
        if oem:
            block = bytes([STX, MASTER_ADDRESS, status]) + payload + bytes([ETX])
            value = 0
            for b in block:
                value ^= b
            return block + bytes([value])
        return bytes([DT_START, MASTER_ADDRESS, status]) + payload + bytes([ETX, CR, LF])

    def _status(self, error: int | None = None) -> int:
        ready = 0 if self.busy else STATUS_READY  # settles first: errors due by now count
        code = self.error if error is None else error
        return STATUS_BASE | ready | (code & 0x0F)

    # -- command strings ----------------------------------------------------------------------
    def _repeated(self, body: bytes) -> tuple[int, str]:
        """An OEM block sent again with the repeat flag: acknowledge, do not execute again."""
        text = body.decode("ascii", "replace")
        if text[:1] in _REPORT_START and text[:1] != "Q":
            return self._command(body)  # reports are harmless to answer again
        return self._status(), ""

    def _command(self, body: bytes) -> tuple[int, str]:
        if any(b < 0x20 or b > 0x7E for b in body):
            return self._status(2), ""
        text = body.decode("ascii")
        if not text:
            return self._status(), ""
        if text[0] in _REPORT_START:
            return self._report(text[:-1] if text.endswith("R") and len(text) > 1 else text)
        try:
            tokens = self._tokens(text)
        except _Refuse as refuse:
            return self._status(refuse.code), ""
        if tokens and tokens[0][0] == "T":
            self._stop_now()
            return self._status(), ""
        execute = bool(tokens) and tokens[-1][0] == "R"
        if execute:
            tokens = tokens[:-1]
        if any(letter in "RT" for letter, _ in tokens):
            return self._status(2), ""
        if tokens and tokens[0][0] == "X":
            if len(tokens) > 1:
                return self._status(2), ""
            tokens = list(self.last_program)
            execute = True
        if not execute:
            self.loaded = tokens
            return self._status(), ""
        if not tokens:
            if self.loaded is None:
                return self._status(), ""
            tokens, self.loaded = self.loaded, None
        self._settle()
        before = self.error
        try:
            self._run(tokens)
        except _Refuse as refuse:
            # An immediate error: nothing ran, and nothing is left for Q to report.
            return self._status(refuse.code), ""
        self.last_program = tokens
        # An error found while the string runs shows from the next answer on, not in this one.
        ready = 0 if self.busy else STATUS_READY
        return STATUS_BASE | ready | before, ""

    def _tokens(self, text: str) -> list[tuple[str, int | None]]:
        tokens: list[tuple[str, int | None]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise _Refuse(2)
            letter, operand = m.group(1), m.group(2)
            if letter not in _ACTIONS and letter not in "RTX":
                raise _Refuse(2)
            value = None if operand is None else int(operand.split(",")[0])
            tokens.append((letter, value))
            pos = m.end()
        return tokens

    # -- execution ----------------------------------------------------------------------------
    def _valve_target(self, letter: str, n: int | None) -> int | None:
        """Port a valve command goes to; None when the operand is invalid."""
        if self.ports <= 4:
            if n is not None:
                return None
            return "IOBE".index(letter) + 1
        if n is None:
            return 1 if letter == "I" else self.ports
        return n if 1 <= n <= self.ports else None

    def _valve_time(self, src: int, dst: int) -> float:
        if src == dst:
            return 0.05
        if self.ports <= 4:
            return 0.25
        d = abs(dst - src)
        return 0.15 + 0.035 * min(d, self.ports - d)

    def _run(self, tokens: list[tuple[str, int | None]]) -> None:
        now = self._settle()
        if self.segments:
            if all(letter == "V" for letter, _ in tokens):
                valid = [v for _, v in tokens if v is not None and 5 <= v <= 6000]
                if len(valid) < len(tokens) and not self.deferred_errors:
                    raise _Refuse(3)
                for speed in valid:
                    self.settings.top = speed
                return
            raise _Refuse(15)
        # Refused at once: valve letters a 3-port valve lacks, moves before initialisation.
        ready = self.initialized and not self.fatal
        for letter, _ in tokens:
            if letter in _INIT:
                ready = True
            if letter in ("B", "E") and (self.ports > 4 or "IOBE".index(letter) >= self.ports):
                raise _Refuse(2)
            if (letter in _PLUNGER or letter in _VALVE) and not ready:
                raise _Refuse(self.fatal or 7)
        st = self.settings.copy()
        t, pos, valve = now, self.position, self.valve
        segs: list[_Segment] = []

        def fail(code: int, fatal: int = 0) -> None:
            if code in (3, 11) and not self.deferred_errors:
                raise _Refuse(code)  # found before anything runs: the string is refused whole
            segs.append(_Segment(t, t, "error", error=code, fatal=fatal))

        for letter, n in tokens:
            scale = FINE_PER_STROKE // STEPS_PER_STROKE[st.resolution]
            if letter in _INIT:
                if n is not None and n not in (0, 1, 2) and not 10 <= n <= 40:
                    fail(3)
                    break
                speed = SPEED_CODES[n] if n is not None and n >= 10 else SPEED_CODES[11]
                segs.append(_Segment(t, t + VALVE_HOME_TIME, "valve", valve=1))
                t += VALVE_HOME_TIME
                valve = 1
                prof = MoveProfile(pos * PULSES_PER_FINE, st.start, speed, st.cutoff, 14 * 2500.0)
                segs.append(_Segment(t, t + prof.duration, "plunger", pos, 0.0, prof, init=True))
                t += prof.duration
                pos = 0.0
            elif letter in _PLUNGER:
                if n is None or n < 0:
                    fail(3)
                    break
                up = letter.upper()
                target = (
                    n * scale if up == "A" else pos + n * scale if up == "P" else pos - n * scale
                )
                if not 0 <= target <= FINE_PER_STROKE:
                    fail(3)
                    break
                if self.ports in (3, 4) and valve == 3:
                    fail(11)
                    break
                prof = MoveProfile(
                    abs(target - pos) * PULSES_PER_FINE,
                    st.start,
                    st.top,
                    st.cutoff,
                    st.slope * SLOPE_UNIT,
                )
                if self.blocked and target != pos:
                    stall = min(STALL_TIME, prof.duration)
                    moved = prof.distance(stall) / PULSES_PER_FINE
                    end = pos + (moved if target > pos else -moved)
                    segs.append(_Segment(t, t + stall, "plunger", pos, end, prof))
                    t += stall
                    fail(9, fatal=9)
                    break
                quiet = letter.islower()
                segs.append(
                    _Segment(t, t + prof.duration, "plunger", pos, target, prof, quiet=quiet)
                )
                t += prof.duration
                pos = target
            elif letter in _VALVE:
                port = self._valve_target(letter, n)
                if port is None:
                    fail(3)
                    break
                dt = self._valve_time(valve, port)
                segs.append(_Segment(t, t + dt, "valve", valve=port))
                t += dt
                valve = port
            elif letter == "M":
                if n is None or not 0 <= n <= 30000:
                    fail(3)
                    break
                segs.append(_Segment(t, t + n / 1000.0, "wait"))
                t += n / 1000.0
            elif letter == "z":
                pass  # counter resync: our counter never drifts
            elif not self._setting(st, letter, n):
                fail(3)
                break
        self.settings = st
        self.segments = segs
        self._settle()

    @staticmethod
    def _setting(st: _Settings, letter: str, n: int | None) -> bool:
        if n is None:
            return False
        ranges = {
            "V": (5, 6000),
            "v": (50, 1000),
            "c": (50, 2700),
            "S": (0, len(SPEED_CODES) - 1),
            "L": (1, 20),
            "N": (0, 1),
            "K": (0, 31),
            "k": (0, 80 if st.resolution == 0 else 640),
        }
        lo, hi = ranges[letter]
        if not lo <= n <= hi:
            return False
        if letter == "V":
            st.top = n
        elif letter == "v":
            st.start = n
        elif letter == "c":
            st.cutoff = n
        elif letter == "S":
            st.top = SPEED_CODES[n]
        elif letter == "L":
            st.slope = n
        elif letter == "N":
            st.resolution = n
        elif letter == "K":
            st.backlash = n
        else:
            st.zero_gap = n
        return True

    # -- reports ------------------------------------------------------------------------------
    def _report(self, text: str) -> tuple[int, str]:
        if text == "Q":
            status = self._status()
            self.error = 0
            return status, ""
        if text in ("&", "?23"):
            return self._status(), self.firmware
        if text in ("#", "?20"):
            return self._status(), "5A3C"
        if text in ("F", "?10"):
            return self._status(), "1" if self.loaded else "0"
        if not text.startswith("?") or not (text[1:] == "" or text[1:].isdigit()):
            return self._status(2), ""
        which = int(text[1:] or "0")
        st = self.settings
        values: dict[int, Any] = {
            0: lambda: self.steps(),
            1: lambda: st.start,
            2: lambda: st.top,
            3: lambda: st.cutoff,
            4: lambda: self.steps(),
            6: self._valve_report,
            12: lambda: st.backlash,
            13: lambda: 0,
            14: lambda: 0,
            15: lambda: self.counters.inits,
            16: lambda: self.counters.plunger_moves,
            17: lambda: self.counters.valve_moves,
            18: self._valve_moves_since,
            24: lambda: st.zero_gap,
        }
        if which not in values:
            return self._status(2), ""
        value = values[which]()
        return self._status(), str(value)

    def _valve_report(self) -> str:
        self._settle()
        if self.ports <= 4:
            return "iobe"[self.valve - 1]
        return str(self.valve)

    def _valve_moves_since(self) -> int:
        self._settle()
        n = self.counters.valve_moves_since_report
        self.counters.valve_moves_since_report = 0
        return n
