"""A simulated growth-cell camera: rendered crystallisation drops that grow with clock time.

:class:`SimCamera` is hardware for HIL rigs and tests. It has no wire protocol (the HIL server
serves its frames as PNG over HTTP, which :class:`kiboauto.drivers.camera.OpenCVCamera` reads);
it satisfies :class:`kiboauto.devices.Camera` directly.

The camera looks at ``cells`` growth cells (:class:`kiboauto.hil.growth.GrowthCell`), one at a
time (:meth:`SimCamera.select_cell`, like a plate imager moving to a well). A capture renders the
selected cell at ``clock.now()`` with :func:`kiboauto.hil.scene.render`: its crystals have the
sizes the growth model gives for the temperature history so far (``temperature``: a constant, a
callable ``T(t)`` in degC at clock time ``t``, a list of ``(t, degC)`` steps, or ``incubator``:
an object with ``temperature()`` (e.g. :class:`kiboauto.hil.thermal_sim.ThermalSim`) sampled every
``temperature_sample_s`` of clock time while connected). Cell 1 always grows crystals; the others
draw their outcome (crystals, precipitate, clear) from their seed. Deterministic for a seed and a
clock time (the sensor noise is seeded by the capture time).

Faults (:meth:`SimCamera.inject_failure`): ``timeout`` (the capture hangs; it raises
:class:`DeviceTimeout` after ``timeout_s`` of clock time), ``disconnect``
(:class:`DeviceDisconnected`), ``corrupt`` (:class:`DeviceError`: the frame arrived damaged and is
refused, as a driver would), ``dark`` (the lamp is off: a valid frame of noise on black, no error).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto import __version__
from kiboauto.clock import Clock, RealClock
from kiboauto.devices import (
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    Reading,
    ReadingDescription,
    Severity,
)
from kiboauto.units import Q_

from .growth import CrystalPlan, GrowthCell, GrowthParams, TemperatureHistory, TemperatureLog
from .scene import SceneTruth, render

__all__ = ["CAMERA_FAILURES", "SimCamera"]

Frame = npt.NDArray[np.uint8]

#: the faults :meth:`SimCamera.inject_failure` knows
CAMERA_FAILURES = ("timeout", "disconnect", "corrupt", "dark")


class SimCamera:
    """An in-process camera over ``cells`` simulated growth cells.

    Options: ``width`` (1280), ``height`` (960), ``um_per_px`` (2.0), ``cells`` (8), ``crystals``
    (most crystals per cell, 8), ``growth_um_per_h`` (initial growth rate at 20 degC; default
    drawn per crystal from 4..15), ``nucleation_h`` (induction time range at 20 degC, (2, 12)),
    ``max_crystal_um`` (largest final size, 300), ``noise`` (sensor sigma in grey levels, 2.0),
    ``grey`` (False: BGR frames), ``polarised`` (colour frames with birefringence colours),
    ``jpeg_quality`` (None: no JPEG artefacts), ``mixed_at_s`` (clock time the drops were set
    up, 0), ``temperature`` / ``incubator`` / ``temperature_sample_s`` (see the module doc),
    ``timeout_s`` (5.0: how long a hung capture takes to fail), ``scene`` (``drops``, or ``cells``:
    phase-contrast fields of adherent cells whose confluence grows logistically from
    ``seeded_confluence`` (0.15) with ``doubling_h`` (30), for cell-culture protocols).
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
        cells: int = 8,
        crystals: int | None = None,
        growth_um_per_h: float | None = None,
        nucleation_h: tuple[float, float] | list[float] | None = None,
        max_crystal_um: float | None = None,
        noise: float = 2.0,
        grey: bool = False,
        polarised: bool = False,
        jpeg_quality: int | None = None,
        mixed_at_s: float = 0.0,
        temperature: float | Callable[[float], float] | Sequence[tuple[float, float]] | None = None,
        incubator: Any = None,
        temperature_sample_s: float = 300.0,
        timeout_s: float = 5.0,
        scene: str = "drops",
        seeded_confluence: float = 0.15,
        doubling_h: float = 30.0,
    ) -> None:
        if scene not in ("drops", "cells"):
            raise ValueError(f"{name}: scene must be 'drops' or 'cells', not {scene!r}")
        if not (0 < seeded_confluence < 1 and doubling_h > 0):
            raise ValueError(f"{name}: need 0 < seeded_confluence < 1 and doubling_h > 0")
        self.scene = scene
        self.seeded_confluence = float(seeded_confluence)
        self.doubling_h = float(doubling_h)
        self.mixed_at_s = float(mixed_at_s)
        if width < 64 or height < 64:
            raise ValueError(f"{name}: frame must be at least 64x64, got {width}x{height}")
        if um_per_px <= 0 or cells < 1 or (crystals is not None and crystals < 0):
            raise ValueError(f"{name}: um_per_px must be > 0, cells >= 1, crystals >= 0")
        if temperature is not None and incubator is not None:
            raise ValueError(f"{name}: give temperature or incubator, not both")
        self.name = name
        self.clock: Clock = clock if clock is not None else RealClock()
        self.seed = int(seed)
        self.width = int(width)
        self.height = int(height)
        self.um_per_px = float(um_per_px)
        self.noise = float(noise)
        self.grey = bool(grey)
        self.polarised = bool(polarised)
        self.jpeg_quality = jpeg_quality
        self.timeout_s = float(timeout_s)
        self.connected = False
        self.frames = 0
        self._failures: list[list[Any]] = []  # [kind, remaining (0: until cleared)]
        # What was injected and applied, newest last (bounded: a long run keeps the last 1000).
        self.applied_failures: deque[str] = deque(maxlen=1000)

        base = GrowthParams()
        params = GrowthParams(
            max_crystals=base.max_crystals if crystals is None else int(crystals),
            growth_um_per_h=(
                base.growth_um_per_h
                if growth_um_per_h is None
                else (float(growth_um_per_h), float(growth_um_per_h))
            ),
            induction_h=base.induction_h if nucleation_h is None else _range(nucleation_h, name),
            final_um=(
                base.final_um
                if max_crystal_um is None
                else (0.5 * float(max_crystal_um), float(max_crystal_um))
            ),
        )
        self.params = params
        self.incubator = incubator
        self.temperature_log: TemperatureLog | None = None
        self.history: TemperatureHistory
        if incubator is not None:
            read = getattr(incubator, "temperature", None)
            if not callable(read):
                raise ValueError(f"{name}: incubator {incubator!r} has no temperature() method")
            self.temperature_log = TemperatureLog(read, self.clock, period_s=temperature_sample_s)
            self.history = self.temperature_log
        elif temperature is None:
            self.history = 20.0
        else:
            self.history = temperature if callable(temperature) else _steps_or_const(temperature)
        self._sampler: asyncio.Task[None] | None = None
        look = {"noise": self.noise, "colour": self.polarised, "jpeg_quality": jpeg_quality}
        self.cells: list[GrowthCell] = []
        for n in range(1, int(cells) + 1):
            cell_seed = int(np.random.SeedSequence([self.seed, n, 0xCE]).generate_state(1)[0])
            self.cells.append(
                GrowthCell(
                    seed=cell_seed,
                    mixed_at_s=float(mixed_at_s),
                    params=params,
                    outcome="crystals" if n == 1 else None,
                    width=self.width,
                    height=self.height,
                    um_per_px=self.um_per_px,
                    scene=look,
                )
            )
        self.selected = 1

    def __repr__(self) -> str:
        return f"SimCamera({self.name!r}, seed={self.seed}, cells={len(self.cells)})"

    # -- cells -------------------------------------------------------------------------------
    def _cell(self, n: int | None) -> GrowthCell:
        n = self.selected if n is None else n
        if not 1 <= n <= len(self.cells):
            raise ValueError(f"{self.name}: no cell {n} (cells 1..{len(self.cells)})")
        return self.cells[n - 1]

    def select_cell(self, n: int) -> None:
        """Look at cell ``n`` (1-based) from the next capture on."""
        self._cell(n)
        self.selected = int(n)

    @property
    def crystals(self) -> list[CrystalPlan]:
        """The crystals the selected cell can grow (seeded plans; sizes depend on temperature)."""
        return [p for p in self._cell(None).plans if math.isfinite(p.theta_s)]

    def crystal_sizes_um(self, t: float | None = None, cell: int | None = None) -> list[float]:
        """Each potential crystal's size in um at clock time ``t`` (default: now; 0: none yet)."""
        when = self.clock.now() if t is None else t
        self._sample_temperature()
        return self._cell(cell).sizes_um(when, self.history)

    def _sample_temperature(self) -> None:
        if self.temperature_log is not None:
            self.temperature_log.sample()

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

    # -- rendering ---------------------------------------------------------------------------
    def render_with_truth(self, t: float, cell: int | None = None) -> tuple[Frame, SceneTruth]:
        """The frame of a cell at clock time ``t`` and its exact ground truth."""
        spec = self._cell(cell).spec(t, self.history, noise_seed=round(t * 1000))
        image, truth = render(spec)
        frame: Frame = np.asarray(image, dtype=np.uint8)
        if self.grey and frame.ndim == 3:
            frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
        elif not self.grey and frame.ndim == 2:
            frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
        return frame, truth

    def confluence(self, t: float, cell: int | None = None) -> float:
        """Cell coverage of a field (``scene: cells``) at clock time ``t``: logistic growth from
        ``seeded_confluence`` at ``mixed_at_s`` with a doubling time of ``doubling_h`` while
        sparse (each field a little different, from the seed)."""
        n = self.selected if cell is None else cell
        self._cell(n)
        jitter = 1.0 + 0.1 * math.sin(self.seed * 7.1 + n * 2.3)
        rate = math.log(2.0) / (self.doubling_h * 3600.0) * jitter
        growth = math.exp(rate * max(0.0, t - self.mixed_at_s))
        c0 = self.seeded_confluence
        return c0 * growth / (1.0 + c0 * (growth - 1.0))

    def _render_cells(self, t: float, cell: int | None) -> Frame:
        from .scene_cells import render_cells

        n = self.selected if cell is None else cell
        target = min(0.95, self.confluence(t, n))
        seed = int(np.random.SeedSequence([self.seed, n, round(t)]).generate_state(1)[0])
        image, _ = render_cells(seed, target, width=self.width, height=self.height)
        frame: Frame = np.asarray(image, dtype=np.uint8)
        if not self.grey and frame.ndim == 2:
            frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
        return frame

    def render(self, t: float, *, dark: bool = False, cell: int | None = None) -> Frame:
        """The frame the camera sees at clock time ``t`` (deterministic for seed and ``t``)."""
        if self.scene == "cells" and not dark:
            return self._render_cells(t, cell)
        if dark:
            shape = (self.height, self.width) if self.grey else (self.height, self.width, 3)
            rng = np.random.default_rng([self.seed, 0xDA, round(t * 1000)])
            noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(self.noise)
            dark_frame: Frame = np.clip(noise + 2.5, 0, 255).astype(np.uint8)
            return dark_frame
        return self.render_with_truth(t, cell)[0]

    def truth(self, cell: int | None = None, t: float | None = None) -> SceneTruth:
        """Ground truth of a cell at clock time ``t`` (default: now)."""
        when = self.clock.now() if t is None else t
        self._sample_temperature()
        return render(self._cell(cell).spec(when, self.history, noise_seed=0))[1]

    # -- Camera protocol ---------------------------------------------------------------------
    async def connect(self) -> None:
        self.connected = True
        self.frames = 0
        if self.temperature_log is not None and self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self.temperature_log.run())

    async def close(self) -> None:
        self.connected = False
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sampler
            self._sampler = None

    async def identify(self) -> DeviceInfo:
        source = "constant 20 degC"
        if self.incubator is not None:
            source = f"incubator {getattr(self.incubator, 'name', self.incubator)!r}"
        elif callable(self.history):
            source = "profile T(t)"
        elif not isinstance(self.history, float | int):
            source = "temperature steps"
        elif self.history != 20.0:
            source = f"constant {self.history:g} degC"
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model="SimCamera growth-cell imager (rendered scene)",
            firmware=f"kiboauto {__version__}",
            port="in-process",
            status="connected" if self.connected else "closed",
            details={
                "seed": self.seed,
                "frame_width": self.width,
                "frame_height": self.height,
                "grey": self.grey,
                "polarised": self.polarised,
                "um_per_px": self.um_per_px,
                "cells": len(self.cells),
                "selected_cell": self.selected,
                "cell_outcomes": [c.outcome for c in self.cells],
                "temperature": source,
                "frames_captured": self.frames,
            },
        )

    async def capture(self) -> Frame:
        """The selected cell at ``clock.now()``: BGR ``(h, w, 3)`` or grey ``(h, w)``, uint8."""
        return await self.capture_cell(self.selected)

    async def read(self) -> dict[str, Reading]:
        """Frames delivered since connect and the selected growth cell."""
        now = self.clock.wall()
        severity = Severity.OK if self.connected else Severity.MAJOR
        return {
            "frames": Reading(Q_(self.frames, "dimensionless"), now, severity),
            "selected_cell": Reading(Q_(self.selected, "dimensionless"), now, severity),
            "connected": Reading(self.connected, now, severity),
        }

    def describe(self) -> dict[str, ReadingDescription]:
        return {
            "frames": ReadingDescription("", None, "frames delivered since connect()"),
            "selected_cell": ReadingDescription(
                "", (1.0, float(len(self.cells))), "growth cell capture() shows"
            ),
            "connected": ReadingDescription("", None, "the camera is open"),
        }

    async def capture_cell(self, n: int) -> Frame:
        """Cell ``n`` at ``clock.now()`` (does not change the selected cell)."""
        self._cell(n)
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
        self._sample_temperature()
        frame = self.render(self.clock.now(), dark=failure == "dark", cell=n)
        self.frames += 1
        return frame


def _range(value: tuple[float, float] | list[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name}: nucleation_h must be (min, max) with 0 <= min <= max")
    return lo, hi


def _steps_or_const(value: Any) -> TemperatureHistory:
    if isinstance(value, int | float):
        return float(value)
    steps = [(float(t), float(v)) for t, v in value]
    if not steps:
        raise ValueError("temperature steps must not be empty")
    return steps
