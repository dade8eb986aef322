"""The async serial transport every driver talks through.

One :class:`SerialTransport` owns one line. It sends a request, collects reply bytes until the
driver's frame parser recognises one complete reply, and gives each request its own timeout. It
retries only when told the command is safe to repeat, reconnects after the line drops, and writes
every byte in and out to a :class:`~kiboauto.drivers.trace.ByteTrace`.

Drivers supply a *frame parser*: ``parse(buffer) -> (reply, consumed) | None``. It returns ``None``
while the reply is incomplete and raises :class:`BadFrame` when the bytes cannot be a valid reply.

Replies are matched to requests. A device answers in order, so the only way a reply can be taken for
another request's is a reply that arrives after its request timed out. After any timeout or bad
frame the line is *out of step*: before the next request the transport discards what is waiting,
then (when the driver gave one with :meth:`SerialTransport.set_resync`) sends the driver's
synchronisation query and throws away every frame until the one answer that can only belong to it.
Only then does the next request go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from kiboauto.clock import Clock, RealClock
from kiboauto.devices import DeviceDisconnected, DeviceError, DeviceTimeout, FramingError

from .streams import ByteStream, Connector
from .trace import ByteTrace

__all__ = ["BadFrame", "FrameParser", "Resync", "SerialTransport"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class BadFrame(Exception):
    """Raised by a frame parser: these bytes are not a valid reply (the message says why)."""


FrameParser = Callable[[bytes], "tuple[T, int] | None"]


@dataclass(frozen=True)
class Resync:
    """A driver's way back into step after a timeout: a query and how to recognise its answer.

    ``parse(buffer)`` returns ``(True, used)`` for the answer to ``payload``, ``(False, used)``
    for any other complete frame (a late reply: discarded), ``None`` while incomplete; it raises
    :class:`BadFrame` for bytes that are no frame (discarded too). Choose a query whose answer no
    other request can produce (a firmware string, a read of an unusual register count).
    """

    payload: bytes
    parse: Callable[[bytes], tuple[bool, int] | None]
    what: str = "resync"


class SerialTransport:
    """Request/response over one serial line, owned by exactly one driver.

    ``port`` is a label for messages and for the one-owner rule (two transports in one process may
    not own the same port); ``connector`` opens the line and is called again to reconnect.
    """

    _owners: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        name: str,
        connector: Connector,
        *,
        port: str = "",
        clock: Clock | None = None,
        trace: ByteTrace | None = None,
        max_frame: int = 4096,
        reconnect_attempts: int = 3,
        reconnect_delay: float = 0.2,
        reopen_after_timeouts: int = 2,
        resync_patience: float = 3.0,
    ) -> None:
        self.name = name
        self.port = port or name
        self._connector = connector
        self.clock: Clock = clock or RealClock()
        self.trace = trace if trace is not None else ByteTrace()
        self.max_frame = max_frame
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.reopen_after_timeouts = reopen_after_timeouts
        self._stream: ByteStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._buffer = bytearray()
        self._data = asyncio.Event()
        self._eof = False
        self._lock = asyncio.Lock()
        self._timeouts_in_a_row = 0
        self._owned = False
        self.reconnects = 0
        self._resync: Resync | None = None
        self.resync_patience = resync_patience
        self.out_of_step = False
        self.resyncs = 0
        self.late_frames = 0

    def set_resync(self, resync: Resync | None) -> None:
        """Give the driver's synchronisation query (see :class:`Resync`)."""
        self._resync = resync

    # -- line lifecycle --------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._stream is not None and not self._eof

    def _note(self, text: str) -> None:
        self.trace.record(self.clock.wall(), self.name, "note", note=text)

    async def open(self) -> None:
        """Open the line (idempotent). Raises :class:`DeviceDisconnected` if it cannot."""
        if self.is_open:
            return
        if not self._owned:
            owner = SerialTransport._owners.get(self.port)
            if owner is not None and owner != self.name:
                raise DeviceError(self.name, f"port {self.port} is already owned by {owner}")
            SerialTransport._owners[self.port] = self.name
            self._owned = True
        try:
            await self._connect()
        except BaseException:
            self._release()
            raise

    async def _connect(self) -> None:
        await self._drop_stream()
        try:
            stream = await self._connector()
        except (OSError, ConnectionError) as e:
            raise DeviceDisconnected(self.name, f"cannot open {self.port}: {e}") from e
        except Exception as e:  # pyserial raises SerialException (an OSError subclass or not)
            raise DeviceDisconnected(self.name, f"cannot open {self.port}: {e}") from e
        self._stream = stream
        self._eof = False
        self._buffer.clear()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(stream), name=f"serial-reader:{self.name}"
        )
        self._note(f"open {self.port}")

    async def _read_loop(self, stream: ByteStream) -> None:
        try:
            while True:
                chunk = await stream.read(4096)
                if not chunk:
                    break
                self.trace.record(self.clock.wall(), self.name, "rx", chunk)
                self._buffer.extend(chunk)
                cap = max(65_536, 16 * self.max_frame)
                if len(self._buffer) > cap:
                    # A babbling device must not eat memory: keep only the tail (a waiting
                    # request has long since failed with an oversized-reply error).
                    del self._buffer[: len(self._buffer) - self.max_frame]
                self._data.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the line broke under us
            self._note(f"read failed: {e!r}")
        if self._stream is stream:
            self._eof = True
            self._note("line hung up")
            self._data.set()

    async def _drop_stream(self) -> None:
        reader, stream = self._reader, self._stream
        self._reader, self._stream = None, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()

    def _release(self) -> None:
        if self._owned and SerialTransport._owners.get(self.port) == self.name:
            del SerialTransport._owners[self.port]
        self._owned = False

    async def close(self) -> None:
        """Close the line and give up ownership of the port."""
        await self._drop_stream()
        self._eof = False
        self._release()
        self._note("closed")

    async def reconnect(self) -> None:
        """Close and reopen the line, trying ``reconnect_attempts`` times with a growing delay."""
        last: Exception | None = None
        for attempt in range(1, self.reconnect_attempts + 1):
            self._note(f"reconnect attempt {attempt}")
            try:
                await self._connect()
                self.reconnects += 1
                return
            except DeviceDisconnected as e:
                last = e
                await self.clock.sleep(self.reconnect_delay * attempt)
        await self._drop_stream()
        raise DeviceDisconnected(
            self.name,
            f"line to {self.port} is down after {self.reconnect_attempts} attempts: {last}",
        )

    async def __aenter__(self) -> SerialTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transactions ----------------------------------------------------------------------------
    async def request(
        self,
        payload: bytes,
        parse: Callable[[bytes], tuple[T, int] | None],
        *,
        timeout: float,
        retries: int = 0,
        what: str = "",
    ) -> T:
        """Send ``payload`` and return the parsed reply.

        ``retries`` > 0 only for commands that are safe to repeat (queries, idempotent settings):
        a timeout, a garbled reply or a dropped line then sends the same bytes again. A command
        that moves hardware is never repeated by the transport.
        """
        label = what or payload[:16].decode("ascii", "replace").strip()
        async with self._lock:
            attempt = 0
            while True:
                try:
                    return await self._exchange(payload, parse, timeout, label)
                except (DeviceTimeout, FramingError, DeviceDisconnected) as e:
                    if attempt >= retries:
                        raise
                    attempt += 1
                    self._note(f"retry {attempt}/{retries} of {label!r} after {type(e).__name__}")

    async def _exchange(
        self,
        payload: bytes,
        parse: Callable[[bytes], tuple[T, int] | None],
        timeout: float,
        label: str,
    ) -> T:
        if not self.is_open:
            if self._owned:
                await self.reconnect()
            else:
                await self.open()
        if self._timeouts_in_a_row >= self.reopen_after_timeouts:
            self._note(f"{self._timeouts_in_a_row} timeouts in a row: reopening the line")
            self._timeouts_in_a_row = 0
            await self.reconnect()
        stream = self._stream
        assert stream is not None
        with self.clock.real_io(not getattr(stream, "in_process", False)):
            if self.out_of_step:
                await self._get_in_step(stream, timeout)
            if self._buffer:
                self._note(
                    f"discarding {len(self._buffer)} stale bytes: {bytes(self._buffer).hex()}"
                )
                self._buffer.clear()
            self.trace.record(self.clock.wall(), self.name, "tx", payload)
            log.debug("%s tx %r", self.name, payload)
            try:
                await stream.write(payload)
            except (OSError, ConnectionError) as e:
                self._eof = True
                self._note(f"write failed: {e!r}")
                raise DeviceDisconnected(self.name, f"write to {self.port} failed: {e}") from e
            try:
                async with self.clock.timeout(timeout):
                    reply = await self._collect(parse, label)
            except TimeoutError:
                self._timeouts_in_a_row += 1
                self.out_of_step = True
                got = bytes(self._buffer)
                self._buffer.clear()
                self._note(f"timeout after {timeout:g} s waiting for reply to {label!r}")
                detail = (
                    f" (got {len(got)} bytes of an incomplete reply: {got.hex(' ')})" if got else ""
                )
                raise DeviceTimeout(
                    self.name, f"no reply to {label!r} within {timeout:g} s{detail}"
                ) from None
            except (FramingError, asyncio.CancelledError):
                # A bad frame, or a caller that gave up after the request went out: its reply
                # may still come, so the line is out of step until proven otherwise.
                self.out_of_step = True
                raise
        self._timeouts_in_a_row = 0
        log.debug("%s rx %r for %s", self.name, reply, label)
        return reply

    async def _get_in_step(self, stream: ByteStream, timeout: float) -> None:
        """Throw away late replies until the line is known to be in step again.

        Raises :class:`DeviceTimeout` (and stays out of step) when the device does not answer the
        synchronisation query: the caller's request is then not sent at all.
        """
        quiet = min(0.05, timeout / 4)
        # Whatever is on its way now is somebody's late reply: let it arrive, then drop it.
        while True:
            self._data.clear()
            try:
                async with self.clock.timeout(quiet):
                    await self._data.wait()
            except TimeoutError:
                break
            if self._eof:
                break
        if self._buffer:
            self.late_frames += 1
            self._note(f"out of step: discarding {len(self._buffer)} late bytes")
            self._buffer.clear()
        resync = self._resync
        if resync is None:
            self.out_of_step = False
            return
        self.trace.record(self.clock.wall(), self.name, "tx", resync.payload)
        try:
            await stream.write(resync.payload)
        except (OSError, ConnectionError) as e:
            self._eof = True
            raise DeviceDisconnected(self.name, f"write to {self.port} failed: {e}") from e
        # A device answers in order: the sync's answer comes after every late reply, so it is
        # given a few request timeouts to arrive.
        budget = timeout * self.resync_patience
        try:
            async with self.clock.timeout(budget):
                while True:
                    if self._buffer:
                        data = bytes(self._buffer)
                        try:
                            parsed = resync.parse(data)
                        except BadFrame as e:
                            self._note(f"resync: discarding {len(data)} bytes ({e})")
                            self._buffer.clear()
                            parsed = None
                        if parsed is not None:
                            matched, used = parsed
                            del self._buffer[: max(used, 1)]
                            if matched:
                                break
                            self.late_frames += 1
                            self._note("resync: a late reply discarded")
                            continue
                    if self._eof:
                        raise DeviceDisconnected(self.name, "line hung up while resynchronising")
                    self._data.clear()
                    await self._data.wait()
        except TimeoutError:
            self._timeouts_in_a_row += 1
            self._buffer.clear()
            raise DeviceTimeout(
                self.name, f"line out of step and no answer to {resync.what!r} within {budget:g} s"
            ) from None
        self._buffer.clear()
        self.out_of_step = False
        self.resyncs += 1
        self._note("back in step")

    async def _collect(self, parse: Callable[[bytes], tuple[T, int] | None], label: str) -> T:
        while True:
            if self._buffer:
                data = bytes(self._buffer)
                try:
                    parsed = parse(data)
                except BadFrame as e:
                    self._buffer.clear()
                    self._note(f"bad frame in reply to {label!r}: {e}")
                    raise FramingError(self.name, f"bad reply to {label!r}: {e}", data) from e
                if parsed is not None:
                    reply, used = parsed
                    del self._buffer[:used]
                    if self._buffer:
                        self._note(f"{len(self._buffer)} bytes after the reply ignored")
                        self._buffer.clear()
                    return reply
                if len(data) > self.max_frame:
                    self._buffer.clear()
                    self._note(f"oversized reply to {label!r}")
                    raise FramingError(
                        self.name,
                        f"reply to {label!r} exceeds {self.max_frame} bytes without a frame end",
                        data,
                    )
            if self._eof:
                raise DeviceDisconnected(self.name, f"line hung up while waiting for {label!r}")
            self._data.clear()
            await self._data.wait()
