"""Cameras read through OpenCV's ``cv2.VideoCapture``: devices, files, image sequences and URLs.

A camera is not a serial device, so :class:`OpenCVCamera` has no transport: it is built from a
*source* (what ``cv2.VideoCapture`` would be given) and hands out one numpy frame per
:meth:`OpenCVCamera.capture`.

Sources (see docs/protocols/camera.md):

* a device index, ``0`` or ``"0"`` (V4L2 on Linux);
* a video file (``.avi``, ``.mp4``, ...): each capture returns the next frame;
* an image-sequence pattern such as ``frames/%04d.png``: each capture returns the next image;
* a single image file: every capture reads the file again (it returns what is there now);
* a URL. ``http(s)`` URLs are treated as snapshot sources (one request per capture, e.g. the HIL
  server's ``http://127.0.0.1:PORT/camera1.png``); other schemes (``rtsp://``) as streams.

Limits: a snapshot (an image file read per capture, or an HTTP body) is read in chunks and
refused once it passes ``max_bytes`` (default 64 MiB); its width and height are read from the
encoded header and a frame over ``max_pixels`` (default 50 megapixels) is refused before it is
decoded. Both raise :class:`SnapshotTooLarge` (a :class:`~kiboauto.devices.FramingError`).
16-bit frames are scaled to 8 bit by their full range (never cut to the low byte).

Threading: ``cv2.VideoCapture`` calls block the calling thread (OpenCV offers no asynchronous
API), so every blocking call runs on the camera's own worker thread (one single-thread executor
per camera), one call at a time (an :class:`asyncio.Lock`), with a timeout on the injected
clock. When a call times out or the awaiting task is cancelled, the call's stop event is set: a
snapshot read checks it between chunks, closes its file or HTTP response and returns at once.
An OpenCV call cannot be interrupted; the camera remembers it and refuses new calls until it has
returned. The thread also means this driver needs a real or scaled clock: under
:class:`~kiboauto.clock.VirtualClock` time would jump to the timeout while the thread works (use
:class:`kiboauto.hil.camera_sim.SimCamera` in virtual time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto.clock import Clock
from kiboauto.devices import (
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    FramingError,
    Reading,
    ReadingDescription,
    Severity,
)
from kiboauto.image_header import image_dimensions, image_format
from kiboauto.units import Q_

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "OpenCVCamera",
    "SnapshotTooLarge",
    "classify_source",
]

log = logging.getLogger(__name__)

#: default limit on the bytes of one snapshot (an image file or an HTTP body): 64 MiB
DEFAULT_MAX_BYTES = 64 * 2**20
#: default limit on width x height of one frame: 50 megapixels
DEFAULT_MAX_PIXELS = 50_000_000
#: snapshots are read this many bytes at a time (the stop event is checked between chunks)
CHUNK_BYTES = 64 * 1024

T = TypeVar("T")
Frame = npt.NDArray[np.uint8]

#: file name endings read as a single still image (every capture reads the file again)
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2",
)  # fmt: skip

SourceKind = str  # "device" | "video" | "sequence" | "image" | "url" | "stream"


def classify_source(source: str | int | os.PathLike[str]) -> tuple[SourceKind, str | int]:
    """What kind of source this is, and the value to hand to ``cv2.VideoCapture``."""
    if isinstance(source, bool):
        raise ValueError(f"camera source must be a device index, path or URL, got {source!r}")
    if isinstance(source, int):
        return "device", source
    text = os.fspath(source).strip()
    if not text:
        raise ValueError("camera source is empty")
    if text.isdigit():
        return "device", int(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("http", "https"):
        return "url", text
    if scheme:
        return "stream", text
    if "%" in text:
        return "sequence", text
    if text.lower().endswith(IMAGE_SUFFIXES):
        return "image", text
    return "video", text


class SnapshotTooLarge(FramingError):
    """A snapshot over the camera's ``max_bytes`` or a frame over its ``max_pixels``, refused
    before it is decoded (reading stops at the limit)."""


class _Stopped(Exception):
    """Raised on the worker thread when the call's stop event is set (timeout or cancel)."""


class OpenCVCamera:
    """A camera read through ``cv2.VideoCapture`` (device, video file, image sequence or URL).

    Options: ``width``/``height`` (asked of a device; any frame of another size is resized to
    them), ``grey`` (single-channel frames), ``timeout_s`` (per OpenCV call, protocol seconds),
    ``reopen_each_capture`` (open, read one frame, release; default on for http(s) URLs and single
    image files), ``http_client`` (``"auto"``, ``"opencv"`` or ``"urllib"``: how http(s) snapshots
    are fetched; ``auto`` means ``urllib``: the bytes are read in chunks under ``max_bytes`` and
    decoded with ``imdecode``; ``opencv`` hands the URL to FFmpeg, which has no byte limit),
    ``max_bytes`` (bytes of one snapshot, default 64 MiB), ``max_pixels`` (width x height of one
    frame, default 50 megapixels).
    """

    protocol: ClassVar[str] = "opencv"
    kind: ClassVar[str] = "camera"
    default_baudrate: ClassVar[int] = 0  # not a serial device

    def __init__(
        self,
        name: str,
        source: str | int | os.PathLike[str],
        *,
        clock: Clock,
        width: int | None = None,
        height: int | None = None,
        grey: bool = False,
        timeout_s: float = 5.0,
        reopen_each_capture: bool | None = None,
        http_client: str = "auto",
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.name = name
        self.clock = clock
        self.source_kind, self._cv_source = classify_source(source)
        self.source = str(self._cv_source)
        if (width is None) != (height is None):
            raise ValueError(f"{name}: give both width and height, or neither")
        if width is not None and height is not None and (width <= 0 or height <= 0):
            raise ValueError(f"{name}: width and height must be positive, got {width}x{height}")
        self.width = width
        self.height = height
        self.grey = bool(grey)
        if not timeout_s > 0:
            raise ValueError(f"{name}: timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        if reopen_each_capture is None:
            reopen_each_capture = self.source_kind in ("url", "image")
        self.reopen_each_capture = bool(reopen_each_capture)
        if http_client not in ("auto", "opencv", "urllib"):
            raise ValueError(f"{name}: http_client must be auto, opencv or urllib")
        if http_client == "auto":
            http_client = "urllib"
        self.http_client = http_client
        if self.source_kind == "url" and http_client == "opencv":
            log.warning(
                "%s: http_client=opencv: FFmpeg fetches %s with no byte limit and cannot be "
                "cancelled (only its own time limits apply)",
                name,
                self.source,
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"{name}: max_bytes must be a positive integer, got {max_bytes!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise ValueError(f"{name}: max_pixels must be a positive integer, got {max_pixels!r}")
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

        self._lock = asyncio.Lock()
        self._cap: cv2.VideoCapture | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._stale = False  # a timed-out call may have left the capture in an unknown state
        self._connected = False
        self.frames = 0  # frames delivered since connect()
        self.last_error = ""
        self.last_capture_wall = 0.0
        self.backend = ""
        self.frame_size: tuple[int, int] = (0, 0)  # (width, height) as the source reports it
        self.fps = 0.0
        self.frame_count = 0

    def __repr__(self) -> str:
        return f"OpenCVCamera({self.name!r}, {self.source!r})"

    # -- running blocking OpenCV calls -----------------------------------------------------------
    @property
    def _backstop_s(self) -> float:
        """Real-time limit handed to FFmpeg/urllib so a blocked thread returns eventually."""
        return 1.5 * self.timeout_s

    @property
    def _uses_urllib(self) -> bool:
        return self.source_kind == "url" and self.http_client == "urllib"

    @property
    def _reads_bytes(self) -> bool:
        """Snapshots this driver reads itself (chunked, limited, cancellable) and decodes."""
        return self.reopen_each_capture and (self._uses_urllib or self.source_kind == "image")

    async def _call(self, fn: Callable[[threading.Event], T], what: str) -> T:
        """Run one blocking call on the camera's worker thread within ``timeout_s`` of clock time.

        ``fn`` gets the call's stop event, set when the call times out or is cancelled.
        """
        if self._inflight is not None and not self._inflight.done():
            # An earlier call timed out and its thread is still inside OpenCV: give it one more
            # budget to return before touching the capture again.
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                async with self.clock.timeout(self.timeout_s):
                    await asyncio.shield(self._inflight)
            if not self._inflight.done():
                raise DeviceTimeout(
                    self.name,
                    f"{what}: an earlier OpenCV call on {self.source} is still blocked "
                    f"(more than {2 * self.timeout_s:g} s; OpenCV ignores its time limits here)",
                )
        loop = asyncio.get_running_loop()
        if self._worker is None:
            # The one thread of this camera (cv2.VideoCapture and the snapshot reads block).
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"camera-{self.name}"
            )
        stop = threading.Event()
        future: asyncio.Future[T] = loop.run_in_executor(self._worker, fn, stop)
        self._inflight = future
        future.add_done_callback(_consume_result)
        try:
            async with self.clock.timeout(self.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            stop.set()
            self._stale = True
            raise DeviceTimeout(
                self.name, f"{what}: no answer from {self.source} within {self.timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            stop.set()
            self._stale = True
            raise

    # -- blocking helpers (run in the executor thread) --------------------------------------------
    def _too_many_pixels(self, width: int, height: int) -> str:
        return (
            f"{self.source} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the "
            f"limit of {self.max_pixels / 1e6:g} megapixels (max_pixels): refused before decoding"
        )

    def _open_blocking(self, stop: threading.Event | None = None) -> cv2.VideoCapture:
        src = self._cv_source
        if isinstance(src, str) and self.source_kind in ("video", "image"):
            if not os.path.exists(src):
                raise DeviceDisconnected(self.name, f"cannot open {src}: no such file")
            if os.path.isdir(src):
                raise DeviceError(self.name, f"cannot open {src}: it is a directory")
        if isinstance(src, str) and self.source_kind == "sequence":
            folder = os.path.dirname(src) or "."
            if not os.path.isdir(folder):
                raise DeviceDisconnected(self.name, f"cannot open {src}: no folder {folder}")
        if isinstance(src, str) and self.source_kind in ("url", "stream"):
            ms = int(self._backstop_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            cap.release()
            where = {"device": "camera device", "sequence": "image sequence"}.get(
                self.source_kind, self.source_kind
            )
            hint = " (no file matches the pattern)" if self.source_kind == "sequence" else ""
            raise DeviceDisconnected(self.name, f"cannot open {where} {src}{hint}")
        if self.source_kind == "device" and self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            cap.release()
            raise DeviceError(
                self.name,
                f"{src} opened but reports no frame size: not a readable image or video "
                "(corrupt or unsupported file?)",
            )
        if width * height > self.max_pixels:
            cap.release()
            raise SnapshotTooLarge(self.name, self._too_many_pixels(width, height))
        self.backend = cap.getBackendName()
        self.frame_size = (width, height)
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if 0 < count < 2**31 else 0
        return cap

    def _read_blocking(self, cap: cv2.VideoCapture) -> Frame:
        ok, frame = cap.read()
        if ok and frame is not None and frame.size > 0:
            return self._to_uint8(frame)
        if self.source_kind in ("video", "sequence") and self.frames > 0:
            raise DeviceDisconnected(
                self.name, f"read failed: end of {self.source} after {self.frames} frame(s)"
            )
        if self.source_kind in ("video", "sequence", "image"):
            raise DeviceError(
                self.name, f"read failed: {self.source} does not decode to an image (corrupt?)"
            )
        raise DeviceDisconnected(self.name, f"read failed on {self.source_kind} {self.source}")

    def _snapshot_blocking(self, stop: threading.Event) -> Frame:
        """One frame from a fresh read: for URLs and still images."""
        if self._reads_bytes:
            if self._uses_urllib:
                data, backend, what = self._fetch_blocking(stop), "urllib+imdecode", "sent"
            else:
                data, backend, what = self._read_file_blocking(stop), "file+imdecode", "holds"
            frame = self._decode_blocking(data, what)
            self.backend = backend
            return frame
        cap = self._open_blocking()
        try:
            return self._read_blocking(cap)
        finally:
            cap.release()

    def _too_many_bytes(self, size: int | str) -> str:
        return (
            f"snapshot from {self.source} is {size} bytes, over the limit of {self.max_bytes} "
            "bytes (max_bytes): reading stopped"
        )

    def _read_file_blocking(self, stop: threading.Event) -> bytes:
        """A still image's bytes, read in chunks under ``max_bytes`` (a pipe may never end)."""
        src = self.source
        try:
            f = open(src, "rb")  # noqa: SIM115 - closed below; opened apart from reading
        except FileNotFoundError:
            raise DeviceDisconnected(self.name, f"cannot open {src}: no such file") from None
        except IsADirectoryError:
            raise DeviceError(self.name, f"cannot open {src}: it is a directory") from None
        except OSError as e:
            raise DeviceDisconnected(self.name, f"cannot open {src}: {e.strerror or e}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > self.max_bytes:
                raise SnapshotTooLarge(self.name, self._too_many_bytes(size))
            chunks: list[bytes] = []
            total = 0
            while True:
                if stop.is_set():
                    raise _Stopped
                try:
                    chunk = f.read(CHUNK_BYTES)
                except OSError as e:
                    raise DeviceError(self.name, f"cannot read {src}: {e.strerror or e}") from None
                if not chunk:
                    break
                total += len(chunk)
                if total > self.max_bytes:
                    raise SnapshotTooLarge(self.name, self._too_many_bytes(f"at least {total}"))
                chunks.append(chunk)
        return b"".join(chunks)

    def _fetch_blocking(self, stop: threading.Event) -> bytes:
        """An http(s) snapshot's body, read in chunks under ``max_bytes``; stops when ``stop`` is
        set (closing the response), or after 1.5 x ``timeout_s`` of real time at the latest."""
        deadline = time.monotonic() + self._backstop_s  # real time, like the socket timeout
        chunks: list[bytes] = []
        total = 0
        try:
            with urllib.request.urlopen(self.source, timeout=self._backstop_s) as reply:
                announced = reply.headers.get("Content-Length", "")
                if announced.strip().isdigit() and int(announced) > self.max_bytes:
                    raise SnapshotTooLarge(self.name, self._too_many_bytes(int(announced)))
                while True:
                    if stop.is_set():
                        log.debug(
                            "%s: fetch of %s stopped after %d bytes", self.name, self.source, total
                        )
                        raise _Stopped
                    if time.monotonic() > deadline:
                        raise DeviceTimeout(
                            self.name,
                            f"{self.source} still sending after {self._backstop_s:g} s "
                            f"({total} bytes): gave up",
                        )
                    chunk = reply.read1(CHUNK_BYTES)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise SnapshotTooLarge(self.name, self._too_many_bytes(f"at least {total}"))
                    chunks.append(chunk)
                if announced.strip().isdigit() and total < int(announced):
                    raise DeviceDisconnected(
                        self.name,
                        f"{self.source} closed the connection after {total} of {announced} bytes",
                    )
        except urllib.error.HTTPError as e:
            raise DeviceDisconnected(self.name, f"HTTP {e.code} from {self.source}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DeviceDisconnected(self.name, f"cannot fetch {self.source}: {reason}") from None
        return b"".join(chunks)

    def _decode_blocking(self, data: bytes, what: str) -> Frame:
        """Check the header's size against ``max_pixels``, then decode with ``imdecode``."""
        size = image_dimensions(data)
        if size is None:
            fmt = image_format(data)
            kind = f"a {fmt.upper()} header that cannot be read" if fmt else "no known image header"
            raise DeviceError(
                self.name,
                f"{self.source} {what} {len(data)} bytes that do not decode to an image "
                f"(corrupt? {kind})",
            )
        width, height = size
        if width * height > self.max_pixels:
            raise SnapshotTooLarge(self.name, self._too_many_pixels(width, height))
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise DeviceError(
                self.name,
                f"{self.source} {what} {len(data)} bytes that do not decode to an image (corrupt?)",
            )
        self.frame_size = (int(image.shape[1]), int(image.shape[0]))
        return self._to_uint8(image)

    def _to_uint8(self, frame: npt.NDArray[Any]) -> Frame:
        """8-bit frame: 16 bit scaled by its full range (65535 -> 255), floats in [0, 1] scaled;
        never cut to the low byte."""
        if frame.dtype == np.uint8:
            return np.asarray(frame, dtype=np.uint8)
        if frame.dtype == np.uint16:
            return np.asarray(cv2.convertScaleAbs(frame, alpha=255.0 / 65535.0), dtype=np.uint8)
        if frame.dtype.kind == "f":
            if not np.isfinite(frame).all():
                raise DeviceError(self.name, f"{self.source}: frame holds NaN or infinite values")
            lo, hi = float(frame.min()), float(frame.max())
            if lo < 0.0 or hi > 1.0:
                raise DeviceError(
                    self.name,
                    f"{self.source}: float frame spans {lo:g}..{hi:g}; only 0..1 is understood",
                )
            return np.asarray(cv2.convertScaleAbs(frame, alpha=255.0), dtype=np.uint8)
        raise DeviceError(self.name, f"{self.source}: unsupported pixel type {frame.dtype}")

    def _capture_blocking(self, stop: threading.Event) -> Frame:
        if self.reopen_each_capture:
            return self._snapshot_blocking(stop)
        if self._stale and self._cap is not None:
            self._cap.release()
            self._cap = None
        self._stale = False
        if self._cap is None:
            self._cap = self._open_blocking()
        try:
            return self._read_blocking(self._cap)
        except DeviceDisconnected:
            if self.source_kind not in ("device", "stream"):
                raise
        # A live source dropped: try once to open it again (a camera plugged back in).
        self._cap.release()
        self._cap = None
        self._cap = self._open_blocking()
        return self._read_blocking(self._cap)

    def _release_blocking(self, stop: threading.Event | None = None) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # -- shaping -----------------------------------------------------------------------------
    def _shape(self, frame: Frame) -> Frame:
        out: npt.NDArray[Any] = frame
        if out.ndim == 3 and out.shape[2] == 4:
            out = cv2.cvtColor(out, cv2.COLOR_BGRA2BGR)
        if out.ndim == 3 and out.shape[2] == 1:
            out = out[:, :, 0]
        if self.grey and out.ndim == 3:
            out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        elif not self.grey and out.ndim == 2:
            out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
        if self.width and self.height and out.shape[:2] != (self.height, self.width):
            out = cv2.resize(out, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(out, dtype=np.uint8)

    # -- Camera protocol ---------------------------------------------------------------------
    async def connect(self) -> None:
        """Check the source can be opened (and keep it open unless reopening per capture)."""
        async with self._lock:
            self.frames = 0
            if self.reopen_each_capture:
                if self._reads_bytes and not self._uses_urllib:
                    await self._call(self._snapshot_blocking, "open")  # check it decodes
                elif not self._uses_urllib:
                    cap = await self._call(self._open_blocking, "open")
                    await self._call(lambda _stop: cap.release(), "release")
            else:
                await self._call(self._release_blocking, "release")
                self._stale = False
                self._cap = await self._call(self._open_blocking, "open")
            self._connected = True

    async def close(self) -> None:
        """Release the source and let the worker thread end (after any call still in flight)."""
        async with self._lock:
            self._connected = False
            with contextlib.suppress(DeviceError):
                await self._call(self._release_blocking, "release")
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None

    async def capture(self) -> Frame:
        """One frame: BGR ``(h, w, 3)`` or, with ``grey``, ``(h, w)``; ``uint8``."""
        async with self._lock:
            if not self._connected:
                raise DeviceDisconnected(self.name, "not connected (call connect() first)")
            try:
                frame = await self._call(self._capture_blocking, "capture")
            except DeviceError as e:
                self.last_error = e.message
                raise
            self.frames += 1
            self.last_error = ""
            self.last_capture_wall = self.clock.wall()
            return self._shape(frame)

    async def read(self) -> dict[str, Reading]:
        """Frames delivered since connect, the last frame's time and the last capture error."""
        now = self.clock.wall()
        severity = Severity.MAJOR if self.last_error else Severity.OK
        return {
            "frames": Reading(Q_(self.frames, "dimensionless"), now, severity, self.last_error),
            "last_capture": Reading(
                Q_(self.last_capture_wall, "s"), now, severity, "Unix time of the last frame"
            ),
            "connected": Reading(self._connected, now),
        }

    def describe(self) -> dict[str, ReadingDescription]:
        return {
            "frames": ReadingDescription("", None, "frames delivered since connect()"),
            "last_capture": ReadingDescription("s", None, "wall time of the last frame (0: none)"),
            "connected": ReadingDescription("", None, "the source is open"),
        }

    async def identify(self) -> DeviceInfo:
        width, height = self.frame_size
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model=f"OpenCV VideoCapture ({self.backend or 'not opened'})",
            firmware=f"OpenCV {cv2.__version__}",
            port=self.source,
            status="connected" if self._connected else "closed",
            details={
                "backend": self.backend,
                "source": self.source,
                "source_kind": self.source_kind,
                "frame_width": width,
                "frame_height": height,
                "output_size": [self.width or width, self.height or height],
                "grey": self.grey,
                "fps": self.fps,
                "frame_count": self.frame_count,
                "frames_captured": self.frames,
                "reopen_each_capture": self.reopen_each_capture,
                "max_bytes": self.max_bytes,
                "max_pixels": self.max_pixels,
            },
        )


def _consume_result(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome so asyncio does not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()
