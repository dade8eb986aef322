"""What one look at the Modbus thermal controller shows: :class:`ThermalStatus`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ThermalStatus", "heater_cooler"]


@dataclass(frozen=True)
class ThermalStatus:
    """One look at the controller: what ``status()`` returns."""

    pv: float | None  # degC, None while the PV register holds an error code
    pv_error: str | None  # "0x8003" etc.
    sv: float
    running: bool
    control_method: str
    heat_cool: str
    output1_pct: float
    output2_pct: float
    alarm1: bool
    alarm2: bool
    alarm3: bool
    system_alarm: bool
    autotuning: bool
    leds: int
    limits: tuple[float, float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def alarms(self) -> list[str]:
        names = [("AL1", self.alarm1), ("AL2", self.alarm2), ("AL3", self.alarm3)]
        out = [n for n, on in names if on]
        if self.system_alarm:
            out.append("SYS")
        if self.pv_error:
            out.append(self.pv_error)
        return out

    @property
    def heater_pct(self) -> float | None:
        """The heating output's level, by the heating/cooling selection (None: no heater)."""
        return heater_cooler(self.heat_cool, self.output1_pct, self.output2_pct)[0]

    @property
    def cooler_pct(self) -> float | None:
        """The cooling output's level (None when the selection has no cooling output)."""
        return heater_cooler(self.heat_cool, self.output1_pct, self.output2_pct)[1]


def heater_cooler(mode: str, out1: float, out2: float) -> tuple[float | None, float | None]:
    """(heater, cooler) levels for a heating/cooling selection (1006h) and output levels."""
    if mode == "heating":
        return out1, None
    if mode == "cooling":
        return None, out1
    if mode == "cooling/heating":
        return out2, out1
    return out1, out2  # "heating/cooling": heater on output 1, cooler on output 2
