"""Tecan Cavro XCalibur / XP3000 syringe pump with valve: the driver (a SyringePump and a Valve).

The bytes on the line (DT and OEM framing, status byte, error codes, units of the plunger) are in
:mod:`kiboauto.drivers.cavro_wire`; see ``docs/protocols/cavro.md``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from kiboauto.clock import Clock
from kiboauto.devices import (
    ActionStatus,
    DeviceAlarm,
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    FramingError,
    Progress,
)
from kiboauto.units import magnitude_in

from .cavro_wire import (
    ANY,
    CUTOFF_SPEED_RANGE,
    EMPTY,
    INTEGER,
    PULSES_PER_STROKE,
    SLOPE_RANGE,
    SPEED_CODES,
    START_SPEED_RANGE,
    STEPS_PER_STROKE,
    STROKE_LENGTH_MM,
    TOP_SPEED_RANGE,
    VALVE,
    CavroAnswer,
    address_char,
    build_dt_command,
    build_oem_command,
    parse_dt_answer,
    parse_oem_answer,
)
from .transport import SerialTransport

__all__ = ["CavroPump"]


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class CavroPump:
    """A Cavro XCalibur / XP3000 pump and its valve, as a SyringePump and a Valve.

    Options: ``address`` (pump number 1..15), ``syringe_volume_ul`` (volume of a full stroke),
    ``ports`` (valve positions: 3 or 4 for a 3-/4-port valve driven by I/O/B/E, more for a
    distribution valve driven by ``I<n>``), ``oem`` (OEM framing instead of DT), ``input_port`` /
    ``output_port`` (valve port used by withdraw / dispense), ``resolution`` (0: 3000
    increments, 1: 24000), ``init_command`` (``Z``, ``Y`` or ``W``), ``init_force`` (0..2),
    ``timeout`` (per answer, s), ``retries`` (for queries), ``poll_interval`` (s).
    """

    protocol: ClassVar[str] = "cavro"
    kind: ClassVar[str] = "pump"
    default_baudrate: ClassVar[int] = 9600

    def __init__(
        self,
        name: str,
        transport: SerialTransport,
        *,
        clock: Clock,
        address: int = 1,
        syringe_volume_ul: float = 250.0,
        ports: int = 9,
        oem: bool = False,
        input_port: int = 1,
        output_port: int = 2,
        resolution: int = 0,
        init_command: str = "Z",
        init_force: int = 0,
        timeout: float = 1.0,
        retries: int = 2,
        poll_interval: float = 0.1,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"unknown CavroPump option(s): {sorted(options)}")
        address_char(address)
        if ports < 2 or ports > 24:
            raise ValueError(f"valve ports must be 2..24, got {ports}")
        for label, port in (("input_port", input_port), ("output_port", output_port)):
            if not 1 <= port <= ports:
                raise ValueError(f"{label} {port} is not a port of a {ports}-port valve")
        if resolution not in STEPS_PER_STROKE:
            raise ValueError(f"resolution must be 0 or 1, got {resolution!r}")
        if init_command not in ("Z", "Y", "W"):
            raise ValueError(f"init_command must be Z, Y or W, got {init_command!r}")
        if syringe_volume_ul <= 0:
            raise ValueError("syringe_volume_ul must be > 0")
        self.name = name
        self.transport = transport
        self.clock = clock
        self.address = address
        self.syringe_volume_ul = float(syringe_volume_ul)
        self.ports = ports
        self.oem = oem
        self.input_port = input_port
        self.output_port = output_port
        self.resolution = resolution
        self.init_command = init_command
        self.init_force = init_force
        self.timeout = timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self._sequence = 0
        self._top_speed = 1400
        self._firmware = ""

    # -- framing -------------------------------------------------------------------------------
    @property
    def steps_per_stroke(self) -> int:
        return STEPS_PER_STROKE[self.resolution]

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % 7 + 1
        return self._sequence

    async def _transact(
        self,
        command: str,
        *,
        execute: bool,
        expect: re.Pattern[str],
        safe: bool,
        timeout: float | None = None,
    ) -> CavroAnswer:
        """One command/answer exchange.

        DT: the transport repeats the command only when ``safe`` (queries, idempotent settings).
        OEM: a lost or garbled answer is followed by the same block with the repeat flag set and
        the same sequence number; the pump executes it only if it never saw the first one, so
        this is safe for moves too.
        """
        limit = self.timeout if timeout is None else timeout
        label = command
        if not self.oem:
            dt_parse: Callable[[bytes], tuple[CavroAnswer, int] | None] = lambda b: (  # noqa: E731
                parse_dt_answer(b, expect)
            )
            payload = build_dt_command(self.address, command, execute=execute)
            return await self.transport.request(
                payload, dt_parse, timeout=limit, retries=self.retries if safe else 0, what=label
            )
        oem_parse: Callable[[bytes], tuple[CavroAnswer, int] | None] = lambda b: (  # noqa: E731
            parse_oem_answer(b, expect)
        )
        sequence = self._next_sequence()
        repeat = False
        attempt = 0
        while True:
            payload = build_oem_command(
                self.address, sequence, command, repeat=repeat, execute=execute
            )
            try:
                return await self.transport.request(
                    payload, oem_parse, timeout=limit, retries=0, what=label
                )
            except (DeviceTimeout, FramingError, DeviceDisconnected):
                if attempt >= self.retries:
                    raise
                attempt += 1
                repeat = True

    def _raise_for(self, answer: CavroAnswer, what: str) -> CavroAnswer:
        if answer.error:
            raise DeviceAlarm(
                self.name, str(answer.error), f"{answer.error_message} (after {what!r})"
            )
        return answer

    # -- raw access ----------------------------------------------------------------------------
    async def raw(self, command: str, *, execute: bool = True, safe: bool = False) -> CavroAnswer:
        """Send any command string; return the answer as is (errors are not raised)."""
        return await self._transact(command, execute=execute, expect=ANY, safe=safe)

    async def command(self, command: str) -> CavroAnswer:
        """Send and execute a command string; raise :class:`DeviceAlarm` on an error status."""
        answer = await self._transact(command, execute=True, expect=ANY, safe=False)
        return self._raise_for(answer, command)

    async def query(self, report: str, expect: re.Pattern[str] = ANY) -> str:
        """A report command (``?``, ``?1``, ``&``...): retried, data returned as text."""
        answer = await self._transact(report, execute=False, expect=expect, safe=True)
        self._raise_for(answer, report)
        return answer.data

    async def status(self) -> CavroAnswer:
        """``Q``: ready/busy and the pending error (reading it clears it in the pump)."""
        return await self._transact("Q", execute=False, expect=EMPTY, safe=True)

    async def _set(self, command: str) -> None:
        """An idempotent setting (speeds, resolution): safe to repeat."""
        answer = await self._transact(command, execute=True, expect=EMPTY, safe=True)
        self._raise_for(answer, command)

    # -- lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the line, read status and firmware, set the resolution; nothing moves."""
        await self.transport.open()
        answer = await self.status()
        self._firmware = await self.query("&")
        if answer.ready:
            await self._set(f"N{self.resolution}")
        self._top_speed = int(await self.query("?2", INTEGER))

    async def close(self) -> None:
        await self.transport.close()

    async def identify(self) -> DeviceInfo:
        answer = await self.status()
        firmware = await self.query("&")
        details: dict[str, Any] = {
            "address": self.address,
            "framing": "OEM" if self.oem else "DT",
            "syringe_volume_ul": self.syringe_volume_ul,
            "resolution": self.resolution,
            "steps_per_stroke": self.steps_per_stroke,
            "ports": self.ports,
            "error_code": answer.error,
        }
        try:
            details["position_steps"] = await self.position()
            details["valve_port"] = await self.current_port()
        except DeviceError as e:
            details["query_error"] = str(e)
        state = "ready" if answer.ready else "busy"
        if answer.error:
            state += f", error {answer.error}: {answer.error_message}"
        return DeviceInfo(
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            model="Cavro XCalibur/XP3000",
            firmware=firmware,
            port=self.transport.port,
            status=state,
            details=details,
        )

    # -- motion primitives ---------------------------------------------------------------------
    async def wait_ready(
        self,
        timeout: float,
        *,
        on_poll: Callable[[], Any] | None = None,
        what: str = "move",
    ) -> None:
        """Poll ``Q`` until the pump is ready; raise the pump's error as :class:`DeviceAlarm`."""
        deadline = self.clock.now() + timeout
        while True:
            answer = await self.status()
            self._raise_for(answer, what)
            if answer.ready:
                return
            if on_poll is not None:
                result = on_poll()
                if hasattr(result, "__await__"):
                    await result
            if self.clock.now() >= deadline:
                raise DeviceTimeout(self.name, f"{what} not finished within {timeout:g} s")
            await self.clock.sleep(self.poll_interval)

    def _move_budget(self, steps: int) -> float:
        pulses = abs(steps) * PULSES_PER_STROKE / self.steps_per_stroke
        return 5.0 + 2.0 * pulses / max(self._top_speed, 5)

    async def _start(self, command: str) -> None:
        """Send a move (never repeated in DT); raise an immediate error from the answer."""
        answer = await self._transact(command, execute=True, expect=EMPTY, safe=False)
        self._raise_for(answer, command)

    async def initialize(self, command: str | None = None, force: int | None = None) -> None:
        """Initialise plunger and valve (``Z``/``Y``/``W``) and wait until done."""
        cmd = command or self.init_command
        if cmd not in ("Z", "Y", "W"):
            raise ValueError(f"initialisation command must be Z, Y or W, got {cmd!r}")
        level = self.init_force if force is None else force
        await self._start(f"{cmd}{level}")
        await self.wait_ready(self._move_budget(self.steps_per_stroke) + 10.0, what=cmd)

    async def move_to(self, steps: int) -> None:
        """Absolute plunger position ``A<n>``; waits until done."""
        before = await self.position()
        await self._start(f"A{int(steps)}")
        await self.wait_ready(self._move_budget(int(steps) - before), what=f"A{steps}")

    async def pick_up(self, steps: int) -> None:
        await self._start(f"P{int(steps)}")
        await self.wait_ready(self._move_budget(int(steps)), what=f"P{steps}")

    async def dispense_steps(self, steps: int) -> None:
        await self._start(f"D{int(steps)}")
        await self.wait_ready(self._move_budget(int(steps)), what=f"D{steps}")

    async def terminate(self) -> None:
        """``T``: stop the plunger now."""
        await self._transact("T", execute=False, expect=EMPTY, safe=True)

    async def position(self) -> int:
        """Plunger position in increments of the current resolution (``?``)."""
        return int(await self.query("?", INTEGER))

    async def firmware(self) -> str:
        return await self.query("&")

    # speeds ------------------------------------------------------------------------------------
    async def set_top_speed(self, pulses_per_s: int) -> None:
        _check_range("top speed V", pulses_per_s, TOP_SPEED_RANGE)
        await self._set(f"V{pulses_per_s}")
        self._top_speed = pulses_per_s

    async def set_start_speed(self, pulses_per_s: int) -> None:
        _check_range("start speed v", pulses_per_s, START_SPEED_RANGE)
        await self._set(f"v{pulses_per_s}")

    async def set_cutoff_speed(self, pulses_per_s: int) -> None:
        _check_range("cutoff speed c", pulses_per_s, CUTOFF_SPEED_RANGE)
        await self._set(f"c{pulses_per_s}")

    async def set_slope(self, code: int) -> None:
        _check_range("slope L", code, SLOPE_RANGE)
        await self._set(f"L{code}")

    async def set_speed_code(self, code: int) -> None:
        _check_range("speed code S", code, (0, len(SPEED_CODES) - 1))
        await self._set(f"S{code}")
        self._top_speed = SPEED_CODES[code]

    async def set_resolution(self, mode: int) -> None:
        if mode not in STEPS_PER_STROKE:
            raise ValueError(f"resolution must be 0 or 1, got {mode!r}")
        await self._set(f"N{mode}")
        self.resolution = mode

    async def speeds(self) -> dict[str, int]:
        return {
            "start": int(await self.query("?1", INTEGER)),
            "top": int(await self.query("?2", INTEGER)),
            "cutoff": int(await self.query("?3", INTEGER)),
        }

    # -- volumes -------------------------------------------------------------------------------
    def volume_to_steps(self, volume: Any) -> int:
        ul = magnitude_in(volume, "uL")
        return round(ul / self.syringe_volume_ul * self.steps_per_stroke)

    def steps_to_volume_ul(self, steps: float) -> float:
        return steps / self.steps_per_stroke * self.syringe_volume_ul

    def rate_to_speed(self, rate: Any) -> int:
        """A flow rate as a top speed in pulses/s (raises ValueError outside 5..6000)."""
        ul_per_s = magnitude_in(rate, "uL/s")
        speed = round(ul_per_s * PULSES_PER_STROKE / self.syringe_volume_ul)
        if not TOP_SPEED_RANGE[0] <= speed <= TOP_SPEED_RANGE[1]:
            lo, hi = (self.syringe_volume_ul * s / PULSES_PER_STROKE for s in TOP_SPEED_RANGE)
            raise ValueError(
                f"{self.name}: rate {rate} is outside this syringe's range "
                f"{lo:.4g}..{hi:.4g} uL/s (top speed 5..6000 pulses/s)"
            )
        return speed

    # -- SyringePump ---------------------------------------------------------------------------
    async def set_diameter(self, diameter: Any) -> None:
        """Syringe bore: the full-stroke volume becomes bore area x 30 mm stroke."""
        d_mm = magnitude_in(diameter, "mm")
        if d_mm <= 0:
            raise ValueError(f"syringe diameter must be > 0, got {diameter}")
        self.syringe_volume_ul = math.pi / 4 * d_mm**2 * STROKE_LENGTH_MM

    def dispense(self, volume: Any, rate: Any) -> ActionStatus:
        return self._pump_action("dispense", volume, rate)

    def withdraw(self, volume: Any, rate: Any) -> ActionStatus:
        return self._pump_action("withdraw", volume, rate)

    def _pump_action(self, direction: str, volume: Any, rate: Any) -> ActionStatus:
        steps = self.volume_to_steps(volume)
        speed = self.rate_to_speed(rate)
        if steps < 0:
            raise ValueError(f"{self.name}: volume must be positive, got {volume}")
        port = self.output_port if direction == "dispense" else self.input_port
        move = "D" if direction == "dispense" else "P"
        target_ul = self.steps_to_volume_ul(steps)

        async def body(status: ActionStatus) -> float:
            start = await self.position()
            if direction == "dispense" and steps > start:
                raise DeviceError(
                    self.name,
                    f"cannot dispense {target_ul:.4g} uL: only "
                    f"{self.steps_to_volume_ul(start):.4g} uL in the syringe",
                )
            if direction == "withdraw" and start + steps > self.steps_per_stroke:
                raise DeviceError(
                    self.name,
                    f"cannot withdraw {target_ul:.4g} uL: room for "
                    f"{self.steps_to_volume_ul(self.steps_per_stroke - start):.4g} uL",
                )
            done_ul = 0.0

            async def report() -> None:
                nonlocal done_ul
                now_at = await self.position()
                done_ul = self.steps_to_volume_ul(abs(now_at - start))
                frac = done_ul / target_ul if target_ul else 1.0
                status.report(Progress(min(frac, 1.0), done_ul, target_ul, "uL", direction))

            finished = False
            try:
                self._top_speed = speed
                await self._start(f"{self._valve_command(port)}V{speed}{move}{steps}")
                await self.wait_ready(self._move_budget(steps), on_poll=report, what=direction)
                finished = True
                await report()
                return done_ul
            finally:
                if not finished:
                    with contextlib.suppress(DeviceError):
                        await self.terminate()

        return ActionStatus(f"{self.name}:{direction}", body)

    async def stop(self) -> None:
        await self.terminate()

    async def is_moving(self) -> bool:
        return (await self.status()).busy

    # -- Valve ---------------------------------------------------------------------------------
    @property
    def port_count(self) -> int:
        return self.ports

    def _valve_command(self, port: int) -> str:
        if not 1 <= port <= self.ports:
            raise ValueError(f"{self.name}: port {port} not in 1..{self.ports}")
        if self.ports <= 4:
            return "IOBE"[port - 1]
        return f"I{port}"

    async def select_port(self, port: int) -> None:
        cmd = self._valve_command(port)
        await self._start(cmd)
        await self.wait_ready(10.0, what=cmd)

    async def current_port(self) -> int:
        text = await self.query("?6", VALVE)
        if text.isdigit():
            return int(text)
        return "iobe".index(text.lower()) + 1


def _check_range(what: str, value: int, bounds: tuple[int, int]) -> None:
    if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} must be an integer {bounds[0]}..{bounds[1]}, got {value!r}")
