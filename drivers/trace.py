"""A byte-level trace of a serial line: every byte in and out, timestamped, replayable.

A :class:`ByteTrace` records what a transport sends (``tx``), receives (``rx``) and notes about the
line (``note``: timeouts, reconnects, framing errors). It can be written to a JSON-lines file and
read back. A saved trace doubles as a test: :class:`ReplayStream` plays the device side of the
recording back to a driver and fails loudly the moment the driver sends something else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .streams import ByteInbox

__all__ = ["ByteTrace", "ReplayMismatch", "ReplayStream", "TraceEntry"]

Direction = Literal["tx", "rx", "note"]


@dataclass(frozen=True)
class TraceEntry:
    """One event on the line."""

    t: float
    device: str
    direction: Direction
    data: bytes = b""
    note: str = ""

    def to_json(self) -> str:
        record: dict[str, object] = {
            "t": round(self.t, 6),
            "dev": self.device,
            "dir": self.direction,
        }
        if self.data:
            record["hex"] = self.data.hex()
        if self.note:
            record["note"] = self.note
        return json.dumps(record)

    @classmethod
    def from_json(cls, line: str) -> TraceEntry:
        record = json.loads(line)
        return cls(
            t=float(record["t"]),
            device=str(record.get("dev", "")),
            direction=record["dir"],
            data=bytes.fromhex(record.get("hex", "")),
            note=str(record.get("note", "")),
        )


class ByteTrace:
    """Keeps the last ``limit`` line events in memory and optionally appends them to a file."""

    def __init__(self, limit: int = 10_000, path: str | Path | None = None) -> None:
        self.limit = limit
        self._entries: list[TraceEntry] = []
        self._path = Path(path) if path is not None else None
        self._file = self._path.open("a", encoding="utf-8") if self._path is not None else None

    def add(self, entry: TraceEntry) -> None:
        self._entries.append(entry)
        if len(self._entries) > self.limit:
            del self._entries[: len(self._entries) - self.limit]
        if self._file is not None:
            self._file.write(entry.to_json() + "\n")
            self._file.flush()

    def record(
        self, t: float, device: str, direction: Direction, data: bytes = b"", note: str = ""
    ) -> None:
        self.add(TraceEntry(t, device, direction, bytes(data), note))

    def __iter__(self) -> Iterator[TraceEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, device: str | None = None) -> list[TraceEntry]:
        return [e for e in self._entries if device is None or e.device == device]

    def save(self, path: str | Path) -> None:
        with Path(path).open("w", encoding="utf-8") as f:
            for entry in self._entries:
                f.write(entry.to_json() + "\n")

    @staticmethod
    def load(path: str | Path) -> list[TraceEntry]:
        with Path(path).open(encoding="utf-8") as f:
            return [TraceEntry.from_json(line) for line in f if line.strip()]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ReplayMismatch(AssertionError):
    """A driver sent bytes other than those in the recorded trace."""


class ReplayStream:
    """The device side of a recorded trace, as a :class:`~kiboauto.drivers.streams.ByteStream`.

    Each write must equal the next recorded ``tx`` bytes (concatenated, so chunking does not
    matter); after a complete request, the recorded ``rx`` bytes that followed it are served.
    """

    def __init__(self, entries: list[TraceEntry]) -> None:
        self._steps: list[tuple[bytes, bytes]] = []
        tx, rx = bytearray(), bytearray()
        for entry in entries:
            if entry.direction == "tx":
                if rx:
                    self._steps.append((bytes(tx), bytes(rx)))
                    tx, rx = bytearray(), bytearray()
                tx.extend(entry.data)
            elif entry.direction == "rx":
                rx.extend(entry.data)
        if tx or rx:
            self._steps.append((bytes(tx), bytes(rx)))
        self._pending_tx = bytearray()
        self._out = ByteInbox()
        self._closed = False

    @property
    def remaining(self) -> int:
        """Recorded request/reply steps not yet played."""
        return len(self._steps)

    async def read(self, max_bytes: int = 4096) -> bytes:
        return await self._out.take(max_bytes, lambda: self._closed)

    async def write(self, data: bytes) -> None:
        self._pending_tx.extend(data)
        if not self._steps:
            raise ReplayMismatch(f"driver sent {bytes(self._pending_tx)!r} after the trace ended")
        expected_tx, reply = self._steps[0]
        if not expected_tx.startswith(bytes(self._pending_tx)):
            raise ReplayMismatch(
                f"driver sent {bytes(self._pending_tx)!r}, trace expects {expected_tx!r}"
            )
        if len(self._pending_tx) == len(expected_tx):
            self._steps.pop(0)
            self._pending_tx.clear()
            self._out.feed(reply)

    async def close(self) -> None:
        self._closed = True
        self._out.wake()

    @property
    def closed(self) -> bool:
        return self._closed
