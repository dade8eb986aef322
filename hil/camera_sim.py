"""A simulated growth-cell camera: a seeded test scene of a crystallisation well, in process.

:class:`SimCamera` is hardware for HIL rigs and tests. It has no wire protocol (the HIL server
serves its frames as PNG over HTTP, which :class:`kiboauto.drivers.camera.OpenCVCamera` reads);
it satisfies :class:`kiboauto.devices.Camera` directly.

The scene is deliberately simple (a later renderer replaces it) and fully determined by the seed
and the clock time of the capture:

* an illumination gradient (brighter on one side, darker towards the corners);
* the dark ring of the well wall;
* a drop with an irregular edge (a circle whose radius wobbles with a few seeded harmonics) and a
  darker meniscus line;
* ``crystals`` bright faceted polygons inside the drop, each nucleating at a seeded time and then
  growing linearly at ``growth_um_per_h`` until its seeded final size;
* Gaussian sensor noise, seeded from the seed and the capture time.

Faults (:meth:`SimCamera.inject_failure`): ``timeout`` (the capture hangs; it raises
:class:`DeviceTimeout` after ``timeout_s`` of clock time), ``disconnect``
(:class:`DeviceDisconnected`),
``corrupt`` (:class:`DeviceError`: the frame arrived damaged and is refused, as a driver would),
``dark`` (the lamp is off: a valid frame of noise on black, no error).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto import __version__
from kiboauto.clock import Clock, RealClock
from kiboauto.devices import DeviceDisconnected, DeviceError, DeviceInfo, DeviceTimeout

__all__ = ["CAMERA_FAILURES", "SimCamera", "SimCrystal"]

Frame = npt.NDArray[np.uint8]

#: the faults :meth:`SimCamera.inject_failure` knows
CAMERA_FAILURES = ("timeout", "disconnect", "corrupt", "dark")


@dataclass(frozen=True)
class SimCrystal:
    """One crystal of the scene: where it is, when it nucleates, how it grows (ground truth)."""

    x_px: float
    y_px: float
    angle_rad: float
    aspect: float  # length / width
    sides: int  # facets of its outline (4: rhomb, 6: hexagonal prism seen from the side)
    nucleation_s: float
    final_um: float
    growth_um_per_s: float

    def size_um(self, t: float) -> float:
        """Longest dimension at clock time ``t`` (0 before nucleation)."""
        if t <= self.nucleation_s:
            return 0.0
        return min(self.final_um, (t - self.nucleation_s) * self.growth_um_per_s)


class SimCamera:
    """An in-process camera that renders a seeded crystallisation-well scene at clock time.

    Options: ``width`` (1280), ``height`` (960), ``um_per_px`` (2.0: the field is 2.56 x 1.92 mm),
    ``crystals`` (3), ``growth_um_per_h`` (5.0), ``nucleation_h`` ((2, 24): nucleation times are
    drawn from this range), ``max_crystal_um`` (250), ``noise`` (sensor noise sigma in grey
    levels, 3.0), ``grey`` (False), ``timeout_s`` (5.0: how long a hung capture takes to fail).
    """

    protocol: ClassVar[str] = "camera"  # the rig-file key (hil/rig.py); no wire protocol
    kind: ClassVar[str] = "camera"

    def __init__(
        self,
        name: str,
        clock: Clock | None = None,
        *,
        seed: int = 0,
        width: int = 1280,
        height: int = 960,
        um_per_px: float = 2.0,
        crystals: int = 3,
        growth_um_per_h: float = 5.0,
        nucleation_h: tuple[float, float] | list[float] = (2.0, 24.0),
        max_crystal_um: float = 250.0,
        noise: float = 3.0,
        grey: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        if width < 64 or height < 64:
            raise ValueError(f"{name}: frame must be at least 64x64, got {width}x{height}")
        if um_per_px <= 0 or growth_um_per_h < 0 or max_crystal_um <= 0 or crystals < 0:
            raise ValueError(f"{name}: um_per_px and max_crystal_um must be > 0, others >= 0")
        lo, hi = (float(v) for v in nucleation_h)
        if not 0 <= lo <= hi:
            raise ValueError(f"{name}: nucleation_h must be (min, max) with 0 <= min <= max")
        self.name = name
        self.clock: Clock = clock if clock is not None else RealClock()
        self.seed = int(seed)
        self.width = int(width)
        self.height = int(height)
        self.um_per_px = float(um_per_px)
        self.growth_um_per_h = float(growth_um_per_h)
        self.noise = float(noise)
        self.grey = bool(grey)
        self.timeout_s = float(timeout_s)
        self.connected = False
        self.frames = 0
        self._failures: list[list[Any]] = []  # [kind, remaining (0: until cleared)]
        self.applied_failures: list[str] = []

        rng = np.random.default_rng([self.seed, 0xCA3E])
        short = min(self.width, self.height)
        self.well_center = (
            self.width / 2 + rng.uniform(-0.02, 0.02) * short,
            self.height / 2 + rng.uniform(-0.02, 0.02) * short,
        )
        self.well_radius = 0.46 * short
        self.drop_radius = 0.30 * short
        # the drop edge: radius(theta) = r0 * (1 + sum a_k cos(k theta + phi_k)), k = 2..6
        self._drop_harmonics = [
            (k, rng.uniform(0.01, 0.05) / k * 2, rng.uniform(0, 2 * math.pi)) for k in range(2, 7)
        ]
        self._gradient_angle = rng.uniform(0, 2 * math.pi)
        growth = self.growth_um_per_h / 3600.0
        self.crystals: list[SimCrystal] = []
        for _ in range(int(crystals)):
            r = self.drop_radius * 0.7 * math.sqrt(rng.uniform(0, 1))
            a = rng.uniform(0, 2 * math.pi)
            self.crystals.append(
                SimCrystal(
                    x_px=self.well_center[0] + r * math.cos(a),
                    y_px=self.well_center[1] + r * math.sin(a),
                    angle_rad=rng.uniform(0, math.pi),
                    aspect=rng.uniform(1.0, 2.5),
                    sides=int(rng.choice([4, 6])),
                    nucleation_s=rng.uniform(lo, hi) * 3600.0,
                    final_um=rng.uniform(0.5, 1.0) * float(max_crystal_um),
                    growth_um_per_s=growth,
                )
            )
        self._background: npt.NDArray[np.float32] | None = None

    def __repr__(self) -> str:
        return f"SimCamera({self.name!r}, seed={self.seed})"

    # -- faults ------------------------------------------------------------------------------
    def inject_failure(self, kind: str, count: int = 1) -> None:
        """The next ``count`` captures fail with ``kind`` (``count=0``: until cleared)."""
        if kind not in CAMERA_FAILURES:
            raise ValueError(
                f"unknown camera failure {kind!r}; known: {', '.join(CAMERA_FAILURES)}"
            )
        if count < 0:
            raise ValueError("count must be >= 0")
        self._failures.append([kind, int(count)])

    def clear_failures(self) -> None:
        self._failures.clear()

    def _next_failure(self) -> str | None:
        if not self._failures:
            return None
        entry = self._failures[0]
        kind = str(entry[0])
        if entry[1] > 0:
            entry[1] -= 1
            if entry[1] == 0:
                self._failures.pop(0)
        self.applied_failures.append(kind)
        return kind

    # -- ground truth ------------------------------------------------------------------------
    def crystal_sizes_um(self, t: float | None = None) -> list[float]:
        """Each crystal's longest dimension at clock time ``t`` (default: now)."""
        when = self.clock.now() if t is None else t
        return [c.size_um(when) for c in self.crystals]

    # -- rendering ---------------------------------------------------------------------------
    def _static_scene(self) -> npt.NDArray[np.float32]:
        """Everything that does not change with time, as float32 BGR (rendered once)."""
        if self._background is not None:
            return self._background
        h, w = self.height, self.width
        cx, cy = self.well_center
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # illumination: a linear gradient across the field and a soft vignette
        ux, uy = math.cos(self._gradient_angle), math.sin(self._gradient_angle)
        span = float(max(w, h))
        linear = 1.0 + 0.12 * (((xx - w / 2) * ux + (yy - h / 2) * uy) / span)
        dist = np.hypot(xx - cx, yy - cy)
        vignette = 1.0 - 0.25 * (dist / (0.75 * span)) ** 2
        light = np.clip(linear * vignette, 0.2, 1.2)
        level = np.where(dist < self.well_radius, 200.0, 120.0).astype(np.float32)
        # the well wall: a dark ring with soft edges
        ring = np.exp(-(((dist - self.well_radius) / (0.025 * min(w, h))) ** 2))
        level = level * (1.0 - 0.8 * ring)
        # the drop: slightly darker and warmer inside an irregular edge, darker meniscus at it
        theta = np.arctan2(yy - cy, xx - cx)
        edge = np.full_like(theta, self.drop_radius)
        for k, amp, phase in self._drop_harmonics:
            edge += self.drop_radius * amp * np.cos(k * theta + phase)
        inside = dist < edge
        meniscus = np.exp(-(((dist - edge) / 4.0) ** 2))
        level = level * np.where(inside, 0.9, 1.0) * (1.0 - 0.45 * meniscus)
        grey = level * light
        tint = np.where(inside, 1.0, 0.0)[..., None] * np.array([-10.0, 0.0, 8.0], np.float32)
        scene = np.repeat(grey[..., None], 3, axis=2) + tint
        self._background = scene.astype(np.float32)
        return self._background

    def _draw_crystals(self, img: npt.NDArray[np.float32], t: float) -> None:
        for c in self.crystals:
            length_px = c.size_um(t) / self.um_per_px
            if length_px < 1.0:
                continue
            half_l, half_w = length_px / 2, length_px / (2 * c.aspect)
            ca, sa = math.cos(c.angle_rad), math.sin(c.angle_rad)
            # outline in the crystal frame: a rhomb (4) or an elongated hexagon (6)
            if c.sides == 4:
                local = [(half_l, 0.0), (0.0, half_w), (-half_l, 0.0), (0.0, -half_w)]
            else:
                tip = 0.6 * half_l
                local = [
                    (half_l, 0.0), (tip, half_w), (-tip, half_w),
                    (-half_l, 0.0), (-tip, -half_w), (tip, -half_w),
                ]  # fmt: skip
            pts = [(c.x_px + u * ca - v * sa, c.y_px + u * sa + v * ca) for u, v in local]
            # facets: triangles from the centre, each lit differently
            for i in range(len(pts)):
                a, b = pts[i], pts[(i + 1) % len(pts)]
                tri = np.array([[c.x_px, c.y_px], a, b], dtype=np.float64)
                shade = 235.0 + 20.0 * math.cos(c.angle_rad + 2 * math.pi * i / len(pts))
                color = (min(255.0, shade + 10.0), shade, shade - 15.0)
                cv2.fillConvexPoly(
                    img, np.round(tri * 16).astype(np.int32), color, cv2.LINE_AA, shift=4
                )
            outline = np.round(np.array(pts) * 16).astype(np.int32)
            cv2.polylines(img, [outline], True, (60.0, 60.0, 60.0), 1, cv2.LINE_AA, shift=4)

    def render(self, t: float, *, dark: bool = False) -> Frame:
        """The frame the camera sees at clock time ``t`` (deterministic for seed and ``t``)."""
        if dark:
            img = np.zeros((self.height, self.width, 3), np.float32)
        else:
            img = self._static_scene().copy()
            self._draw_crystals(img, t)
        if self.noise > 0:
            rng = np.random.default_rng([self.seed, 0x5E5, round(t * 1e6)])
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise)
        frame: Frame = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if self.grey:
            grey: Frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
            return grey
        return frame

    # -- Camera protocol ---------------------------------------------------------------------
    async def connect(self) -> None:
        self.connected = True
        self.frames = 0

    async def close(self) -> None:
        self.connected = False

    async def identify(self) -> DeviceInfo:
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model="SimCamera test scene",
            firmware=f"kiboauto {__version__}",
            port="in-process",
            status="connected" if self.connected else "closed",
            details={
                "seed": self.seed,
                "frame_width": self.width,
                "frame_height": self.height,
                "grey": self.grey,
                "um_per_px": self.um_per_px,
                "crystals": len(self.crystals),
                "growth_um_per_h": self.growth_um_per_h,
                "frames_captured": self.frames,
            },
        )

    async def capture(self) -> Frame:
        """The scene at ``clock.now()``: BGR ``(height, width, 3)`` or grey ``(height, width)``."""
        if not self.connected:
            raise DeviceDisconnected(self.name, "not connected (call connect() first)")
        failure = self._next_failure()
        if failure == "timeout":
            try:
                async with self.clock.timeout(self.timeout_s):
                    await asyncio.Event().wait()  # the camera never delivers
            except TimeoutError:
                pass
            raise DeviceTimeout(self.name, f"no frame within {self.timeout_s:g} s")
        if failure == "disconnect":
            raise DeviceDisconnected(self.name, "camera not responding (unplugged?)")
        if failure == "corrupt":
            raise DeviceError(self.name, "frame arrived corrupt (truncated image data)")
        frame = self.render(self.clock.now(), dark=failure == "dark")
        self.frames += 1
        return frame
