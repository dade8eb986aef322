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

Threading: ``cv2.VideoCapture`` calls block the calling thread (OpenCV offers no asynchronous
API), so every OpenCV call runs in the event loop's default executor, one call at a time per
camera (an :class:`asyncio.Lock`), with a timeout on the injected clock. A call that is still
blocked when its timeout expires cannot be interrupted; the camera remembers it and refuses new
calls until it has returned. The thread also means this driver needs a real or scaled clock: under
:class:`~kiboauto.clock.VirtualClock` time would jump to the timeout while the thread works (use
:class:`kiboauto.hil.camera_sim.SimCamera` in virtual time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto.clock import Clock
from kiboauto.devices import DeviceDisconnected, DeviceError, DeviceInfo, DeviceTimeout

__all__ = ["IMAGE_SUFFIXES", "OpenCVCamera", "classify_source"]

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


class OpenCVCamera:
    """A camera read through ``cv2.VideoCapture`` (device, video file, image sequence or URL).

    Options: ``width``/``height`` (asked of a device; any frame of another size is resized to
    them), ``grey`` (single-channel frames), ``timeout_s`` (per OpenCV call, protocol seconds),
    ``reopen_each_capture`` (open, read one frame, release; default on for http(s) URLs and single
    image files), ``http_client`` (``"auto"``, ``"opencv"`` or ``"urllib"``: how http(s) snapshots
    are fetched; ``auto`` uses OpenCV when its FFmpeg backend is present, else urllib + imdecode).
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
            http_client = "opencv" if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else "urllib"
        self.http_client = http_client

        self._lock = asyncio.Lock()
        self._cap: cv2.VideoCapture | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._stale = False  # a timed-out call may have left the capture in an unknown state
        self._connected = False
        self.frames = 0  # frames delivered since connect()
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

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run one blocking call in the default executor within ``timeout_s`` of clock time."""
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
        future: asyncio.Future[T] = loop.run_in_executor(None, fn)
        self._inflight = future
        future.add_done_callback(_consume_result)
        try:
            async with self.clock.timeout(self.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            self._stale = True
            raise DeviceTimeout(
                self.name, f"{what}: no answer from {self.source} within {self.timeout_s:g} s"
            ) from None

    # -- blocking helpers (run in the executor thread) --------------------------------------------
    def _open_blocking(self) -> cv2.VideoCapture:
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
        self.backend = cap.getBackendName()
        self.frame_size = (width, height)
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if 0 < count < 2**31 else 0
        return cap

    def _read_blocking(self, cap: cv2.VideoCapture) -> Frame:
        ok, frame = cap.read()
        if ok and frame is not None and frame.size > 0:
            return np.asarray(frame, dtype=np.uint8)
        if self.source_kind in ("video", "sequence") and self.frames > 0:
            raise DeviceDisconnected(
                self.name, f"read failed: end of {self.source} after {self.frames} frame(s)"
            )
        if self.source_kind in ("video", "sequence", "image"):
            raise DeviceError(
                self.name, f"read failed: {self.source} does not decode to an image (corrupt?)"
            )
        raise DeviceDisconnected(self.name, f"read failed on {self.source_kind} {self.source}")

    def _snapshot_blocking(self) -> Frame:
        """Open, read one frame, release: for URLs and still images."""
        if self._uses_urllib:
            return self._fetch_blocking()
        cap = self._open_blocking()
        try:
            return self._read_blocking(cap)
        finally:
            cap.release()

    def _fetch_blocking(self) -> Frame:
        """http(s) snapshot without OpenCV's FFmpeg: fetch the bytes, decode with ``imdecode``."""
        try:
            with urllib.request.urlopen(self.source, timeout=self._backstop_s) as reply:
                body = reply.read()
        except urllib.error.HTTPError as e:
            raise DeviceDisconnected(self.name, f"HTTP {e.code} from {self.source}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeviceDisconnected(self.name, f"cannot fetch {self.source}: {reason}") from None
        image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise DeviceError(
                self.name, f"{self.source} sent {len(body)} bytes that do not decode to an image"
            )
        self.backend = "urllib+imdecode"
        self.frame_size = (int(image.shape[1]), int(image.shape[0]))
        return np.asarray(image, dtype=np.uint8)

    def _capture_blocking(self) -> Frame:
        if self.reopen_each_capture:
            return self._snapshot_blocking()
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

    def _release_blocking(self) -> None:
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
                if not self._uses_urllib:
                    cap = await self._call(self._open_blocking, "open")
                    await self._call(cap.release, "release")
            else:
                await self._call(self._release_blocking, "release")
                self._stale = False
                self._cap = await self._call(self._open_blocking, "open")
            self._connected = True

    async def close(self) -> None:
        async with self._lock:
            self._connected = False
            with contextlib.suppress(DeviceError):
                await self._call(self._release_blocking, "release")

    async def capture(self) -> Frame:
        """One frame: BGR ``(h, w, 3)`` or, with ``grey``, ``(h, w)``; ``uint8``."""
        async with self._lock:
            if not self._connected:
                raise DeviceDisconnected(self.name, "not connected (call connect() first)")
            frame = await self._call(self._capture_blocking, "capture")
            self.frames += 1
            return self._shape(frame)

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
            },
        )


def _consume_result(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome so asyncio does not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()
