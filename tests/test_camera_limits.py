"""Camera snapshot limits: bytes, pixels, cancellation, 16-bit frames.

Hostile snapshot sources are real: an HTTP server on 127.0.0.1 (in a thread of this process)
that streams without end, drips, announces a huge body or serves a 20000 x 20000 PNG; a named
pipe that never ends; real PNG files. No mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import resource
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiboauto.clock import RealClock
from kiboauto.devices import DeviceError, DeviceTimeout, FramingError
from kiboauto.drivers.camera import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    OpenCVCamera,
    SnapshotTooLarge,
)

CLOCK = RealClock()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of ``width`` x ``height`` (all black): tens of KB on disk, but
    ``width * height`` bytes once OpenCV decodes it to 8 bit."""
    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row * min(200, height - y)) for y in range(0, height, 200)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def png_20k() -> bytes:
    return huge_png(20000, 20000)


def png16() -> np.ndarray:
    """A 16-bit colour frame whose values are all above 255 (their low bytes are misleading)."""
    img = np.empty((48, 64, 3), np.uint16)
    img[..., 0] = 1000  # low byte 232, high byte 3.9
    img[..., 1] = 50000  # low byte 80, high byte 195.3
    img[..., 2] = 65535
    img[10:20, 10:30, 0] = 40000
    return img


# ---------------------------------------------------------------------------------------------
# a hostile HTTP snapshot server
# ---------------------------------------------------------------------------------------------
@dataclass
class Hostile:
    """What the hostile server did: bytes sent per path and when the client went away."""

    url: str
    png_20k: bytes
    sent: dict[str, int] = field(default_factory=dict)
    closed_at: dict[str, float] = field(default_factory=dict)
    started: dict[str, threading.Event] = field(default_factory=dict)

    def event(self, path: str) -> threading.Event:
        return self.started.setdefault(path, threading.Event())


def _handler(state: Hostile) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _stream(self, chunk: bytes, pause_s: float, limit: int) -> None:
            sent = 0
            give_up = time.monotonic() + 10.0  # a runaway client must not keep the test going
            try:
                self.wfile.write(PNG_SIGNATURE)
                while sent < limit and time.monotonic() < give_up:
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    state.sent[self.path] = sent
                    state.event(self.path).set()
                    if pause_s:
                        time.sleep(pause_s)
            except OSError:
                state.closed_at[self.path] = time.monotonic()

        def do_GET(self) -> None:
            if self.path == "/announced.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self._stream(bytes(1024), 0.005, 1 << 40)
                return
            if self.path in ("/20k.png", "/16bit.png"):
                if self.path == "/20k.png":
                    body = state.png_20k
                else:
                    ok, data = cv2.imencode(".png", png16())
                    assert ok
                    body = data.tobytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)  # no Content-Length: the body ends when the server says so
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            if self.path == "/endless.png":  # as fast as the socket takes it
                self._stream(bytes(64 * 1024), 0.0, 160 * 2**20)  # 2.5 x the default limit
            elif self.path == "/drip.png":  # 1 KB every 5 ms, for ever
                self._stream(bytes(1024), 0.005, 1 << 40)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def hostile(png_20k: bytes) -> Iterator[Hostile]:
    state = Hostile("", png_20k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _wait_for(predicate: object, within_s: float) -> bool:
    assert callable(predicate)
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


def _camera_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"camera-{name}")]


# ---------------------------------------------------------------------------------------------
# byte limit
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
def test_default_limits() -> None:
    cam = OpenCVCamera("cam", "http://127.0.0.1:9/x.png", clock=CLOCK)
    assert cam.max_bytes == DEFAULT_MAX_BYTES == 64 * 2**20
    assert cam.max_pixels == DEFAULT_MAX_PIXELS == 50_000_000
    assert cam.http_client == "urllib"  # auto: the bounded reader, not FFmpeg
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_bytes"):
            OpenCVCamera("cam", "x.png", clock=CLOCK, max_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_pixels"):
            OpenCVCamera("cam", "x.png", clock=CLOCK, max_pixels=bad)  # type: ignore[arg-type]


@pytest.mark.req("KA-BAD-003")
async def test_endless_http_body_stops_at_the_byte_limit(hostile: Hostile) -> None:
    url = f"{hostile.url}/endless.png"
    cam = OpenCVCamera("cam", url, clock=CLOCK, timeout_s=10.0, max_bytes=2 * 2**20)
    await cam.connect()
    with pytest.raises(SnapshotTooLarge) as e:
        await cam.capture()
    assert isinstance(e.value, FramingError)
    assert url in str(e.value) and "2097152" in str(e.value) and "max_bytes" in str(e.value)
    # the response was closed: the server's writes fail soon after
    assert await _wait_for(lambda: "/endless.png" in hostile.closed_at, 3.0)
    assert hostile.sent["/endless.png"] < 64 * 2**20  # kernel buffers at most, not the stream
    await cam.close()


@pytest.mark.req("KA-BAD-003")
async def test_endless_http_body_stops_at_the_default_limit(hostile: Hostile) -> None:
    cam = OpenCVCamera("cam", f"{hostile.url}/endless.png", clock=CLOCK, timeout_s=20.0)
    await cam.connect()
    with pytest.raises(SnapshotTooLarge, match=str(DEFAULT_MAX_BYTES)):
        await cam.capture()
    await cam.close()


@pytest.mark.req("KA-BAD-003")
async def test_announced_oversized_body_is_refused_unread(hostile: Hostile) -> None:
    cam = OpenCVCamera("cam", f"{hostile.url}/announced.png", clock=CLOCK, timeout_s=5.0)
    await cam.connect()
    with pytest.raises(SnapshotTooLarge, match=r"1000000000000 bytes"):
        await cam.capture()
    await cam.close()


@pytest.mark.req("KA-BAD-003")
async def test_oversized_and_endless_files(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.png"
    with sparse.open("wb") as f:
        f.write(PNG_SIGNATURE)
        f.truncate(3 * 2**20)
    cam = OpenCVCamera("cam", sparse, clock=CLOCK, max_bytes=2**20)
    with pytest.raises(SnapshotTooLarge, match=r"3145728 bytes"):
        await cam.connect()
    # a named pipe that never ends (a process writing into it for ever)
    fifo = tmp_path / "endless.png"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        # the reader's close reaches the writer as EPIPE on a write or on the final flush
        with contextlib.suppress(OSError), open(fifo, "wb") as out:
            out.write(PNG_SIGNATURE)
            while not stop.is_set():
                out.write(bytes(64 * 1024))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        pipe = OpenCVCamera("pipe", fifo, clock=CLOCK, timeout_s=5.0, max_bytes=4 * 2**20)
        with pytest.raises(SnapshotTooLarge, match=r"4194304 bytes"):
            await pipe.connect()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()  # the reader closed the pipe: the writer got EPIPE


# ---------------------------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
async def test_timeout_stops_the_download(hostile: Hostile) -> None:
    cam = OpenCVCamera("drip", f"{hostile.url}/drip.png", clock=CLOCK, timeout_s=0.3)
    await cam.connect()
    with pytest.raises(DeviceTimeout, match=r"within 0\.3 s"):
        await cam.capture()
    timed_out = time.monotonic()
    # the worker saw the stop event between chunks and closed the response (a worker that went
    # on would drip for 30 s, and the driver's backstop is 45 s: the bound below is generous)
    assert await _wait_for(lambda: "/drip.png" in hostile.closed_at, 10.0)
    assert hostile.closed_at["/drip.png"] - timed_out < 10.0
    assert len(_camera_threads("drip")) <= 1  # one worker thread per camera
    await cam.close()


@pytest.mark.req("KA-BAD-003")
async def test_cancelled_capture_stops_the_download(hostile: Hostile) -> None:
    cam = OpenCVCamera("drip2", f"{hostile.url}/drip.png", clock=CLOCK, timeout_s=30.0)
    await cam.connect()
    task = asyncio.create_task(cam.capture())
    assert await _wait_for(hostile.event("/drip.png").is_set, 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled = time.monotonic()
    assert await _wait_for(lambda: "/drip.png" in hostile.closed_at, 10.0)
    assert hostile.closed_at["/drip.png"] - cancelled < 10.0  # not the 45 s backstop
    await cam.close()


# ---------------------------------------------------------------------------------------------
# pixel limit
# ---------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@pytest.mark.req("KA-BAD-003")
async def test_20000_square_png_refused_before_decoding(
    hostile: Hostile, png_20k: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_20k)
    assert len(png_20k) < 200_000
    before = _peak_rss_mb()
    sources: list[tuple[str, dict[str, object]]] = [
        (f"{hostile.url}/20k.png", {}),
        (str(path), {}),
        (str(path), {"reopen_each_capture": False}),  # kept open through cv2.VideoCapture
    ]
    for source, options in sources:
        cam = OpenCVCamera("cam", source, clock=CLOCK, timeout_s=5.0, **options)  # type: ignore[arg-type]
        with pytest.raises(DeviceError) as e:
            await cam.connect()
            await cam.capture()
        if options:  # FFmpeg refuses such a size itself and reports no frame size
            assert "no frame size" in str(e.value) or isinstance(e.value, SnapshotTooLarge)
        else:
            assert isinstance(e.value, SnapshotTooLarge), e.value
            assert "20000x20000" in str(e.value) and "50 megapixels" in str(e.value)
        await cam.close()
    assert _peak_rss_mb() - before < 200  # decoding it would take 400 MB


@pytest.mark.req("KA-BAD-003")
async def test_max_pixels_option(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    assert cv2.imwrite(str(path), np.zeros((100, 200, 3), np.uint8))
    ok = OpenCVCamera("ok", path, clock=CLOCK, max_pixels=20_000)
    await ok.connect()
    assert (await ok.capture()).shape == (100, 200, 3)
    await ok.close()
    refused = OpenCVCamera("no", path, clock=CLOCK, max_pixels=19_999)
    with pytest.raises(SnapshotTooLarge, match=r"200x100"):
        await refused.connect()


# ---------------------------------------------------------------------------------------------
# 16-bit frames
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-BAD-003")
@pytest.mark.parametrize("where", ["urllib", "opencv", "file"])
async def test_16_bit_png_is_scaled_not_truncated(
    hostile: Hostile, tmp_path: Path, where: str
) -> None:
    img = png16()
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), img)
    if where == "file":
        cam = OpenCVCamera("cam", path, clock=CLOCK)
    else:  # both HTTP clients; urllib + imdecode used to keep the low byte
        cam = OpenCVCamera("cam", f"{hostile.url}/16bit.png", clock=CLOCK, http_client=where)
    await cam.connect()
    frame = await cam.capture()
    await cam.close()
    assert frame.dtype == np.uint8 and frame.shape == img.shape
    expected = np.rint(img.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
    assert tuple(frame[0, 0]) == (4, 195, 255)
    assert frame[15, 15, 0] == 156
    assert not np.array_equal(frame, (img & 0xFF).astype(np.uint8))  # not the low byte
