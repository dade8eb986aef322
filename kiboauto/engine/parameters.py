"""Run parameters: checking a value against its protocol definition, converting, showing.

A parameter's value is a pint quantity (or a plain number, or yes/no), checked against the unit
and the limits the protocol gives it, the same way for ``kiboauto run --set``, for ``set`` commands
from the ground, and when a resumed run reads its journaled values back. Also the monitor limits in
the plain numbers the report draws.
"""

from __future__ import annotations

from typing import Any

from kiboauto.engine.machine import Reason, RunState, Verdict
from kiboauto.protocol.model import Protocol
from kiboauto.units import Q_, as_quantity

__all__ = [
    "check_parameter_value",
    "limits_for_report",
    "param_text",
    "param_value",
    "to_parameter_unit",
]


def check_parameter_value(
    protocol: Protocol, name: str, value: str, state: RunState = RunState.IDLE
) -> Verdict | None:
    """None when ``set name=value`` is acceptable in ``state`` (a known parameter, settable now,
    the right unit, within its limits); else the refusal with its reason code."""
    spec = protocol.parameters.get(name)
    if spec is None:
        known = ", ".join(protocol.parameters) or "none"
        return Verdict(False, Reason.UNKNOWN_PARAMETER, f"no parameter {name!r} ({known})", state)
    if state not in (RunState.IDLE, RunState.LOADED) and not spec.settable:
        return Verdict(False, Reason.NOT_SETTABLE, f"{name} cannot change during a run", state)
    try:
        new = param_value(value)
        default = spec.quantity()
    except ValueError as e:
        return Verdict(False, Reason.BAD_ARGUMENTS, f"{name}: {e}", state)
    if isinstance(default, bool) != isinstance(new, bool):
        return Verdict(False, Reason.BAD_ARGUMENTS, f"{name} is yes/no: true or false", state)
    if isinstance(default, bool):
        return None
    unit = getattr(default, "units", None)
    try:
        value_in = to_parameter_unit(new, default)
    except Exception as e:  # no unit, or pint's dimensionality error
        want = f"a quantity in {unit:~}" if unit is not None else "a plain number"
        return Verdict(False, Reason.WRONG_UNIT, f"{name} needs {want}, not {value}: {e}", state)
    for bound, below in ((spec.min, True), (spec.max, False)):
        if bound is None:
            continue
        limit = to_parameter_unit(spec.quantity(bound), default)
        if (value_in < limit) if below else (value_in > limit):
            return Verdict(
                False,
                Reason.OUT_OF_RANGE,
                f"{name} = {value} is outside [{spec.min}, {spec.max}]",
                state,
            )
    return None


def to_parameter_unit(value: Any, default: Any) -> float:
    """``value``'s magnitude in ``default``'s unit (a plain number for a dimensionless default
    is a fraction: 0.7 is 70 %)."""
    if not hasattr(default, "to"):
        if hasattr(value, "to"):
            return float(value.to("dimensionless").magnitude)
        return float(value)
    if not hasattr(value, "to"):
        if not default.dimensionless:
            raise ValueError("it has no unit")
        value = Q_(float(value), "dimensionless")
    return float(value.to(default.units).magnitude)


def param_value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false", "yes", "no"):
        return t.lower() in ("true", "yes")
    try:
        return float(t)
    except ValueError:
        pass
    return as_quantity(t)


def param_text(value: Any) -> Any:
    if isinstance(value, bool | float | int):
        return value
    return f"{value.magnitude:g} {value.units:~}"


def limits_for_report(protocol: Protocol) -> dict[str, Any]:
    """The monitor limits as plain numbers in the unit of their first bound (for reports)."""
    out: dict[str, Any] = {}
    for spec in protocol.monitor:
        for reading, limits in spec.limits.items():
            unit: str | None = None
            entry: dict[str, Any] = {}
            for level in ("yellow", "red"):
                pair = getattr(limits, level)
                if pair is None:
                    entry[level] = None
                    continue
                values: list[float | None] = []
                for bound in pair:
                    if bound is None:
                        values.append(None)
                        continue
                    q = as_quantity(bound) if isinstance(bound, str) else bound
                    if hasattr(q, "to"):
                        unit = unit or f"{q.units:~}"
                        values.append(float(q.to(unit).magnitude))
                    else:
                        values.append(float(q))
                entry[level] = values
            entry["unit"] = unit or ""
            out[f"{spec.device}.{reading}"] = entry
    return out
