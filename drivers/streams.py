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
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AsyncioByteStream",
    "ByteStream",
    "Connector",
    "MemoryPipe",
    "ThreadedSerialStream",
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


class ByteInbox:
    """Bytes received and not yet read, with end-of-file: the reading half of a stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data = asyncio.Event()
        self.eof = False

    def feed(self, data: bytes) -> None:
        self._buffer.extend(data)
        self._data.set()

    def feed_eof(self) -> None:
        self.eof = True
        self._data.set()

    def wake(self) -> None:
        """Let a waiting reader look again (e.g. because the stream was closed)."""
        self._data.set()

    async def take(self, max_bytes: int, closed: Callable[[], bool]) -> bytes:
        """Up to ``max_bytes`` (waiting for at least one); ``b""`` at end of file or once closed."""
        while not self._buffer:
            if self.eof or closed():
                return b""
            self._data.clear()
            await self._data.wait()
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return chunk


class _PipeEnd:
    """One end of a :class:`MemoryPipe`."""

    in_process = True  # no kernel between the ends: virtual time may jump while bytes wait

    def __init__(self, label: str) -> None:
        self.label = label
        self.inbox = ByteInbox()
        self._closed = False
        self.peer: _PipeEnd | None = None

    async def read(self, max_bytes: int = 4096) -> bytes:
        return await self.inbox.take(max_bytes, lambda: self._closed)

    async def write(self, data: bytes) -> None:
        if self._closed or self.peer is None or self.peer._closed:
            raise ConnectionResetError(f"memory pipe {self.label}: other end closed")
        self.peer.inbox.feed(bytes(data))
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.inbox.wake()
        if self.peer is not None:
            self.peer.inbox.feed_eof()

    @property
    def closed(self) -> bool:
        return self._closed or self.inbox.eof


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


class ThreadedSerialStream:
    """A :class:`ByteStream` over a blocking pyserial port, for URLs pyserial-asyncio-fast cannot
    drive (``rfc2217://``: it needs ``write_timeout`` support, which the RFC 2217 client lacks).

    One dedicated reader thread per port hands bytes to the event loop; writes run in the loop's
    default executor. The thread ends when the stream is closed.
    """

    def __init__(self, port: Any) -> None:
        self._port = port
        self._inbox = ByteInbox()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read_forever, name=f"serial:{port.port}")
        self._thread.daemon = True
        self._thread.start()

    def _read_forever(self) -> None:
        while not self._closed:
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except Exception:
                break
            if chunk:
                self._loop.call_soon_threadsafe(self._inbox.feed, chunk)
        self._loop.call_soon_threadsafe(self._inbox.feed_eof)

    async def read(self, max_bytes: int = 4096) -> bytes:
        return await self._inbox.take(max_bytes, lambda: self._closed)

    async def write(self, data: bytes) -> None:
        if self._closed or self._inbox.eof:
            raise ConnectionResetError("serial port is closed")
        try:
            await self._loop.run_in_executor(None, self._port.write, data)
        except Exception as e:
            raise ConnectionResetError(f"write failed: {e}") from e

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._loop.run_in_executor(None, self._port.close)
        await self._loop.run_in_executor(None, self._thread.join, 2.0)

    @property
    def closed(self) -> bool:
        return self._closed or self._inbox.eof


async def open_serial_stream(
    url: str, *, baudrate: int = 9600, exclusive: bool = True, **serial_options: Any
) -> ByteStream:
    """Open a serial port by pyserial URL (device path, ``socket://``, ``rfc2217://``)."""
    import serial
    import serial_asyncio_fast

    if url.startswith("rfc2217://"):
        loop = asyncio.get_running_loop()
        port = await loop.run_in_executor(
            None,
            lambda: serial.serial_for_url(url, baudrate=baudrate, timeout=0.05, **serial_options),
        )
        return ThreadedSerialStream(port)

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
