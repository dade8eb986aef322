"""Pseudo-terminals (and TCP sockets) that put a simulator where a client expects a serial port.

A :class:`PtyPort` is a pty pair: the client opens the slave path (``/dev/pts/N``) exactly as it
would open ``/dev/ttyUSB0``; the simulator reads and writes the master side. The simulator keeps its
own slave descriptor open so the master never sees EIO when a client closes the port, and both sides
are raw (no echo, no line editing, 8 bits).

Line behaviour, as on a UART:

* replies nobody reads are dropped, not queued: before each reply the simulator looks at how many
  bytes wait unread on the client's side of the pty (``FIONREAD`` on its own slave descriptor);
  when some do and the reply would take them past :data:`PTY_BACKLOG` bytes (the size of the
  Linux terminal receive buffer a real UART delivers into), the reply is dropped and counted as
  an overrun. A write the kernel refuses (``EAGAIN``, or only part of a reply taken) is an
  overrun too: the simulator never waits on a client;
* the master runs in packet mode (``TIOCPKT``), so the simulator sees when a client flushes its
  input, which pyserial does when it opens the port: that starts a new client session with an
  empty receive buffer (a partial frame left by the previous client is forgotten), and pyserial's
  flush has already thrown away any replies the previous client left unread;
* each TCP or RFC 2217 client has its own receive buffer; the kernel's send buffer of its
  connection is kept small (``SO_SNDBUF`` = :data:`TCP_BACKLOG`, which Linux doubles), and a
  client that does not read gets its replies dropped once that is full and :data:`TCP_BACKLOG`
  more bytes wait in the connection's own send buffer.

Limits of a pty, compared with a UART: no modem lines (CTS/DTR ioctls fail) and no baud timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
import tty

from kiboauto.drivers.streams import AsyncioByteStream

from .base import Overrun, Simulator

__all__ = ["PTY_BACKLOG", "TCP_BACKLOG", "PtyPort", "PtyStream", "TcpPort"]

log = logging.getLogger(__name__)

#: most unread reply bytes left waiting for a pty client (the Linux tty receive buffer is 4096)
PTY_BACKLOG = 4095
#: most unsent reply bytes queued for one TCP / RFC 2217 client before replies are dropped
TCP_BACKLOG = 4096

_TIOCPKT_DATA = 0x00
_TIOCPKT_FLUSHREAD = 0x01


def _unread(fd: int) -> int:
    """Bytes waiting to be read on a terminal descriptor."""
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    count: int = struct.unpack("i", raw)[0]
    return count


class PtyStream:
    """The master side of a pty as a byte stream (non-blocking fd driven by the event loop).

    With ``slave_fd`` (the simulator's own slave descriptor) the master is in packet mode: a client
    flushing its input (opening the port) increments :attr:`session`, and replies are dropped
    (:class:`~kiboauto.hil.base.Overrun`) rather than queued past :data:`PTY_BACKLOG` unread bytes.
    """

    def __init__(self, master_fd: int, slave_fd: int | None = None) -> None:
        self._fd = master_fd
        self._slave_fd = slave_fd
        self._closed = False
        self._packet = slave_fd is not None
        self.session = 0

    async def read(self, max_bytes: int = 4096) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                data = os.read(self._fd, max_bytes + 1 if self._packet else max_bytes)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: no slave open right now; wait for one
                    raise
                await asyncio.sleep(0.05)
                continue
            else:
                if not self._packet:
                    return data
                if not data:
                    return b""
                if data[0] == _TIOCPKT_DATA:
                    if len(data) > 1:
                        return data[1:]
                    continue
                if data[0] & _TIOCPKT_FLUSHREAD:
                    self.session += 1  # the client flushed its input: a new session
                    log.debug("pty fd %d: client flushed its input (%d)", self._fd, self.session)
                continue
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self._fd)
        return b""

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("pty session closed")
        if self._slave_fd is not None:
            try:
                waiting = _unread(self._slave_fd)
            except OSError:
                waiting = 0
            if waiting and waiting + len(data) > PTY_BACKLOG:
                raise Overrun(f"{waiting} bytes wait unread")
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            raise Overrun("pty full") from None
        if n < len(data):
            raise Overrun(f"pty full after {n} of {len(data)} bytes")

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
        fcntl.ioctl(self.master_fd, termios.TIOCPKT, struct.pack("i", 1))  # see the module doc
        self.path = os.ttyname(self.slave_fd)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        stream = _Resilient(self.master_fd, self.slave_fd, self.simulator)
        self._task = self.simulator.start_serving(stream)

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

    def __init__(self, fd: int, slave_fd: int, simulator: Simulator) -> None:
        super().__init__(fd, slave_fd)
        self._sim = simulator

    async def close(self) -> None:
        if self._sim.line_dead:
            # Serve again on the same fd once the caller's serve loop has returned.
            asyncio.get_running_loop().call_soon(self._restart)
            return
        await super().close()

    def _restart(self) -> None:
        if self._slave_fd is not None:
            self._sim.start_serving(_Resilient(self._fd, self._slave_fd, self._sim))


def _backlog(writer: asyncio.StreamWriter) -> int:
    """Bytes queued in a connection's send buffer (not yet taken by the kernel)."""
    return writer.transport.get_write_buffer_size()


def _small_kernel_buffer(writer: asyncio.StreamWriter) -> None:
    """Keep the kernel's send buffer for one client small, as a UART's is (no autotuning)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_BACKLOG)


class _TcpStream(AsyncioByteStream):
    """A TCP client connection that drops replies its client does not read (never blocks)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._out = writer
        _small_kernel_buffer(writer)

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("TCP client gone")
        queued = _backlog(self._out)
        if queued and queued + len(data) > TCP_BACKLOG:
            raise Overrun(f"{queued} bytes queued unread")
        self._out.write(data)


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
            await self.simulator.serve(_TcpStream(reader, writer))

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
        # Dropped, like replies, when the client does not read: never queued without bound.
        if not self._writer.is_closing() and _backlog(self._writer) < TCP_BACKLOG:
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
        _small_kernel_buffer(writer)
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
            if data:
                return data
        return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("RFC 2217 client gone")
        escaped = b"".join(self._manager.escape(data))
        queued = _backlog(self._writer)
        if queued and queued + len(escaped) > TCP_BACKLOG:
            raise Overrun(f"{queued} bytes queued unread")
        self._writer.write(escaped)

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
