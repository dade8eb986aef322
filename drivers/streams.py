"""Byte streams: the one thing a driver and a simulator have in common.

A :class:`ByteStream` is a full-duplex byte pipe. Three kinds exist:

* a serial port opened by URL (a pty or ``/dev/ttyUSB0``, ``socket://host:port``,
  ``rfc2217://host:port``) through pyserial-asyncio-fast (:func:`open_serial_stream`);
* an in-memory pipe (:class:`MemoryPipe`) that wires a driver to a simulator in the same process,
  byte for byte, with no file descriptor, so whole protocols can run in virtual time;
* any asyncio ``StreamReader``/``StreamWriter`` pair (:class:`AsyncioByteStream`), e.g. a TCP
  connection accepted by a simulator.

A :data:`Connector` opens a fresh stream each time it is called: the transport calls it again to
reconnect after the line drops.

pyserial-asyncio-fast opens and closes ports in the loop's default executor (a thread); that is the
only thread on this path, and it is the library's, not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AsyncioByteStream",
    "ByteStream",
    "Connector",
    "MemoryPipe",
    "open_serial_stream",
    "serial_connector",
]


@runtime_checkable
class ByteStream(Protocol):
    """A full-duplex byte pipe to a device (or, seen from a simulator, to its host)."""

    async def read(self, max_bytes: int = 4096) -> bytes:
        """Bytes as they arrive (at least one); ``b""`` once the other side has hung up."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


Connector = Callable[[], Awaitable[ByteStream]]


class AsyncioByteStream:
    """A :class:`ByteStream` over an asyncio reader/writer pair (serial port or TCP socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def read(self, max_bytes: int = 4096) -> bytes:
        if self._closed:
            return b""
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._closed or self._writer.is_closing():
            raise ConnectionResetError("stream is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()


class _PipeEnd:
    """One end of a :class:`MemoryPipe`."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._buffer = bytearray()
        self._data = asyncio.Event()
        self._eof = False
        self._closed = False
        self.peer: _PipeEnd | None = None

    def _feed(self, data: bytes) -> None:
        self._buffer.extend(data)
        self._data.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._data.set()

    async def read(self, max_bytes: int = 4096) -> bytes:
        while not self._buffer:
            if self._eof or self._closed:
                return b""
            self._data.clear()
            await self._data.wait()
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return chunk

    async def write(self, data: bytes) -> None:
        if self._closed or self.peer is None or self.peer._closed:
            raise ConnectionResetError(f"memory pipe {self.label}: other end closed")
        self.peer._feed(bytes(data))
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._data.set()
        if self.peer is not None:
            self.peer._feed_eof()

    @property
    def closed(self) -> bool:
        return self._closed or self._eof


class MemoryPipe:
    """Two connected in-memory byte streams: ``host`` (for a driver) and ``device`` (for a sim).

    Bytes written at one end are read at the other, in order, with no copying through the
    kernel; closing one end is seen as end-of-file at the other (a hang-up).
    """

    def __init__(self, label: str = "pipe") -> None:
        self.host = _PipeEnd(f"{label}/host")
        self.device = _PipeEnd(f"{label}/device")
        self.host.peer = self.device
        self.device.peer = self.host


async def open_serial_stream(
    url: str, *, baudrate: int = 9600, exclusive: bool = True, **serial_options: Any
) -> AsyncioByteStream:
    """Open a serial port by pyserial URL (device path, ``socket://``, ``rfc2217://``)."""
    import serial_asyncio_fast

    options: dict[str, Any] = dict(serial_options)
    if "://" not in url:
        options["exclusive"] = exclusive
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=url, baudrate=baudrate, **options
    )
    return AsyncioByteStream(reader, writer)


def serial_connector(url: str, *, baudrate: int = 9600, **serial_options: Any) -> Connector:
    """A :data:`Connector` that (re)opens the serial port at ``url``."""

    async def connect() -> ByteStream:
        return await open_serial_stream(url, baudrate=baudrate, **serial_options)

    return connect
