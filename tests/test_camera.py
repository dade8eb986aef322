"""Camera driver over cv2.VideoCapture (files, sequences, video, HTTP) and the simulated camera.

Real files written by OpenCV in tmp_path, a real HTTP server on 127.0.0.1 in a thread, the real
SimCamera under VirtualClock. No mocks.
"""

from __future__ import annotations

import http.server
import math
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import (
    Camera,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    Reading,
    Severity,
)
from kiboauto.drivers.camera import OpenCVCamera, classify_source
from kiboauto.hil.camera_sim import SimCamera

CLOCK = RealClock()


def pattern(i: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A frame that differs clearly from its neighbours: a bar at a position set by ``i``."""
    img = np.full((h, w, 3), 40, np.uint8)
    x = 8 + (i * 13) % (w - 24)
    img[:, x : x + 16] = (30 * (i % 8), 200, 255 - 20 * (i % 8))
    cv2.circle(img, (w // 2, h // 2), 10 + i % 20, (255, 255, 255), -1)
    return img


async def connected(cam: OpenCVCamera) -> OpenCVCamera:
    await cam.connect()
    return cam


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DRV-006")
def test_classify_source() -> None:
    assert classify_source(0) == ("device", 0)
    assert classify_source("2") == ("device", 2)
    assert classify_source("a/b/%04d.png")[0] == "sequence"
    assert classify_source("x.PNG")[0] == "image"
    assert classify_source("run.avi")[0] == "video"
    assert classify_source("http://127.0.0.1:8080/cell/1.jpg")[0] == "url"
    assert classify_source("rtsp://cam/stream")[0] == "stream"
    with pytest.raises(ValueError):
        classify_source("")


@pytest.mark.req("KA-DRV-006")
async def test_png_file(tmp_path: Path) -> None:
    path = tmp_path / "cell1.png"
    img = pattern(3)
    assert cv2.imwrite(str(path), img)
    cam = await connected(OpenCVCamera("cam", str(path), clock=CLOCK))
    try:
        for _ in range(2):  # a still: every capture reads the file again
            frame = await cam.capture()
            assert frame.dtype == np.uint8 and frame.shape == (96, 128, 3)
            assert np.array_equal(frame, img)
        # the file changes: the next capture shows the new content
        assert cv2.imwrite(str(path), pattern(5))
        assert np.array_equal(await cam.capture(), pattern(5))
        info = await cam.identify()
        assert info.kind == "camera" and info.protocol == "opencv"
        assert info.port == str(path) and info.status == "connected"
        assert info.details["backend"] and info.details["backend"] in info.model
        assert (info.details["frame_width"], info.details["frame_height"]) == (128, 96)
        assert info.details["source"] == str(path)
    finally:
        await cam.close()
    assert (await cam.identify()).status == "closed"


@pytest.mark.req("KA-DRV-006")
async def test_grey_and_resize(tmp_path: Path) -> None:
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), pattern(1))
    grey = await connected(OpenCVCamera("g", path, clock=CLOCK, grey=True))
    frame = await grey.capture()
    assert frame.shape == (96, 128) and frame.dtype == np.uint8
    assert np.array_equal(frame, cv2.cvtColor(pattern(1), cv2.COLOR_BGR2GRAY))
    await grey.close()
    small = await connected(OpenCVCamera("s", path, clock=CLOCK, width=64, height=48))
    assert (await small.capture()).shape == (48, 64, 3)
    await small.close()
    # a grey image file with grey=False still gives BGR frames
    gpath = tmp_path / "grey.png"
    cv2.imwrite(str(gpath), cv2.cvtColor(pattern(2), cv2.COLOR_BGR2GRAY))
    bgr = await connected(OpenCVCamera("b", gpath, clock=CLOCK))
    assert (await bgr.capture()).shape == (96, 128, 3)
    await bgr.close()
    with pytest.raises(ValueError):
        OpenCVCamera("x", path, clock=CLOCK, width=64)


@pytest.mark.req("KA-DRV-006")
async def test_image_sequence(tmp_path: Path) -> None:
    for i in range(5):
        assert cv2.imwrite(str(tmp_path / f"frame_{i:04d}.png"), pattern(i))
    cam = await connected(OpenCVCamera("seq", str(tmp_path / "frame_%04d.png"), clock=CLOCK))
    try:
        assert cam.source_kind == "sequence" and not cam.reopen_each_capture
        for i in range(5):
            assert np.array_equal(await cam.capture(), pattern(i)), f"frame {i}"
        with pytest.raises(DeviceDisconnected, match=r"end of .* after 5 frame"):
            await cam.capture()
        assert (await cam.identify()).details["frame_count"] == 5
    finally:
        await cam.close()


@pytest.mark.req("KA-DRV-006")
async def test_mjpg_avi(tmp_path: Path) -> None:
    path = tmp_path / "run.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (128, 96))
    assert writer.isOpened()
    for i in range(12):
        writer.write(pattern(i))
    writer.release()
    cam = await connected(OpenCVCamera("avi", str(path), clock=CLOCK))
    try:
        info = await cam.identify()
        assert info.details["frame_count"] == 12
        assert info.details["fps"] == pytest.approx(10.0)
        for i in range(12):
            frame = await cam.capture()
            assert frame.shape == (96, 128, 3)
            # MJPG is lossy: close to what was written, and far from the neighbouring frame
            err = np.abs(frame.astype(int) - pattern(i).astype(int)).mean()
            other = np.abs(frame.astype(int) - pattern(i + 1).astype(int)).mean()
            assert err < 4.0 and other > 4 * err, (i, err, other)
        with pytest.raises(DeviceDisconnected, match="after 12 frame"):
            await cam.capture()
    finally:
        await cam.close()
    # connect() starts the file again from its first frame
    again = await connected(OpenCVCamera("avi2", str(path), clock=CLOCK, grey=True))
    first = await again.capture()
    assert first.shape == (96, 128)
    assert np.abs(first.astype(int) - cv2.cvtColor(pattern(0), cv2.COLOR_BGR2GRAY)).mean() < 4
    await again.close()


@pytest.mark.req("KA-DRV-006")
async def test_missing_file_and_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "cell9.png"
    cam = OpenCVCamera("cam", str(missing), clock=CLOCK)
    with pytest.raises(DeviceDisconnected) as e:
        await cam.connect()
    assert str(missing) in str(e.value) and e.value.device == "cam"
    with pytest.raises(DeviceDisconnected, match="not connected"):
        await cam.capture()
    video = OpenCVCamera("v", str(tmp_path / "missing.avi"), clock=CLOCK)
    with pytest.raises(DeviceDisconnected, match=r"missing\.avi"):
        await video.connect()
    seq = OpenCVCamera("s", str(tmp_path / "frame_%04d.png"), clock=CLOCK)
    with pytest.raises(DeviceDisconnected, match=r"frame_%04d\.png"):
        await seq.connect()
    # an image that disappears after connect fails on the next capture
    path = tmp_path / "later.png"
    cv2.imwrite(str(path), pattern(0))
    still = await connected(OpenCVCamera("l", str(path), clock=CLOCK))
    path.unlink()
    with pytest.raises(DeviceDisconnected, match="no such file"):
        await still.capture()


@pytest.mark.req("KA-DRV-006")
async def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    cam = OpenCVCamera("cam", str(path), clock=CLOCK)
    with pytest.raises(DeviceError) as e:
        await cam.connect()
    assert not isinstance(e.value, DeviceDisconnected | DeviceTimeout)
    assert str(path) in str(e.value) and "corrupt" in str(e.value)
    # a good image at connect that is then overwritten with garbage
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), pattern(0))
    cam2 = await connected(OpenCVCamera("cam2", str(good), clock=CLOCK))
    good.write_bytes(os.urandom(3000))
    with pytest.raises(DeviceError, match="corrupt"):
        await cam2.capture()


@pytest.mark.req("KA-DRV-006")
async def test_missing_device_index() -> None:
    cam = OpenCVCamera("cam", 97, clock=CLOCK)
    with pytest.raises(DeviceDisconnected, match="camera device 97"):
        await cam.connect()


# ---------------------------------------------------------------------------------------------
# HTTP snapshots (a real server on 127.0.0.1, one PNG/JPEG per request, rendered by SimCamera)
# ---------------------------------------------------------------------------------------------
class _Snapshots(http.server.BaseHTTPRequestHandler):
    scene = SimCamera("served", seed=4, width=160, height=120, crystals=2, nucleation_h=(0, 0))
    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.served.append(self.path)
        if not self.path.startswith("/cell/"):
            self.send_error(404, "no such cell")
            return
        ext = ".jpg" if self.path.endswith(".jpg") else ".png"
        # each request shows a later moment: the image changes from request to request
        ok, data = cv2.imencode(ext, self.scene.render(3600.0 * len(self.served)))
        assert ok
        body = data.tobytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg" if ext == ".jpg" else "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def snapshot_server() -> Iterator[str]:
    _Snapshots.served = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Snapshots)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.req("KA-DRV-006")
@pytest.mark.parametrize("client", ["opencv", "urllib"])
async def test_http_snapshots(snapshot_server: str, client: str) -> None:
    assert cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG), "this OpenCV wheel has FFmpeg"
    cam = OpenCVCamera("cam", f"{snapshot_server}/cell/1.png", clock=CLOCK, http_client=client)
    assert cam.reopen_each_capture and cam.source_kind == "url"
    await cam.connect()
    try:
        first = await cam.capture()
        second = await cam.capture()
        assert first.shape == second.shape == (120, 160, 3)
        requests = len(_Snapshots.served)
        # the PNG is lossless: frame k is exactly what the server rendered for its request k
        expected = _Snapshots.scene.render(3600.0 * requests)
        assert np.array_equal(second, expected)
        assert not np.array_equal(first, second)  # one request per capture
        info = await cam.identify()
        assert info.details["frame_width"] == 160 and info.port.endswith("/cell/1.png")
        assert info.details["backend"] == ("FFMPEG" if client == "opencv" else "urllib+imdecode")
        jpg = await connected(
            OpenCVCamera("j", f"{snapshot_server}/cell/2.jpg", clock=CLOCK, http_client=client)
        )
        assert (await jpg.capture()).shape == (120, 160, 3)
        await jpg.close()
    finally:
        await cam.close()
    missing = OpenCVCamera("m", f"{snapshot_server}/nothing.png", clock=CLOCK, http_client=client)
    with pytest.raises(DeviceDisconnected):
        await missing.connect()
        await missing.capture()  # urllib only finds out on the first fetch


@pytest.mark.req("KA-DRV-006")
@pytest.mark.parametrize("client", ["opencv", "urllib"])
async def test_http_silent_server_times_out(client: str) -> None:
    # a server that accepts connections (kernel backlog) and never answers
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cell/1.png"
        cam = OpenCVCamera("cam", url, clock=CLOCK, timeout_s=0.3, http_client=client)
        cam._connected = True  # skip the probe at connect: time the capture itself
        loop_start = CLOCK.now()
        with pytest.raises(DeviceTimeout, match=r"within 0\.3 s"):
            await cam.capture()
        assert CLOCK.now() - loop_start < 0.6
        # the next capture first waits for the blocked thread, which gives up by itself after
        # 1.5 x timeout_s, then asks again (and times out again: the server is still silent)
        with pytest.raises(DeviceTimeout, match=r"within 0\.3 s"):
            await cam.capture()
    with pytest.raises(DeviceDisconnected):
        await cam.capture()  # nothing listens any more: refused at once
    await cam.close()


# ---------------------------------------------------------------------------------------------
# device protocol
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-DEV-001")
def test_cameras_satisfy_camera_protocol() -> None:
    assert isinstance(OpenCVCamera("c", "x.png", clock=CLOCK), Camera)
    assert isinstance(SimCamera("s"), Camera)
    assert OpenCVCamera.kind == SimCamera.kind == "camera"
    assert OpenCVCamera.protocol == "opencv"


@pytest.mark.req("KA-DEV-006")
def test_camera_readings_count_frames_and_report_failures(tmp_path: Path) -> None:
    image = tmp_path / "drop.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 90, np.uint8))
    clock = VirtualClock()

    async def main() -> tuple[dict[str, Reading], dict[str, Reading], dict[str, Reading]]:
        camera = OpenCVCamera("cam", str(image), clock=clock)
        await camera.connect()
        try:
            await camera.capture()
            await camera.capture()
            good = await camera.read()
            image.write_bytes(b"not an image any more")
            with pytest.raises(DeviceError):
                await camera.capture()
            bad = await camera.read()
        finally:
            await camera.close()
        sim = SimCamera("sim", clock=clock, width=160, height=120)
        await sim.connect()
        try:
            await sim.capture_cell(2)
            simulated = await sim.read()
        finally:
            await sim.close()
        return good, bad, simulated

    good, bad, simulated = clock.run(main())
    assert good["frames"].value.m == 2
    assert good["frames"].severity == Severity.OK
    assert good["connected"].value is True
    assert good["last_capture"].timestamp == pytest.approx(clock.wall())
    assert bad["frames"].value.m == 2  # the failed capture is not counted ...
    assert bad["frames"].severity == Severity.MAJOR  # ... and is reported with its reason
    assert bad["frames"].message
    assert simulated["frames"].value.m == 1
    assert set(simulated) == set(SimCamera("d").describe())


# ---------------------------------------------------------------------------------------------
# simulated camera
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-008")
def test_sim_camera_deterministic_for_a_seed() -> None:
    a, b, c = (SimCamera("a", seed=7), SimCamera("b", seed=7), SimCamera("c", seed=8))
    t = 30 * 3600.0
    fa, fb, fc = a.render(t), b.render(t), c.render(t)
    assert fa.shape == (960, 1280, 3) and fa.dtype == np.uint8
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    assert a.crystals == b.crystals != c.crystals
    grey = SimCamera("g", seed=7, grey=True, width=320, height=240).render(t)
    assert grey.shape == (240, 320) and grey.dtype == np.uint8


@pytest.mark.req("KA-HIL-008")
def test_sim_camera_crystals_grow_in_virtual_time() -> None:
    clock = VirtualClock()
    cam = SimCamera(
        "cell1", clock, seed=3, width=640, height=480, um_per_px=4.0, growth_um_per_h=10.0
    )
    cell = cam.cells[0]  # cell 1 always grows crystals

    async def main() -> list[tuple[float, np.ndarray, list[float], float]]:
        await cam.connect()
        shots = []
        for _ in range(4):
            area = sum(c.area_px for c in cam.truth().crystals)
            shots.append((clock.now(), await cam.capture(), cam.crystal_sizes_um(), area))
            await clock.sleep(12 * 3600)
        info = await cam.identify()
        assert info.details["frames_captured"] == 4 and info.status == "connected"
        await cam.close()
        return shots

    shots = clock.run(main())
    assert [t for t, _, _, _ in shots] == [0.0, 43200.0, 86400.0, 129600.0]
    assert all(size == 0 for size in shots[0][2])  # nothing has nucleated at t = 0
    first_nucleation = min(t for t in cell.nucleation_times(1e7) if t is not None)
    assert first_nucleation < 24 * 3600
    sizes = [sum(s) for _, _, s, _ in shots]
    areas = [a for _, _, _, a in shots]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert areas[0] == 0 and areas == sorted(areas) and areas[-1] > areas[1]
    # frames change as the crystals grow (and the noise differs frame to frame)
    assert not np.array_equal(shots[0][1], shots[-1][1])
    # linear at first (10 um/h at 20 degC), saturating at the crystal's final size
    plan = cam.crystals[0]
    expected = plan.final_um * -math.expm1(-10.0 / plan.final_um)
    assert plan.size_um(3600) == pytest.approx(expected) and 9.0 < expected < 10.0
    assert plan.size_um(1e9) == pytest.approx(plan.final_um)


@pytest.mark.req("KA-HIL-008")
def test_sim_camera_faults() -> None:
    clock = VirtualClock()
    cam = SimCamera("cell1", clock, width=160, height=120, timeout_s=5.0)

    async def main() -> None:
        with pytest.raises(DeviceDisconnected, match="not connected"):
            await cam.capture()
        await cam.connect()
        cam.inject_failure("timeout")
        start = clock.now()
        with pytest.raises(DeviceTimeout):
            await cam.capture()
        assert clock.now() - start == pytest.approx(5.0)
        cam.inject_failure("disconnect", count=2)
        for _ in range(2):
            with pytest.raises(DeviceDisconnected):
                await cam.capture()
        cam.inject_failure("corrupt")
        with pytest.raises(DeviceError, match="corrupt"):
            await cam.capture()
        cam.inject_failure("dark")
        dark = await cam.capture()
        assert dark.shape == (120, 160, 3) and dark.mean() < 5
        assert (await cam.capture()).mean() > 60  # faults used up: the lamp is back
        cam.inject_failure("corrupt", count=0)  # until cleared
        for _ in range(3):
            with pytest.raises(DeviceError):
                await cam.capture()
        cam.clear_failures()
        await cam.capture()
        assert list(cam.applied_failures)[:5] == [
            "timeout",
            "disconnect",
            "disconnect",
            "corrupt",
            "dark",
        ]
        with pytest.raises(ValueError, match="known"):
            cam.inject_failure("melt")

    clock.run(main())


@pytest.mark.req("KA-HIL-008")
async def test_sim_camera_frames_read_back_through_opencv(tmp_path: Path) -> None:
    """A SimCamera frame saved as PNG comes back unchanged through the OpenCV driver."""
    sim = SimCamera("cell1", RealClock(), seed=5, width=320, height=240, nucleation_h=(0, 0))
    await sim.connect()
    frame = await sim.capture()
    cv2.imwrite(str(tmp_path / "shot.png"), frame)
    cam = await connected(OpenCVCamera("cam", str(tmp_path / "shot.png"), clock=CLOCK))
    assert np.array_equal(await cam.capture(), frame)
    await cam.close()
