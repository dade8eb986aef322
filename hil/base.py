"""What every HIL simulator shares: byte handling on a line, fault injection, owned serve tasks.

A simulator is hardware: it receives bytes, answers with the bytes the real device would send, and
its physics advance with the injected clock (lazily, from the time of the last look). It never
imports the engine. Subclasses implement :meth:`Simulator.handle_bytes` (framing + command
semantics) and :meth:`Simulator.raise_alarm` (what the device does when it faults).

Lines behave like UART lines, not like one shared buffer:

* every connection (the pty's client session, each TCP or RFC 2217 client, each memory pipe) has
  its own receive state (:class:`LineState`); :meth:`Simulator.serve` binds it around each
  :meth:`Simulator.handle_bytes` call, which is synchronous, so connections never interleave
  inside a frame. A partial frame left by one client cannot corrupt another client's requests;
* a stream may refuse a reply nobody reads by raising :class:`Overrun` from ``write``: the reply
  is dropped and counted in :attr:`Simulator.overruns`, and the simulator never blocks on a
  client that does not read (see ``hil/ptyport.py`` for the bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from kiboauto.clock import Clock, RealClock
from kiboauto.drivers.streams import ByteStream, Connector, MemoryPipe

__all__ = [
    "MAX_FAULT_SECONDS",
    "MAX_GARBAGE_SIZE",
    "Fault",
    "FaultInjector",
    "FaultKind",
    "LineState",
    "Overrun",
    "Simulator",
]

log = logging.getLogger(__name__)

#: longest delay or hang-up a fault may ask for (s)
MAX_FAULT_SECONDS = 3600.0
#: most random bytes a ``garbage`` fault may send instead of one reply
MAX_GARBAGE_SIZE = 65536
#: how many applied faults :attr:`FaultInjector.applied` keeps (oldest dropped first)
APPLIED_HISTORY = 1000


class FaultKind(StrEnum):
    """The line and device faults a rig can inject."""

    DROP = "drop"  # swallow the reply
    DELAY = "delay"  # send the reply ``seconds`` late (past the caller's timeout)
    CORRUPT = "corrupt"  # flip one byte of the reply
    HANGUP = "hangup"  # hang up the line; it comes back after ``seconds``
    ALARM = "alarm"  # the device raises its own alarm ``alarm``
    GARBAGE = "garbage"  # send ``size`` random bytes instead of the reply


def _integer(data: dict[str, Any], key: str, default: int, low: int, high: int | None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"fault setting {key} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"fault setting {key} must be an integer, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"fault setting {key} must be an integer, got {value!r}")
    result = int(number)
    if result < low or (high is not None and result > high):
        span = f">= {low}" if high is None else f"{low}..{high}"
        raise ValueError(f"fault setting {key} must be {span}, got {result}")
    return result


def _seconds(data: dict[str, Any]) -> float:
    value = data.get("seconds", 5.0)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"fault setting seconds must be a number, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"fault setting seconds must be a number, got {value!r}") from None
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_FAULT_SECONDS:
        raise ValueError(
            f"fault setting seconds must be finite and 0..{MAX_FAULT_SECONDS:g}, got {value!r}"
        )
    return seconds


@dataclass
class Fault:
    """One injected fault: ``count`` replies hit (0: until cleared) after ``skip`` good ones.

    Limits (checked by :meth:`from_dict`): ``count`` >= 0, ``skip`` >= 0, ``seconds`` finite and
    0..3600, ``size`` 1..65536 bytes.
    """

    kind: FaultKind
    count: int = 1
    skip: int = 0
    seconds: float = 5.0
    alarm: str = ""
    size: int = 8192

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """A fault from a rig file or a control message; ValueError names the bad setting."""
        if not isinstance(data, dict):
            raise ValueError(f"a fault is a mapping such as {{kind: drop}}, got {data!r}")
        known = {"kind", "count", "skip", "seconds", "alarm", "size"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown fault setting(s) {sorted(map(str, unknown))}; known: {sorted(known)}"
            )
        try:
            kind = FaultKind(data["kind"])
        except (KeyError, ValueError, TypeError):
            raise ValueError(
                f"fault needs kind: one of {[k.value for k in FaultKind]}, got {data.get('kind')!r}"
            ) from None
        alarm = data.get("alarm", "")
        if not isinstance(alarm, str | int) or isinstance(alarm, bool) or len(str(alarm)) > 64:
            raise ValueError(f"fault setting alarm must be a short name or code, got {alarm!r}")
        return cls(
            kind=kind,
            count=_integer(data, "count", 1, 0, None),
            skip=_integer(data, "skip", 0, 0, None),
            seconds=_seconds(data),
            alarm=str(alarm),
            size=_integer(data, "size", 8192, 1, MAX_GARBAGE_SIZE),
        )


@dataclass
class FaultInjector:
    """Pending line faults of one simulator, applied to its replies in order.

    ``applied`` keeps the kinds of the last :data:`APPLIED_HISTORY` faults applied.
    """

    pending: list[Fault] = field(default_factory=list)
    applied: list[FaultKind] = field(default_factory=list)

    def inject(self, fault: Fault) -> None:
        self.pending.append(fault)

    def clear(self) -> None:
        self.pending.clear()

    def next_for_reply(self) -> Fault | None:
        """The fault to apply to the next reply, if any (consumes counts)."""
        for fault in self.pending:
            if fault.kind == FaultKind.ALARM:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.pending.remove(fault)
            self.applied.append(fault.kind)
            if len(self.applied) > APPLIED_HISTORY:
                del self.applied[: len(self.applied) - APPLIED_HISTORY]
            return fault
        return None


class Overrun(Exception):
    """Raised by a stream's ``write`` when it dropped a reply nobody is reading (line overrun)."""


@dataclass
class LineState:
    """The receive state of one connection: its partial frame and when bytes last arrived."""

    rx: bytearray = field(default_factory=bytearray)
    last_rx: float = -math.inf
    epoch: int = 0


class Simulator(ABC):
    """A behaviour model of one device that speaks its wire protocol byte for byte."""

    protocol: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def __init__(self, name: str, clock: Clock | None = None, *, seed: int = 0) -> None:
        self.name = name
        self.clock: Clock = clock or RealClock()
        self.faults = FaultInjector()
        self.random = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._dead_until = float("-inf")
        self._epoch = 0
        self._own_line = LineState()
        self._line = self._own_line
        self.received = 0
        self.replies = 0
        self.overruns = 0  # replies dropped because nobody read them
        self.sessions = 0  # connections, and clients that opened the pty, so far

    # -- to implement ----------------------------------------------------------------------------
    @abstractmethod
    def handle_bytes(self, data: bytes) -> list[bytes]:
        """Consume received bytes; return the replies (each a complete frame) to send, in order.

        Received bytes accumulate in :attr:`_rx`, the receive buffer of the connection being
        served (a direct call uses the simulator's own line).
        """

    @abstractmethod
    def raise_alarm(self, alarm: str) -> None:
        """Put the device in the named alarm state, as the real device would report it."""

    @classmethod
    def check_alarm(cls, alarm: str) -> None:
        """Raise ValueError if ``alarm`` is not an alarm this device knows (default: any)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Settings shown in ``hil serve``'s JSON line (address, baud rate, ...)."""
        return {}

    def truth(self) -> dict[str, Any]:
        """Ground truth now, as a JSON-serialisable dict (subclasses add the device's state).

        This is what the hardware really did, read past the wire protocol: counters the host
        cannot clear, the true physical state. The physics are advanced to ``clock.now()`` first.
        """
        return {
            "protocol": self.protocol,
            "kind": self.kind,
            "clock_s": self.clock.now(),
            "line": self.line_stats(),
        }

    def line_stats(self) -> dict[str, Any]:
        """Counters of the line: bytes received, replies sent, replies dropped unread, sessions."""
        return {
            "received_bytes": self.received,
            "replies": self.replies,
            "overruns": self.overruns,
            "sessions": self.sessions,
            "line_dead": self.line_dead,
        }

    # -- the receive buffer of the connection being served ---------------------------------------
    @property
    def _rx(self) -> bytearray:
        """Received bytes not yet framed, on the connection being served."""
        return self._line.rx

    def reset_line(self) -> None:
        """Forget partial frames on every connection (a hang-up, a power cycle)."""
        self._epoch += 1
        self._line.rx.clear()
        self._own_line.rx.clear()

    def handle_on(self, line: LineState, data: bytes) -> list[bytes]:
        """:meth:`handle_bytes` with ``line`` as the receive state (one connection's)."""
        if line.epoch != self._epoch:
            line.rx.clear()
            line.epoch = self._epoch
        saved, self._line = self._line, line
        try:
            return self.handle_bytes(data)
        finally:
            self._line = saved

    # -- faults ----------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        """Inject a fault now (alarms take effect at once; line faults on the next reply)."""
        if fault.kind == FaultKind.ALARM:
            self.raise_alarm(fault.alarm)
        else:
            self.faults.inject(fault)

    @property
    def line_dead(self) -> bool:
        return self.clock.now() < self._dead_until

    # -- serving a line --------------------------------------------------------------------------
    async def serve(self, stream: ByteStream) -> None:
        """Answer on ``stream`` until it closes, applying injected faults to replies.

        The connection gets its own :class:`LineState`; a stream with a ``session`` attribute (a
        pty) starts a fresh one whenever that number changes (a new client opened the port).
        """
        line = LineState(epoch=self._epoch)
        session = getattr(stream, "session", None)
        if session is None:
            self.sessions += 1  # a connection; a pty counts the clients that open it (below)
        try:
            while True:
                data = await stream.read(4096)
                if not data:
                    return
                now_session = getattr(stream, "session", None)
                if now_session != session:
                    session = now_session
                    line = LineState(epoch=self._epoch)
                    self.sessions += 1
                if self.line_dead:
                    continue  # a dead line hears nothing
                self.received += len(data)
                for reply in self.handle_on(line, data):
                    if not await self._send(stream, reply):
                        return
        except (ConnectionError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def _write(self, stream: ByteStream, data: bytes) -> None:
        try:
            await stream.write(data)
        except Overrun:
            self.overruns += 1
            if self.overruns in (1, 10, 100) or self.overruns % 1000 == 0:
                log.info("%s: %d replies dropped unread (line overrun)", self.name, self.overruns)
            return
        self.replies += 1

    async def _send(self, stream: ByteStream, reply: bytes) -> bool:
        """Send one reply through the fault injector; False when the line was hung up."""
        fault = self.faults.next_for_reply()
        if fault is None:
            await self._write(stream, reply)
        elif fault.kind == FaultKind.DROP:
            pass
        elif fault.kind == FaultKind.DELAY:
            await self.clock.sleep(fault.seconds)
            await self._write(stream, reply)
        elif fault.kind == FaultKind.CORRUPT:
            if reply:
                i = self.random.randrange(len(reply))
                reply = reply[:i] + bytes([reply[i] ^ 0x5A]) + reply[i + 1 :]
            await self._write(stream, reply)
        elif fault.kind == FaultKind.GARBAGE:
            await self._write(stream, self.random.randbytes(fault.size))
        elif fault.kind == FaultKind.HANGUP:
            self._dead_until = self.clock.now() + fault.seconds
            self.reset_line()
            return False
        return True

    def start_serving(self, stream: ByteStream) -> asyncio.Task[None]:
        """Serve ``stream`` in a task owned by this simulator (awaited by :meth:`aclose`)."""
        task = asyncio.get_running_loop().create_task(self.serve(stream), name=f"sim:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def memory_connector(self) -> Connector:
        """A connector that wires a driver to this simulator in-process, through a memory pipe.

        Each call is a fresh "cable": while the line is hung up the cable is dead (it opens, but
        nothing answers), as with a real device that is off.
        """

        async def connect() -> ByteStream:
            pipe = MemoryPipe(self.name)
            self.start_serving(pipe.device)
            return pipe.host

        return connect

    async def aclose(self) -> None:
        """Stop every serve task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
