"""Quantities with units, so that "10 uL", "5 uL/min", "20 degC" and "6 h" mean what they say.

One pint registry for the whole process; helpers convert to the plain floats that wire protocols
need and refuse a quantity of the wrong dimension with a clear message.
"""

from __future__ import annotations

from typing import Any

import pint


def _registry() -> pint.UnitRegistry[Any]:
    # pint parses its unit definitions on every start (about 0.2 s, a fifth of an engine's
    # start-up, which a resume after a crash waits for); with its cache (pint's own, in the
    # user's cache folder) a start reads them back instead. Where that folder cannot be
    # written, the registry is built the slow way.
    try:
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True, cache_folder=":auto:")
    except OSError:
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


ureg: pint.UnitRegistry[Any] = _registry()
ureg.formatter.default_format = "~P"
Q_ = ureg.Quantity
Quantity = pint.Quantity

__all__ = ["Q_", "Quantity", "UnitError", "as_quantity", "magnitude_in", "ureg"]


class UnitError(ValueError):
    """A value has no unit, an unknown unit, or a unit of the wrong kind."""


def as_quantity(value: Any, default_unit: str | None = None) -> Any:
    """Turn ``"10 uL"``, ``Q_(10, "uL")`` or (with ``default_unit``) ``10`` into a quantity."""
    if isinstance(value, pint.Quantity):
        return value
    if isinstance(value, str):
        try:
            q: Any = ureg.Quantity(value)
        except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, ValueError) as e:
            raise UnitError(f"cannot read {value!r} as a quantity: {e}") from e
        if not isinstance(q, pint.Quantity):
            q = ureg.Quantity(q)
        if q.dimensionless and default_unit is not None:
            return ureg.Quantity(q.magnitude, default_unit)
        return q
    if isinstance(value, int | float):
        if default_unit is None:
            raise UnitError(f"{value!r} has no unit; write it as e.g. '{value} uL'")
        return ureg.Quantity(float(value), default_unit)
    raise UnitError(f"cannot read {value!r} ({type(value).__name__}) as a quantity")


def magnitude_in(value: Any, unit: str) -> float:
    """The magnitude of ``value`` in ``unit`` (:class:`UnitError` if incompatible)."""
    q = as_quantity(value, unit)
    try:
        return float(q.to(unit).magnitude)
    except pint.errors.DimensionalityError as e:
        raise UnitError(f"{q} is not convertible to {unit}") from e
