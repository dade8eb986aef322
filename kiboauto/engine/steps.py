"""What each kind of leaf step does to the devices, journaled.

Pump steps are exactly-once **per step**: before moving, a step adds up what the journal's
``actions`` rows with its execution key say was already delivered (a previous attempt, a move
stopped by a hold, a move reconciled after a crash) and moves only the remainder; the intent of
each move (its :class:`~kiboauto.devices.ActionMarker`) is committed before its start is sent.
Every other step kind can safely run again. Images are kept in the run directory with their
SHA-256 beside the inspection result and the vision version: the evidence of every decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from kiboauto import __version__
from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionStatus,
    Camera,
    DeviceError,
    SyringePump,
    ThermalController,
    Valve,
)
from kiboauto.engine.executor import StepFailed
from kiboauto.engine.program import Values, literal_in, resolve
from kiboauto.journal import Journal
from kiboauto.protocol.model import (
    CaptureStep,
    CrewStep,
    DispenseStep,
    EventStep,
    HoldStep,
    InitializeStep,
    InspectStep,
    PumpArgs,
    SelectPortStep,
    SetTemperatureStep,
    StepBase,
    WaitStep,
    WithdrawStep,
)
from kiboauto.protocol.model import (
    Protocol as ProtocolModel,
)
from kiboauto.units import Q_, as_quantity

__all__ = ["VISION_VERSION", "GrowthCellCamera", "LeafSteps"]

log = logging.getLogger(__name__)

VISION_VERSION = f"kiboauto.vision {__version__}"
"""Written beside every inspection result: which vision core took the decision."""


@runtime_checkable
class GrowthCellCamera(Protocol):
    """A camera that can image one of several growth cells (a plate imager moving to a well)."""

    async def capture_cell(self, n: int) -> Any: ...


class StepError(StepFailed):
    """A leaf step failed (the executor applies the step's policy)."""


class LeafSteps:
    """Runs leaf steps against the run's devices; called by the executor with (step, label,
    execution key)."""

    def __init__(
        self,
        protocol: ProtocolModel,
        devices: dict[str, Any],
        journal: Journal,
        clock: Clock,
        values: Values,
        run_dir: Path,
        *,
        protocol_time: Callable[[], float],
        timers: dict[str, float],
        save_timers: Callable[[], None],
        hold: Callable[[str], Awaitable[None]],
        wait_released: Callable[[], Awaitable[None]],
        event: Callable[[str, str, str], None],
        power: Callable[[str, str], contextlib.AbstractAsyncContextManager[None]] | None = None,
        auto_crew: bool = False,
        confirm: Callable[[str], Awaitable[None]] | None = None,
        acknowledged_lost: Callable[[], set[int]] = set,
    ) -> None:
        self.protocol = protocol
        self.devices = devices
        self.journal = journal
        self.clock = clock
        self.values = values
        self.run_dir = run_dir
        self.protocol_time = protocol_time
        self.timers = timers
        self.save_timers = save_timers
        self._hold = hold
        self._wait_released = wait_released
        self._event = event
        self._power = power
        self.auto_crew = auto_crew
        self._auto_confirm = confirm
        self._acknowledged_lost = acknowledged_lost
        self.action: ActionStatus | None = None  # the device action in progress (for pause)
        self.waiting_crew: str | None = None
        self._crew_done = asyncio.Event()
        self.images = 0
        self.image_bytes = 0
        self.image_sizes: list[int] = []
        self.crew_minutes = 0.0

    # ------------------------------------------------------------------ helpers

    def device(self, role: str) -> Any:
        try:
            return self.devices[role]
        except KeyError:
            raise StepError(f"no device plays role {role!r}") from None

    def _q(self, value: object, unit: str) -> float:
        if isinstance(value, str) and value not in self.values.params:
            return literal_in(value, unit)
        return float(resolve(value, self.values.params, unit).magnitude)

    @contextlib.asynccontextmanager
    async def _active(self, role: str, what: str) -> Any:
        if self._power is None:
            yield
            return
        async with self._power(role, what):
            yield

    async def __call__(self, step: StepBase, label: str, key: str) -> None:
        if isinstance(step, DispenseStep | WithdrawStep):
            args = step.dispense if isinstance(step, DispenseStep) else step.withdraw
            await self.pump(step.kind, args, key)
        elif isinstance(step, SetTemperatureStep):
            await self.set_temperature(step, key)
        elif isinstance(step, SelectPortStep):
            valve = self.device(step.select_port.valve)
            if not isinstance(valve, Valve):
                raise StepError(f"{step.select_port.valve} is not a valve")
            await valve.select_port(step.select_port.port)
        elif isinstance(step, InitializeStep):
            await self.initialize(step.initialize.device, key)
        elif isinstance(step, WaitStep):
            await self.wait(self._q(step.wait, "s"), key)
        elif isinstance(step, CaptureStep):
            await self.capture(step.capture.camera, step.capture.cell, key, inspect=None)
        elif isinstance(step, InspectStep):
            look = step.inspect
            await self.capture(look.camera, look.cell, key, inspect=look.mode)
        elif isinstance(step, HoldStep):
            await self._hold(step.hold)
            await self._wait_released()
        elif isinstance(step, CrewStep):
            await self.crew(step, label)
        elif isinstance(step, EventStep):
            self._event("protocol_event", step.event.severity, step.event.message)
        else:  # pragma: no cover - structural steps never reach here
            raise StepError(f"cannot run a {step.kind} step here")

    # ------------------------------------------------------------------ pumps

    def delivered_for(self, key: str) -> tuple[float, list[int]]:
        """What the journal says this step already moved, and its unacknowledged lost actions."""
        total = 0.0
        lost: list[int] = []
        acknowledged = self._acknowledged_lost()
        for a in self.journal.actions():
            if a.step != key:
                continue
            if a.state == "lost" and a.action_id not in acknowledged:
                lost.append(a.action_id)
            elif a.delivered_ul is not None:
                total += a.delivered_ul
        return total, lost

    async def pump(self, kind: str, args: PumpArgs, key: str) -> None:
        pump = self.device(args.pump)
        if not isinstance(pump, SyringePump):
            raise StepError(f"{args.pump} is not a syringe pump")
        target = self._q(args.volume, "uL")
        rate = self._q(args.rate, "uL/min")
        done, lost = self.delivered_for(key)
        if lost:
            raise StepError(
                f"{args.pump} cannot say what action(s) {lost} of this step delivered (the pump "
                "was power-cycled or re-initialised). Look at the cells, then: 'skip' to go on "
                f"without this {kind}, or 'release' to {kind} the rest counting those as 0 uL"
            )
        remainder = target - done
        if remainder <= 1e-9:
            log.info("%s: %s of %.6g uL already done (%.6g uL)", key, kind, target, done)
            return
        async with self._active(args.pump, kind):
            marker = await pump.prepare(kind, Q_(remainder, "uL"), Q_(rate, "uL/min"))
            if marker.remainder(0.0) == 0.0:
                log.info("%s: remainder %.3g uL is below one pump step", key, remainder)
                return
            action_id = self.journal.record_intent(key, marker, t_protocol=self.protocol_time())
            status = pump.start(marker)
            self.action = status
            try:
                result = await status
            except DeviceError as e:
                self._end_failed(action_id, e, status)
                raise
            except asyncio.CancelledError:
                await self._end_stopped(pump, action_id, marker, status)
                raise
            finally:
                self.action = None
            self.journal.end_action(action_id, result, t_protocol=self.protocol_time())
            log.info("%s: %s %.6g uL confirmed by %s", key, kind, result.delivered_ul, args.pump)

    def _end_failed(self, action_id: int, e: DeviceError, status: ActionStatus) -> None:
        delivered = e.delivered_ul if e.delivered_ul is not None else status.delivered_ul
        if delivered is None:
            # the device could not say: leave the intent open, a resume will ask again
            self._event("action_unknown", "alarm", f"action {action_id}: {e}; outcome unknown")
            return
        self.journal.end_action(
            action_id, error=e, delivered_ul=delivered, t_protocol=self.protocol_time()
        )

    async def _end_stopped(
        self, pump: SyringePump, action_id: int, marker: Any, status: ActionStatus
    ) -> None:
        await status.aclose()  # the pump is stopped and read back
        delivered = status.delivered_ul
        if delivered is None:
            with contextlib.suppress(DeviceError, asyncio.CancelledError):
                delivered = (await pump.delivered_since(marker)).delivered_ul
        if delivered is None:
            self._event("action_unknown", "alarm", f"action {action_id} stopped; outcome unknown")
            return
        self.journal.end_action(
            action_id,
            {"stopped": True},
            error="stopped before its end (hold, skip or abort)",
            delivered_ul=delivered,
            t_protocol=self.protocol_time(),
        )

    async def initialize(self, role: str, key: str) -> None:
        """Initialise a device once per run: journaled as done, never repeated on resume."""
        done = set(self.journal.get_checkpoint("initialized", []))
        if key in done:
            log.info("%s: %s already initialised in this run", key, role)
            return
        device = self.device(role)
        init = getattr(device, "initialize", None)
        if init is None:
            raise StepError(f"{role} has nothing to initialise")
        async with self._active(role, "initialize"):
            await init()
        done.add(key)
        self.journal.set_checkpoint("initialized", sorted(done))
        self.journal.flush()

    # ------------------------------------------------------------------ temperature

    async def set_temperature(self, step: SetTemperatureStep, key: str) -> None:
        args = step.set_temperature
        thermal = self.device(args.device)
        if not isinstance(thermal, ThermalController):
            raise StepError(f"{args.device} is not a thermal controller")
        target = Q_(self._q(args.to, "degC"), "degC")
        setpoints = dict(self.journal.get_checkpoint("setpoints", {}))
        setpoints[args.device] = float(target.magnitude)
        self.journal.set_checkpoint("setpoints", setpoints)  # re-sent by a resume (repeatable)
        if not args.wait_stable:
            await thermal.set_setpoint(target)
            await thermal.run(True)
            return
        async with self._active(args.device, "settle"):
            await thermal.run(True)
            status = thermal.settle(
                target,
                as_quantity(args.tolerance),
                as_quantity(args.stable_for),
                as_quantity(args.within),
            )
            self.action = status
            try:
                await status
            finally:
                self.action = None
                await status.aclose()

    # ------------------------------------------------------------------ time

    async def wait(self, seconds: float, key: str) -> None:
        """Wait until a deadline kept in the journal (a resumed wait keeps its deadline)."""
        if seconds <= 0:
            return
        deadline = self.timers.get(key)
        if deadline is None:
            deadline = self.protocol_time() + seconds
            self.timers[key] = deadline
            self.save_timers()
        self.journal.flush()
        left = deadline - self.protocol_time()
        if left > 0:
            await self.clock.sleep(left)
        self.timers.pop(key, None)
        self.save_timers()

    # ------------------------------------------------------------------ images

    async def capture(self, role: str, cell: int, key: str, *, inspect: str | None) -> None:
        camera = self.device(role)
        async with self._active(role, "capture"):
            if isinstance(camera, GrowthCellCamera):
                frame = await camera.capture_cell(cell)
            elif isinstance(camera, Camera):
                if cell != 1:
                    raise StepError(f"{role} images one field only; it has no cell {cell}")
                frame = await camera.capture()
            else:
                raise StepError(f"{role} is not a camera")
        image = np.asarray(frame)
        t = self.protocol_time()
        rel = Path("images") / f"cell{cell}" / f"t{t:011.0f}s_{_safe(key)}.png"
        stored = image
        if image.ndim == 3 and image.shape[2] == 3 and _grey_in_colour(image):
            stored = image[:, :, 0]  # a grey frame in three equal channels: kept exactly, 3x less
        ok, encoded = cv2.imencode(".png", stored, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise StepError(f"{role}: the frame could not be encoded as PNG")
        data = encoded.tobytes()
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.images += 1
        self.image_bytes += len(data)
        self.image_sizes.append(len(data))
        digest = hashlib.sha256(data).hexdigest()
        if inspect is None:
            self.journal.record_inspection(
                f"cell{cell}", digest, str(rel), {"captured": True}, t, model_version=""
            )
            return
        result = self._inspect(image, role, inspect)
        self.journal.record_inspection(
            f"cell{cell}", digest, str(rel), result, t, model_version=VISION_VERSION
        )
        self.values.set_cell(cell, {k: v for k, v in result.items() if not isinstance(v, list)})
        self.journal.set_checkpoint("cells", {str(k): v for k, v in self.values.cells.items()})

    def _inspect(self, image: Any, role: str, mode: str) -> dict[str, Any]:
        from kiboauto import vision

        if mode == "confluence":
            field = vision.analyse_field(image)
            data = field.to_dict()  # confluence, quality flags, pedestal, wall fraction
            data["quality_ok"] = field.quality == ("ok",)
            return data
        # the camera's own scale when it reports one (the demo station images at 640x480, 4 um
        # per pixel, under a protocol written for 2 um/px: lengths came out halved), else the
        # protocol's
        own = getattr(self.devices[role], "um_per_px", None)
        scale = float(own or self.protocol.roles[role].um_per_px or 1.0)
        found = vision.inspect(image, um_per_px=scale)
        data = found.to_dict()
        data["class"] = found.drop_class
        data["count"] = len(found.crystals)
        data["max_length_um"] = max((c.length_um for c in found.crystals), default=0.0)
        return data

    # ------------------------------------------------------------------ people

    async def crew(self, step: CrewStep, label: str) -> None:
        args = step.crew
        expected_s = float(as_quantity(args.expected).to("s").magnitude)
        self.waiting_crew = label
        self._crew_done.clear()
        self._event(
            "crew_request",
            "info",
            f"crew: {args.procedure.strip()} (expected {args.expected}); "
            f"confirm with 'confirm {label}'",
        )
        try:
            if self.auto_crew and self._auto_confirm is not None:
                self.journal.flush()
                await self.clock.sleep(expected_s)
                await self._auto_confirm(label)
            limit = (
                None
                if args.wait_at_most is None
                else float(as_quantity(args.wait_at_most).to("s").magnitude)
            )
            self.journal.flush()
            try:
                await self.clock.wait_for(self._crew_done.wait(), limit)
            except TimeoutError:
                raise StepError(
                    f"crew did not confirm {label} within {args.wait_at_most}"
                ) from None
            self.crew_minutes += expected_s / 60.0
        finally:
            self.waiting_crew = None

    def confirm(self, label: str) -> bool:
        """The crew confirmed step ``label`` (from the command path)."""
        if self.waiting_crew != label:
            return False
        self._crew_done.set()
        return True


def _grey_in_colour(image: Any) -> bool:
    b, g, r = image[:, :, 0], image[:, :, 1], image[:, :, 2]
    return bool(np.array_equal(b, g) and np.array_equal(b, r))


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)[:80]
