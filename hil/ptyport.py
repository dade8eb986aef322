"""Pseudo-terminals (and TCP sockets) that put a simulator where a client expects a serial port.

A :class:`PtyPort` is a pty pair: the client opens the slave path (``/dev/pts/N``) exactly as it
would open ``/dev/ttyUSB0``; the simulator reads and writes the master side. The simulator keeps its
own slave descriptor open so the master never sees EIO when a client closes the port, and both sides
are raw (no echo, no line editing, 8 bits).

Limits of a pty, compared with a UART: no modem lines (CTS/DTR ioctls fail) and no baud timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import tty

from kiboauto.drivers.streams import AsyncioByteStream

from .base import Simulator

__all__ = ["PtyPort", "PtyStream", "TcpPort"]


class PtyStream:
    """The master side of a pty as a byte stream (non-blocking fd driven by the event loop)."""

    def __init__(self, master_fd: int) -> None:
        self._fd = master_fd
        self._closed = False

    async def read(self, max_bytes: int = 4096) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                return os.read(self._fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: no slave open right now; wait for one
                    raise
                await asyncio.sleep(0.05)
                continue
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self._fd)
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
                view = view[n:]
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self._fd)

    async def close(self) -> None:
        # The pty belongs to the PtyPort; a closing session only stops reading.
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class PtyPort:
    """A pty whose slave path is the serial port a client opens; the simulator owns the master."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.master_fd, self.slave_fd = os.openpty()
        for fd in (self.master_fd, self.slave_fd):
            tty.setraw(fd, termios.TCSANOW)
            attrs = termios.tcgetattr(fd)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self.slave_fd)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self.simulator.start_serving(_Resilient(self.master_fd, self.simulator))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Resilient(PtyStream):
    """A pty stream for :meth:`Simulator.serve` that survives "hang-ups".

    A pty cannot really be unplugged; a hang-up makes the simulator deaf and mute for the fault's
    duration (a pulled cable), after which it answers again on the same path.
    """

    def __init__(self, fd: int, simulator: Simulator) -> None:
        super().__init__(fd)
        self._sim = simulator

    async def close(self) -> None:
        if self._sim.line_dead:
            # Serve again on the same fd once the caller's serve loop has returned.
            asyncio.get_running_loop().call_soon(self._restart)
            return
        await super().close()

    def _restart(self) -> None:
        self._sim.start_serving(_Resilient(self._fd, self._sim))


class TcpPort:
    """A TCP listener on 127.0.0.1 (``socket://127.0.0.1:PORT``) served by a simulator."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    async def start(self) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.simulator.line_dead:
                writer.close()
                return
            await self.simulator.serve(AsyncioByteStream(reader, writer))

        self._server = await asyncio.start_server(on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


class _LineSettings:
    """What an RFC 2217 client may set or read on the far serial port.

    A simulated device has no UART: settings are remembered and reported back, and the modem lines
    read as asserted (CTS, DSR, CD high; RI low), which is what a device that is on looks like.
    """

    def __init__(self, baudrate: int) -> None:
        self.baudrate = baudrate
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.rtscts = False
        self.xonxoff = False
        self.break_condition = False
        self.dtr = True
        self.rts = True
        self.cts = True
        self.dsr = True
        self.ri = False
        self.cd = True

    def reset_input_buffer(self) -> None:
        """Nothing is buffered on a simulated line."""

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on a simulated line."""


class _NegotiationReplies:
    """Where pyserial's port manager writes its Telnet answers (a synchronous ``write``)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class _Rfc2217Stream:
    """A client connection speaking RFC 2217 (Telnet COM port control), seen as plain bytes.

    pyserial's :class:`serial.rfc2217.PortManager` strips and answers the Telnet negotiation in
    what the client sends and escapes what the device sends; the simulator sees only data bytes.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, baudrate: int
    ) -> None:
        from serial.rfc2217 import PortManager

        self._reader = reader
        self._writer = writer
        self._closed = False
        # The manager only reads/sets the attributes _LineSettings has and calls write() on the
        # connection; the stubs type both as pyserial Serial objects.
        self._manager = PortManager(
            _LineSettings(baudrate),  # type: ignore[arg-type]
            _NegotiationReplies(writer),  # type: ignore[arg-type]
        )

    async def read(self, max_bytes: int = 4096) -> bytes:
        while not self._closed:
            try:
                raw = await self._reader.read(max_bytes)
            except (ConnectionError, OSError):
                return b""
            if not raw:
                return b""
            data = b"".join(self._manager.filter(raw))
            await self._writer.drain()
            if data:
                return data
        return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("RFC 2217 client gone")
        self._writer.write(b"".join(self._manager.escape(data)))
        await self._writer.drain()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()


class Rfc2217Port(TcpPort):
    """A TCP listener speaking RFC 2217 (``rfc2217://127.0.0.1:PORT``), served by a simulator."""

    @property
    def url(self) -> str:
        return f"rfc2217://{self.host}:{self.port}"

    async def start(self) -> None:
        baudrate = int(self.simulator.describe().get("baudrate", 9600))

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.simulator.line_dead:
                writer.close()
                return
            stream = _Rfc2217Stream(reader, writer, baudrate)
            await self.simulator.serve(stream)

        self._server = await asyncio.start_server(on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
