"""Composition root: builds a station's devices (driver + transport + line) from a station file.

A station file says, for each device, which driver speaks to it and over which line::

    devices:
      pump1:
        driver: newera            # newera | cavro | modbus-tc | opencv
        port: /dev/ttyUSB0        # a pyserial URL (pty, ttyUSB, socket://, rfc2217://) or "sim"
        baudrate: 19200           # default: the driver's own
        options: {address: 0}     # driver settings
        sim: {options: {}}        # with port "sim": the in-process simulator's settings
      camera1:
        driver: opencv
        port: 0                   # device index, file, http:// snapshot URL, or "sim"

``port: sim`` wires the driver to a simulator of the same protocol in this process through a memory
pipe (same bytes, no pty), which is what the default station does. This module and ``cli.py`` are
the only places that choose real or simulated hardware.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiboauto.clock import Clock
from kiboauto.config import load_model
from kiboauto.devices import DeviceError
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.trace import ByteTrace
from kiboauto.drivers.transport import SerialTransport

__all__ = [
    "DRIVERS",
    "Allocations",
    "OpenStation",
    "PowerDraw",
    "StationDevice",
    "StationFile",
    "default_station",
    "load_station",
    "open_station",
    "station_from_hil_ports",
    "write_station",
]

#: driver name -> "module:Class"
DRIVERS: dict[str, str] = {
    "newera": "kiboauto.drivers.newera:NewEraPump",
    "cavro": "kiboauto.drivers.cavro:CavroPump",
    "modbus-tc": "kiboauto.drivers.modbus_tc:ModbusThermalController",
    "opencv": "kiboauto.drivers.camera:OpenCVCamera",
}
CAMERA_DRIVER = "opencv"
SIM = "sim"


class SimSettings(BaseModel):
    """Settings of the in-process simulator used when ``port`` is ``sim``."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    faults: list[dict[str, Any]] = Field(default_factory=list)


class PowerDraw(BaseModel):
    """Electrical power a device draws, by state, in watts: what an engine budgets with."""

    model_config = ConfigDict(extra="forbid")

    idle: float = Field(ge=0, allow_inf_nan=False)
    active: float = Field(ge=0, allow_inf_nan=False)


class StationDevice(BaseModel):
    """One device of a station: the driver, the line, and settings."""

    model_config = ConfigDict(extra="forbid")

    driver: str
    port: str | int
    baudrate: int | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    sim: SimSettings = Field(default_factory=SimSettings)
    power_w: PowerDraw | None = None
    sample_every: str | None = Field(
        default=None,
        description="sample this device's readings this often during runs (e.g. '1 min'), "
        "besides what the protocol's monitor asks",
    )

    @field_validator("sample_every")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from kiboauto.units import UnitError, as_quantity

        try:
            seconds = float(as_quantity(value).to("s").magnitude)
        except (UnitError, ValueError, AttributeError) as e:
            raise ValueError(f"sample_every {value!r}: expected a duration such as '1 min'") from e
        except Exception as e:  # pint: not a time
            raise ValueError(f"sample_every {value!r} is not a duration: {e}") from e
        if not 0 < seconds < float("inf"):
            raise ValueError(f"sample_every {value!r} must be longer than 0 s")
        return value

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value not in DRIVERS:
            raise ValueError(f"unknown driver {value!r}; known: {', '.join(DRIVERS)}")
        return value


class Allocations(BaseModel):
    """What the station grants this payload (power, crew time, downlink): the figures a run's
    plan and its resource report are compared with. A missing figure is not checked."""

    model_config = ConfigDict(extra="forbid")

    power_w: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    crew_min_per_day: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    downlink_mb_per_day: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class StationFile(BaseModel):
    """A whole station: named devices, and optionally what the station allocates to them."""

    model_config = ConfigDict(extra="forbid")

    devices: dict[str, StationDevice] = Field(min_length=1)
    allocations: Allocations | None = None


def load_station(path: str | Path) -> StationFile:
    return load_model(StationFile, path)


DEFAULT_POWER_W: dict[str, PowerDraw] = {
    "newera": PowerDraw(idle=2.0, active=6.0),  # NE-1000 stepper at rest / moving
    "cavro": PowerDraw(idle=3.0, active=12.0),  # XCalibur plunger and valve motors
    "modbus-tc": PowerDraw(idle=5.0, active=40.0),  # controller / Peltier stage driving
    "opencv": PowerDraw(idle=1.0, active=4.0),  # camera / camera with its LED lit
}
"""What the simulated rig's devices draw: figures of the order of their data sheets."""

DEFAULT_ALLOCATIONS = Allocations(power_w=60.0, crew_min_per_day=30.0, downlink_mb_per_day=100.0)
"""The simulated unit's allocation from the station (an example, not a real station's)."""


def default_station() -> StationFile:
    """Every device of the default HIL rig, simulated in this process."""
    from kiboauto.hil.rig import CAMERA_PROTOCOL, default_rig

    devices: dict[str, StationDevice] = {}
    for name, dev in default_rig().devices.items():
        driver = CAMERA_DRIVER if dev.protocol == CAMERA_PROTOCOL else dev.protocol
        devices[name] = StationDevice(
            driver=driver,
            port=SIM,
            options=_driver_options_for(dev.protocol, dev.options),
            sim=SimSettings(options=dev.options, seed=dev.seed, faults=dev.faults),
            power_w=DEFAULT_POWER_W.get(driver),
        )
    return StationFile(devices=devices, allocations=DEFAULT_ALLOCATIONS)


def _driver_options_for(protocol: str, sim_options: dict[str, Any]) -> dict[str, Any]:
    """Driver settings that must match the simulator's (bus addresses)."""
    keys = {
        "newera": ["address"],
        "cavro": ["address", "ports", "syringe_volume_ul"],
        "modbus-tc": ["unit"],
    }.get(protocol, [])
    return {k: sim_options[k] for k in keys if k in sim_options}


def station_from_hil_ports(ports: dict[str, Any]) -> StationFile:
    """A station for the devices a ``kiboauto hil serve`` process announced in its JSON line."""
    devices: dict[str, StationDevice] = {}
    for name, entry in ports.items():
        protocol = entry.get("protocol")
        if name.startswith("_") or protocol is None:
            continue
        if protocol == "camera":
            devices[name] = StationDevice(driver=CAMERA_DRIVER, port=entry["port"])
            continue
        options = _driver_options_for(protocol, entry)
        devices[name] = StationDevice(
            driver=protocol, port=entry["port"], baudrate=entry.get("baudrate"), options=options
        )
    return StationFile(devices=devices)


def write_station(station: StationFile, path: str | Path, *, header: str = "") -> None:
    """Write ``station`` as a station file (YAML) that :func:`load_station` reads back.

    ``header`` becomes a comment block at the top. The file is written to a temporary name in the
    same folder and renamed, so a reader never sees half a file.
    """
    import os

    import yaml

    data = station.model_dump(mode="json", exclude_defaults=True)
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class OpenStation:
    """Devices of a station, connected (or with the reason they could not be)."""

    devices: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, DeviceError] = field(default_factory=dict)
    simulators: dict[str, Any] = field(default_factory=dict)
    trace: ByteTrace = field(default_factory=ByteTrace)


def build_device(
    name: str,
    spec: StationDevice,
    clock: Clock,
    trace: ByteTrace,
    simulators: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Construct (not connect) the driver for one station device; returns (driver, simulator).

    ``simulators``: the in-process simulators built so far (a simulated camera may name one as
    the incubator whose temperature drives its crystals' growth).
    """
    from kiboauto.hil.rig import CAMERA_PROTOCOL, RigDevice, build_simulator

    cls = _import(DRIVERS[spec.driver])
    simulator: Any = None
    if spec.driver == CAMERA_DRIVER:
        if spec.port == SIM:
            camera_spec = RigDevice(
                protocol=CAMERA_PROTOCOL, options=spec.sim.options, seed=spec.sim.seed
            )
            return build_simulator(name, camera_spec, clock, simulators), None
        return cls(name, spec.port, clock=clock, **spec.options), None
    baudrate: int = spec.baudrate or int(getattr(cls, "default_baudrate", 9600))
    if spec.port == SIM:
        simulator = build_simulator(
            name,
            RigDevice(
                protocol=spec.driver,
                options=spec.sim.options,
                seed=spec.sim.seed,
                faults=spec.sim.faults,
            ),
            clock,
        )
        connector = simulator.memory_connector()
        port = f"sim://{name}"
    else:
        port = str(spec.port)
        connector = serial_connector(port, baudrate=baudrate)
    transport = SerialTransport(name, connector, port=port, clock=clock, trace=trace)
    return cls(name, transport, clock=clock, **spec.options), simulator


@contextlib.asynccontextmanager
async def open_station(
    station: StationFile, clock: Clock, *, trace: ByteTrace | None = None
) -> AsyncIterator[OpenStation]:
    """Connect every device; a device that fails is listed in ``failures``, not raised.

    Everything opened is closed on exit, simulators included.
    """
    opened = OpenStation(trace=trace if trace is not None else ByteTrace())
    try:
        # Simulated cameras last: they may take their temperature from a simulated incubator.
        ordered = sorted(
            station.devices.items(),
            key=lambda item: item[1].driver == CAMERA_DRIVER and item[1].port == SIM,
        )
        for name, spec in ordered:
            try:
                device, sim = build_device(name, spec, clock, opened.trace, opened.simulators)
            except (TypeError, ValueError) as e:
                opened.failures[name] = DeviceError(name, f"bad station settings: {e}")
                continue
            if sim is not None:
                opened.simulators[name] = sim
            try:
                await device.connect()
            except Exception as e:  # a driver bug must not hide the other devices
                opened.failures[name] = (
                    e if isinstance(e, DeviceError) else DeviceError(name, f"connect failed: {e!r}")
                )
                with contextlib.suppress(Exception):
                    await device.close()
                continue
            opened.devices[name] = device
        yield opened
    finally:
        for device in opened.devices.values():
            with contextlib.suppress(Exception):
                await device.close()
        for sim in opened.simulators.values():
            with contextlib.suppress(Exception):
                await sim.aclose()
