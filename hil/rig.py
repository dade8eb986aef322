"""A HIL rig: which simulated devices exist, their settings, how they are served, their faults.

A rig file is YAML::

    devices:
      pump1:
        protocol: newera          # newera | cavro | modbus-tc | camera
        options: {address: 0}     # the simulator's settings (see docs/rig-and-station.md)
        tcp: true                 # also serve on socket://127.0.0.1:PORT
        tcp_port: 0               # 0: any free port
        rfc2217: true             # also serve on rfc2217://127.0.0.1:PORT (Telnet COM port control)
        rfc2217_port: 0
        faults:                   # injected from the start
          - {kind: drop, count: 1, skip: 3}

With no file, :func:`default_rig` gives one device of each kind.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kiboauto.clock import Clock
from kiboauto.config import load_model

from .base import Fault, FaultKind, Simulator

__all__ = [
    "CAMERA_PROTOCOL",
    "SIMULATORS",
    "RigDevice",
    "RigFile",
    "build_rig",
    "build_simulator",
    "default_rig",
    "load_rig",
]

#: protocol name -> "module:Class" of its simulator (imported on first use)
SIMULATORS: dict[str, str] = {
    "newera": "kiboauto.hil.newera_sim:NewEraSim",
    "cavro": "kiboauto.hil.cavro_sim:CavroSim",
    "modbus-tc": "kiboauto.hil.thermal_sim:ThermalSim",
}
CAMERA_PROTOCOL = "camera"
CAMERA_SIMULATOR = "kiboauto.hil.camera_sim:SimCamera"

DEFAULT_RIG = Path(__file__).parent / "rigs" / "default.yaml"


class RigDevice(BaseModel):
    """One simulated device in a rig file."""

    model_config = ConfigDict(extra="forbid")

    protocol: str
    options: dict[str, Any] = Field(default_factory=dict)
    tcp: bool = False
    tcp_port: int = Field(default=0, ge=0, le=65535)
    rfc2217: bool = False
    rfc2217_port: int = Field(default=0, ge=0, le=65535)
    seed: int = 0
    faults: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        known = [*SIMULATORS, CAMERA_PROTOCOL]
        if value not in known:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("faults")
    @classmethod
    def _valid_faults(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for fault in value:
            Fault.from_dict(fault)
        return value

    @model_validator(mode="after")
    def _known_alarms(self) -> RigDevice:
        """An ``alarm`` fault must name an alarm this device's simulator knows."""
        if self.protocol in SIMULATORS:
            for fault in self.faults:
                parsed = Fault.from_dict(fault)
                if parsed.kind == FaultKind.ALARM:
                    simulator_class(self.protocol).check_alarm(parsed.alarm)
        return self


class RigFile(BaseModel):
    """A whole rig: named simulated devices."""

    model_config = ConfigDict(extra="forbid")

    devices: dict[str, RigDevice] = Field(min_length=1)


def load_rig(path: str | Path | None = None) -> RigFile:
    """Read a rig file (the built-in default rig when ``path`` is None)."""
    return load_model(RigFile, path if path is not None else DEFAULT_RIG)


def default_rig() -> RigFile:
    return load_rig(None)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def simulator_class(protocol: str) -> type[Simulator]:
    cls: type[Simulator] = _import(SIMULATORS[protocol])
    return cls


def build_simulator(
    name: str, device: RigDevice, clock: Clock, others: dict[str, Any] | None = None
) -> Any:
    """The simulator (or, for cameras, the in-process camera) for one rig device, faults applied.

    A camera's ``incubator`` option names another device of the rig (a thermal simulator) whose
    temperature drives the growth of its crystals; ``others`` holds the devices built so far.
    """
    if device.protocol == CAMERA_PROTOCOL:
        options = dict(device.options)
        incubator = options.get("incubator")
        if isinstance(incubator, str):
            found = (others or {}).get(incubator)
            if found is None or not callable(getattr(found, "temperature", None)):
                known = sorted(n for n, s in (others or {}).items() if hasattr(s, "temperature"))
                raise ValueError(
                    f"device {name}: incubator {incubator!r} is not a thermal simulator of this "
                    f"rig; thermal simulators: {known}"
                )
            options["incubator"] = found
        return _import(CAMERA_SIMULATOR)(name, clock=clock, seed=device.seed, **options)
    try:
        sim = simulator_class(device.protocol)(name, clock, seed=device.seed, **device.options)
    except TypeError as e:
        raise ValueError(f"device {name}: bad options for {device.protocol}: {e}") from e
    for fault in device.faults:
        parsed = Fault.from_dict(fault)
        sim.inject(parsed)
    return sim


def build_rig(rig: RigFile, clock: Clock) -> dict[str, Any]:
    """Every device of a rig, serial simulators first so cameras can name their incubator."""
    built: dict[str, Any] = {}
    ordered = sorted(rig.devices.items(), key=lambda item: item[1].protocol == CAMERA_PROTOCOL)
    for name, device in ordered:
        built[name] = build_simulator(name, device, clock, built)
    return {name: built[name] for name in rig.devices}


def parse_fault(kind: str, **settings: Any) -> Fault:
    """A fault from a command line or control message (``kind`` as in :class:`FaultKind`).

    ValueError names the bad setting (see :meth:`Fault.from_dict` for the limits).
    """
    return Fault.from_dict({"kind": kind, **settings})
