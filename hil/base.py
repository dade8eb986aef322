"""What every HIL simulator shares: byte handling on a line, fault injection, owned serve tasks.

A simulator is hardware: it receives bytes, answers with the bytes the real device would send, and
its physics advance with the injected clock (lazily, from the time of the last look). It never
imports the engine. Subclasses implement :meth:`Simulator.handle_bytes` (framing + command
semantics) and :meth:`Simulator.raise_alarm` (what the device does when it faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from kiboauto.clock import Clock, RealClock
from kiboauto.drivers.streams import ByteStream, Connector, MemoryPipe

__all__ = ["Fault", "FaultInjector", "FaultKind", "Simulator"]


class FaultKind(StrEnum):
    """The line and device faults a rig can inject."""

    DROP = "drop"  # swallow the reply
    DELAY = "delay"  # send the reply ``seconds`` late (past the caller's timeout)
    CORRUPT = "corrupt"  # flip one byte of the reply
    HANGUP = "hangup"  # hang up the line; it comes back after ``seconds``
    ALARM = "alarm"  # the device raises its own alarm ``alarm``
    GARBAGE = "garbage"  # send ``size`` random bytes instead of the reply


@dataclass
class Fault:
    """One injected fault: ``count`` replies hit (0: until cleared) after ``skip`` good ones."""

    kind: FaultKind
    count: int = 1
    skip: int = 0
    seconds: float = 5.0
    alarm: str = ""
    size: int = 8192

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        known = {"kind", "count", "skip", "seconds", "alarm", "size"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s) {sorted(unknown)}; known: {sorted(known)}")
        try:
            kind = FaultKind(data["kind"])
        except (KeyError, ValueError):
            raise ValueError(
                f"fault needs kind: one of {[k.value for k in FaultKind]}, got {data.get('kind')!r}"
            ) from None
        return cls(
            kind=kind,
            count=int(data.get("count", 1)),
            skip=int(data.get("skip", 0)),
            seconds=float(data.get("seconds", 5.0)),
            alarm=str(data.get("alarm", "")),
            size=int(data.get("size", 8192)),
        )


@dataclass
class FaultInjector:
    """Pending line faults of one simulator, applied to its replies in order."""

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
            return fault
        return None


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
        self.received = 0
        self.replies = 0

    # -- to implement ----------------------------------------------------------------------------
    @abstractmethod
    def handle_bytes(self, data: bytes) -> list[bytes]:
        """Consume received bytes; return the replies (each a complete frame) to send, in order."""

    @abstractmethod
    def raise_alarm(self, alarm: str) -> None:
        """Put the device in the named alarm state, as the real device would report it."""

    def reset_line(self) -> None:  # noqa: B027 - optional hook
        """Forget any partial frame (called when a connection opens or hangs up)."""

    def describe(self) -> dict[str, Any]:
        """Settings shown in ``hil serve``'s JSON line (address, baud rate, ...)."""
        return {}

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
        """Answer on ``stream`` until it closes, applying injected faults to replies."""
        self.reset_line()
        try:
            while True:
                data = await stream.read(4096)
                if not data:
                    return
                if self.line_dead:
                    continue  # a dead line hears nothing
                self.received += len(data)
                for reply in self.handle_bytes(data):
                    if not await self._send(stream, reply):
                        return
        except (ConnectionError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def _send(self, stream: ByteStream, reply: bytes) -> bool:
        """Send one reply through the fault injector; False when the line was hung up."""
        fault = self.faults.next_for_reply()
        if fault is None:
            await stream.write(reply)
        elif fault.kind == FaultKind.DROP:
            pass
        elif fault.kind == FaultKind.DELAY:
            await self.clock.sleep(fault.seconds)
            await stream.write(reply)
        elif fault.kind == FaultKind.CORRUPT:
            if reply:
                i = self.random.randrange(len(reply))
                reply = reply[:i] + bytes([reply[i] ^ 0x5A]) + reply[i + 1 :]
            await stream.write(reply)
        elif fault.kind == FaultKind.GARBAGE:
            await stream.write(bytes(self.random.randrange(256) for _ in range(fault.size)))
        elif fault.kind == FaultKind.HANGUP:
            self._dead_until = self.clock.now() + fault.seconds
            self.reset_line()
            return False
        self.replies += 1
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
