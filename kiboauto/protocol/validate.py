"""Checks of a whole protocol, and of a protocol against a station, before anything moves.

The model (:mod:`kiboauto.protocol.model`) checks each field on its own. This module checks what
needs the whole protocol, and optionally the station it will run on:

* **names**: parameter references (``volume: protein_volume``) name a parameter of the right
  dimension; roles used by steps exist and are of the right kind; every name a condition or a
  watchdog reads can be provided by a run (``params.NAME``, ``ROLE.READING``, ``cell[N].FIELD``
  of an inspected cell, ``run.time``, ``loop.count`` inside a repeat), and the values they give
  can be compared the way the condition compares them; step ids are unique, ``goto`` targets
  exist, crew steps have an id;
* **station**: each role's device exists, with a driver that provides the role's kind;
* **feasibility**: volumes fit the syringe, the liquid a pump dispenses over the whole run fits its
  reservoir, set points lie in the controller's range, valve ports exist, repeats end and the
  run's length is finite.

:func:`validate` returns every :class:`~kiboauto.protocol.loader.Problem` found, each with the
line and column of the value it is about; an empty list means the protocol may run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pint

from kiboauto.protocol.expressions import (
    Arith,
    Compare,
    Expr,
    ExpressionError,
    Name,
    Neg,
    evaluate_condition,
    parse_condition,
    parse_watchdog,
)
from kiboauto.protocol.loader import LoadedProtocol, PathKey, Problem
from kiboauto.protocol.model import (
    BranchStep,
    CaptureStep,
    CrewStep,
    DispenseStep,
    GroupStep,
    InspectStep,
    Protocol,
    QuantityText,
    RepeatStep,
    SelectPortStep,
    SetTemperatureStep,
    StepBase,
    WaitStep,
    WithdrawStep,
    is_identifier,
    value_of,
)
from kiboauto.units import Q_

if TYPE_CHECKING:
    from kiboauto.station import StationFile

__all__ = [
    "CAVRO_DEFAULT_PORTS",
    "CAVRO_DEFAULT_SYRINGE_UL",
    "CAVRO_PULSES_PER_STROKE",
    "CAVRO_SPEED_RANGE",
    "CELL_FIELDS",
    "DEFAULT_SETPOINT_RANGE_C",
    "KINDS_BY_DRIVER",
    "SIM_CAMERA_CELLS",
    "validate",
]

#: device kinds each station driver provides
KINDS_BY_DRIVER: dict[str, tuple[str, ...]] = {
    "newera": ("SyringePump",),
    "cavro": ("SyringePump", "Valve"),
    "modbus-tc": ("ThermalController",),
    "opencv": ("Camera",),
}

CAVRO_DEFAULT_PORTS = 9
"""Valve positions of a Cavro pump whose station entry has no ``ports`` option (the driver's
default, ``kiboauto.drivers.cavro.CavroPump``)."""

CAVRO_DEFAULT_SYRINGE_UL = 250.0
"""Syringe of a Cavro pump whose station entry has no ``syringe_volume_ul`` option (the
driver's default)."""

CAVRO_SPEED_RANGE = (5, 6000)
"""Top speeds a Cavro pump accepts, in pulses per second, with :data:`CAVRO_PULSES_PER_STROKE`
pulses per full stroke (``kiboauto.drivers.cavro_wire``): the flow range scales with the syringe."""

CAVRO_PULSES_PER_STROKE = 6000

DEFAULT_SETPOINT_RANGE_C = (-10.0, 60.0)
"""Set points accepted when a thermal role gives no ``range``: the range limits a CN7500-style
controller ships with, as the HIL simulator (``kiboauto.hil.thermal_sim``) has them."""

SIM_CAMERA_CELLS = 8
"""Growth cells of a simulated camera whose station entry does not say (``hil/camera_sim.py``)."""

#: what a run gives for ``cell[N].FIELD`` after an inspect step (a value of the same type)
CELL_FIELDS: dict[str, object] = {
    "class": "crystals",
    "count": 1,
    "max_length_um": Q_(1.0, "um"),
    "confluence": 0.5,
    "confidence": 0.9,
    "well_found": True,
    "drop_found": True,
    "drop_area_fraction": 0.3,
    "quality_ok": True,
    "wall_fraction": 0.1,
}
#: cell values that come from an inspect step with mode confluence (the others: crystals)
CONFLUENCE_FIELDS = frozenset({"confluence", "quality_ok", "wall_fraction"})
_CELL_FIELD_TYPES = {
    "class": "text",
    "count": "a whole number",
    "max_length_um": "a length (um)",
    "confluence": "a plain number (fraction 0..1)",
    "confidence": "a plain number (0..1)",
    "well_found": "true or false",
    "drop_found": "true or false",
    "drop_area_fraction": "a plain number (fraction 0..1)",
    "quality_ok": "true or false",
    "wall_fraction": "a plain number (fraction 0..1)",
}

#: readings whose type is known, by role kind (for checking how conditions compare them)
_TYPED_READINGS: dict[str, dict[str, Any]] = {
    "ThermalController": {"temperature": Q_(20.0, "degC"), "setpoint": Q_(20.0, "degC")},
}

#: fields of step arguments that name a role, and the kind of role they need (None: any)
_ROLE_FIELDS: dict[str, dict[str, str | None]] = {
    "dispense": {"pump": "SyringePump"},
    "withdraw": {"pump": "SyringePump"},
    "select_port": {"valve": "Valve"},
    "set_temperature": {"device": "ThermalController"},
    "capture": {"camera": "Camera"},
    "inspect": {"camera": "Camera"},
}
_ANY_ROLE_FIELDS: dict[str, str | None] = {
    "pump": None,
    "valve": None,
    "device": None,
    "camera": None,
}
_DIMENSIONS = {
    "volume": "[length] ** 3",
    "flow": "[length] ** 3 / [time]",
    "temperature": "[temperature]",
    "time": "[time]",
    "length": "[length]",
}
_UNITS = {"volume": "uL", "flow": "uL/min", "temperature": "degC", "time": "s"}
_EXAMPLES = {
    "volume": "'10 uL'",
    "flow": "'50 uL/min'",
    "temperature": "'20 degC'",
    "time": "'6 h'",
}


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _kind_of(q: Any) -> str:
    if isinstance(q, bool):
        return "yes/no value"
    if not isinstance(q, pint.Quantity):
        return "plain number"
    if q.dimensionless:
        return "plain number"
    for kind, dim in _DIMENSIONS.items():
        if q.check(dim):
            return kind
    return str(q.dimensionality)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _mag(q: Any, unit: str) -> float | None:
    """The magnitude of quantity ``q`` in ``unit``, or None when it is not one."""
    if not isinstance(q, pint.Quantity):
        return None
    try:
        value = float(q.to(unit).magnitude)
    except (pint.errors.PintError, TypeError, ValueError, OverflowError, ArithmeticError):
        return None
    return value if not math.isnan(value) else None


def _safe_value(value: QuantityText) -> Any:
    try:
        return value_of(value)
    except ValueError:  # pragma: no cover - the model read it already
        return None


@dataclass(frozen=True)
class _At:
    """A step, where it is, and the repeats around it."""

    path: PathKey
    step: StepBase
    repeats: tuple[RepeatStep, ...]


def _children(at: _At) -> Iterator[tuple[PathKey, Sequence[StepBase], bool]]:
    step, p = at.step, at.path
    if isinstance(step, RepeatStep):
        yield (*p, "repeat", "steps"), step.repeat.steps, True
    elif isinstance(step, BranchStep):
        yield (*p, "branch", "then"), step.branch.then, False
        yield (*p, "branch", "else"), step.branch.else_, False
    elif isinstance(step, GroupStep):
        yield (*p, "group"), step.group, False


def _walk(
    steps: Sequence[StepBase], path: PathKey, repeats: tuple[RepeatStep, ...]
) -> Iterator[_At]:
    for i, step in enumerate(steps):
        at = _At((*path, i), step, repeats)
        yield at
        for child_path, child_steps, is_repeat in _children(at):
            inner = (*repeats, step) if is_repeat and isinstance(step, RepeatStep) else repeats
            yield from _walk(child_steps, child_path, inner)


def _pump_args(step: StepBase) -> tuple[str, Any] | None:
    if isinstance(step, DispenseStep):
        return "dispense", step.dispense
    if isinstance(step, WithdrawStep):
        return "withdraw", step.withdraw
    return None


def _names(expr: Expr) -> Iterator[Name]:
    if isinstance(expr, Name):
        yield expr
    for c in expr.children():
        yield from _names(c)


def _postorder(expr: Expr) -> Iterator[Expr]:
    for c in expr.children():
        yield from _postorder(c)
    yield expr


class _Checker:
    def __init__(self, loaded: LoadedProtocol, station: StationFile | None) -> None:
        self.loaded = loaded
        self.p: Protocol = loaded.protocol
        self.station = station
        self.problems: list[Problem] = []
        self.steps = list(_walk(self.p.steps, ("steps",), ()))
        self.broken_refs: set[PathKey] = set()

    def add(
        self,
        path: PathKey,
        message: str,
        *,
        at_key: bool = False,
        column: int | None = None,
    ) -> None:
        self.problems.append(
            self.loaded.problem(path, message, at_key=at_key, column_in_text=column)
        )

    # -- values --------------------------------------------------------------------------------

    def fields(self) -> Iterator[tuple[PathKey, QuantityText, str]]:
        """Every field that holds a quantity or a parameter name: (path, value, kind)."""
        for name, role in self.p.roles.items():
            if role.syringe is not None:
                yield ("roles", name, "syringe"), role.syringe, "volume"
            if role.reservoir is not None:
                yield ("roles", name, "reservoir"), role.reservoir, "volume"
            if role.range is not None:
                for i, v in enumerate(role.range):
                    yield ("roles", name, "range", i), v, "temperature"
        for name, v in self.p.safe.temperatures.items():
            yield ("safe", "temperatures", name), v, "temperature"
        for at in self.steps:
            s, p = at.step, at.path
            if s.timeout is not None:
                yield (*p, "timeout"), s.timeout, "time"
            if (
                s.on_failure is not None
                and (*p, "on_failure", "delay") in self.loaded.positions.values
            ):
                yield (*p, "on_failure", "delay"), s.on_failure.delay, "time"
            pump = _pump_args(s)
            if pump is not None:
                kind, args = pump
                yield (*p, kind, "volume"), args.volume, "volume"
                yield (*p, kind, "rate"), args.rate, "flow"
            elif isinstance(s, SetTemperatureStep):
                yield (*p, "set_temperature", "to"), s.set_temperature.to, "temperature"
            elif isinstance(s, WaitStep):
                yield (*p, "wait"), s.wait, "time"
            elif isinstance(s, RepeatStep):
                yield (*p, "repeat", "every"), s.repeat.every, "time"

    @staticmethod
    def reference(value: QuantityText) -> str | None:
        """The parameter a field names, if it names one."""
        text = str(value).strip()
        return text if is_identifier(text) else None

    def values(self, value: QuantityText, unit: str, which: str) -> list[tuple[str, float]]:
        """The values (in ``unit``) a field may take, each with a description of where it comes
        from: the literal, or a parameter's default and (``which``) its min/max when settable."""
        ref = self.reference(value)
        if ref is None:
            try:
                mag = _mag(value_of(value), unit)
            except ValueError:
                return []
            return [(f"{value}", mag)] if mag is not None else []
        param = self.p.parameters.get(ref)
        if param is None:
            return []
        out: list[tuple[str, float]] = []
        default = _mag(param.quantity(), unit)
        if default is not None:
            out.append((f"{param.default} (parameter '{ref}')", default))
        if param.settable:
            for bound in which.split():
                text = getattr(param, bound)
                if text is None:
                    continue
                try:
                    mag = _mag(param.quantity(text), unit)
                except ValueError:
                    continue
                if mag is not None:
                    out.append((f"{text} (the {bound} of settable parameter '{ref}')", mag))
        return out

    def worst(self, value: QuantityText, unit: str, largest: bool = True) -> float | None:
        """The largest (or smallest) value a field may take, in ``unit``."""
        vals = [v for _, v in self.values(value, unit, "max" if largest else "min")]
        if not vals:
            return None
        return max(vals) if largest else min(vals)

    # -- names ---------------------------------------------------------------------------------

    def check_references(self) -> None:
        names = sorted(self.p.parameters)
        for path, value, kind in self.fields():
            ref = self.reference(value)
            if ref is None:
                continue
            param = self.p.parameters.get(ref)
            if param is None:
                listed = f"one of the parameters: {', '.join(names)}" if names else "a parameter"
                self.add(
                    path,
                    f"unknown parameter '{ref}'; expected {_article(kind)} {kind} such as "
                    f"{_EXAMPLES[kind]} or the name of {listed}",
                )
                self.broken_refs.add(path)
                continue
            q = param.quantity()
            if not (isinstance(q, pint.Quantity) and q.check(_DIMENSIONS[kind])):
                found = _kind_of(q)
                self.add(
                    path,
                    f"parameter '{ref}' is {_article(found)} {found} (default {param.default}); "
                    f"expected {_article(kind)} {kind} parameter here, e.g. with default "
                    f"{_EXAMPLES[kind]}",
                )
                self.broken_refs.add(path)

    def role_ok(self, path: PathKey, role: str, kind: str | None, what: str) -> bool:
        r = self.p.roles.get(role)
        if r is None:
            self.add(
                path,
                f"unknown role '{role}'; expected one of the roles: {', '.join(self.p.roles)} "
                f"(or declare '{role}' under roles:)",
            )
            return False
        if kind is not None and r.kind != kind:
            fitting = [n for n, x in self.p.roles.items() if x.kind == kind]
            hint = f" ({', '.join(fitting)})" if fitting else ""
            self.add(
                path,
                f"role '{role}' is a {r.kind}; expected a {kind} role for '{what}'{hint}",
            )
            return False
        return True

    def check_roles(self) -> None:
        for at in self.steps:
            s, p = at.step, at.path
            kind = s.kind
            args = getattr(s, kind, None)
            for field_name, role_kind in _ROLE_FIELDS.get(kind, _ANY_ROLE_FIELDS).items():
                role = getattr(args, field_name, None)
                if isinstance(role, str):
                    self.role_ok((*p, kind, field_name), role, role_kind, field_name)
        limited: dict[tuple[str, str], int] = {}
        for i, m in enumerate(self.p.monitor):
            if self.role_ok(("monitor", i, "device"), m.device, None, "device"):
                self.check_limits(i)
            for reading in m.limits:
                first = limited.setdefault((m.device, reading), i)
                if first != i:
                    self.add(
                        ("monitor", i, "limits", reading),
                        f"limits of {m.device}.{reading} are already given in monitor[{first}]; "
                        "expected one set of limits per reading",
                        at_key=True,
                    )
        for name in self.p.safe.temperatures:
            self.role_ok(("safe", "temperatures", name), name, "ThermalController", "safe")

    def check_limits(self, i: int) -> None:
        m = self.p.monitor[i]
        role = self.p.roles[m.device]
        typed = _TYPED_READINGS.get(role.kind, {})
        for reading, limits in m.limits.items():
            if reading not in typed:
                continue
            want = _kind_of(typed[reading])
            for colour in ("yellow", "red"):
                pair = getattr(limits, colour)
                for j, v in enumerate(pair or ()):
                    if v is None:
                        continue
                    try:
                        q = value_of(v)
                    except ValueError:
                        continue
                    if _kind_of(q) != want:
                        self.add(
                            ("monitor", i, "limits", reading, colour, j),
                            f"limit {v!r} is {_article(_kind_of(q))} {_kind_of(q)}; expected "
                            f"{_article(want)} {want} like '{m.device}.{reading}', e.g. "
                            f"{_EXAMPLES.get(want, '')}",
                        )

    def conditions(self) -> Iterator[tuple[PathKey, str, bool, bool]]:
        """(path, text, is a watchdog, inside a repeat) of every condition."""
        for at in self.steps:
            s = at.step
            if isinstance(s, RepeatStep) and s.repeat.until is not None:
                yield (*at.path, "repeat", "until"), s.repeat.until, False, True
            elif isinstance(s, BranchStep):
                yield (*at.path, "branch", "if"), s.branch.if_, False, bool(at.repeats)
        for i, w in enumerate(self.p.watchdogs):
            yield ("watchdogs", i, "when"), w.when, True, False

    def inspected_cells(self) -> set[int]:
        return {at.step.inspect.cell for at in self.steps if isinstance(at.step, InspectStep)}

    def inspect_modes(self) -> dict[int, set[str]]:
        """The modes each cell is inspected in."""
        out: dict[int, set[str]] = {}
        for at in self.steps:
            if isinstance(at.step, InspectStep):
                out.setdefault(at.step.inspect.cell, set()).add(at.step.inspect.mode)
        return out

    def typed_env(self) -> dict[str, object]:
        env: dict[str, object] = {}
        for name, param in self.p.parameters.items():
            env[f"params.{name}"] = param.quantity()
        for n in self.inspected_cells():
            for f, v in CELL_FIELDS.items():
                env[f"cell[{n}].{f}"] = v
        env["run.time"] = Q_(1.0, "s")
        env["loop.count"] = 1
        for role, r in self.p.roles.items():
            for reading, v in _TYPED_READINGS.get(r.kind, {}).items():
                env[f"{role}.{reading}"] = v
        return env

    def describe_name(self, name: str) -> str:
        if name.startswith("params."):
            param = self.p.parameters.get(name.removeprefix("params."))
            if param is not None:
                return f"{name} is {param.default!r}"
        if name.startswith("cell["):
            return f"{name} is {_CELL_FIELD_TYPES.get(name.rsplit('.', 1)[-1], 'a value')}"
        if name == "run.time":
            return "run.time is a time"
        if name == "loop.count":
            return "loop.count is a whole number"
        return f"{name} is a temperature"

    def check_conditions(self) -> None:
        cells = sorted(self.inspected_cells())
        env = self.typed_env()
        for path, text, is_watchdog, in_repeat in self.conditions():
            what = "watchdog" if is_watchdog else "condition"
            try:
                expr = parse_watchdog(text).condition if is_watchdog else parse_condition(text)
            except ExpressionError:  # pragma: no cover - the model refused it already
                continue
            resolvable = True
            for name in _names(expr):
                message = self.name_problem(name, cells, in_repeat)
                if message is not None:
                    resolvable = False
                    self.add(path, f"{what}: {message}", column=name.column)
            if resolvable:
                self.check_types(path, what, expr, env)

    def name_problem(self, name: Name, cells: list[int], in_repeat: bool) -> str | None:
        parts = name.path
        head = parts[0]
        text = str(name)
        if head == "params":
            if len(parts) == 2 and isinstance(parts[1], str) and parts[1] in self.p.parameters:
                return None
            listed = ", ".join(f"params.{n}" for n in self.p.parameters) or "none are defined"
            return f"unknown parameter '{text}'; expected one of: {listed}"
        if head == "cell":
            if len(parts) != 3 or not isinstance(parts[1], int) or not isinstance(parts[2], str):
                return f"'{text}' is not a cell value; expected cell[N].FIELD, e.g. cell[1].class"
            if parts[2] not in CELL_FIELDS:
                return (
                    f"unknown cell value '{parts[2]}' in '{text}'; expected one of: "
                    f"{', '.join(CELL_FIELDS)}"
                )
            if parts[1] not in cells:
                listed = ", ".join(f"cell[{n}]" for n in cells) or "none (add an inspect step)"
                return (
                    f"no inspect step inspects cell {parts[1]} ('{text}'); expected one of the "
                    f"inspected cells: {listed}"
                )
            mode = "confluence" if parts[2] in CONFLUENCE_FIELDS else "crystals"
            modes = self.inspect_modes().get(parts[1], set())
            if mode not in modes:
                return (
                    f"'{text}' comes from an inspect step with mode {mode}, and cell {parts[1]} "
                    f"is only inspected with mode {', '.join(sorted(modes))}; expected an inspect "
                    f"step of cell {parts[1]} with mode {mode}"
                )
            return None
        if head == "run":
            if parts == ("run", "time"):
                return None
            return f"unknown name '{text}'; expected run.time"
        if head == "loop":
            if parts != ("loop", "count"):
                return f"unknown name '{text}'; expected loop.count"
            if not in_repeat:
                return "loop.count is only defined inside a repeat; expected it in a repeat"
            return None
        if isinstance(head, str) and head in self.p.roles:
            if len(parts) != 2 or not isinstance(parts[1], str):
                return (
                    f"'{text}' is not a reading; expected {head}.READING, e.g. {head}.temperature"
                )
            if head not in {m.device for m in self.p.monitor}:
                return (
                    f"'{text}' is a reading of role '{head}', which is not monitored, so it is "
                    f"never sampled; expected a monitor entry for it (monitor: - device: {head})"
                )
            return None
        roles = ", ".join(self.p.roles)
        return (
            f"unknown name '{text}'; expected params.NAME, ROLE.READING (roles: {roles}), "
            "cell[N].FIELD, run.time or loop.count"
        )

    def check_types(self, path: PathKey, what: str, expr: Expr, env: dict[str, object]) -> None:
        """Evaluate each comparison and arithmetic with values of the types a run gives, so that
        comparing a plain number with a length is found now rather than after days."""
        failed: set[int] = set()
        for node in _postorder(expr):
            if any(id(c) in failed for c in node.children()):
                failed.add(id(node))
                continue
            if not isinstance(node, Compare | Arith | Neg) or not node.names() <= env.keys():
                continue
            try:
                node.evaluate(env)
            except ExpressionError as e:
                if "division by zero" in e.message:
                    continue
                failed.add(id(node))
                names = "; ".join(self.describe_name(n) for n in sorted(node.names()))
                note = f" ({names})" if names else ""
                self.add(
                    path,
                    f"{what}: {e.message}{note}; expected values of the same kind on both sides",
                    column=e.column,
                )
        if failed or not expr.names() <= env.keys():
            return
        try:
            evaluate_condition(expr, env)
        except ExpressionError as e:
            if "division by zero" not in e.message:
                self.add(path, f"{what}: {e.message}", column=e.column)

    def check_steps(self) -> None:
        ids: dict[str, PathKey] = {}
        for at in self.steps:
            s, p = at.step, at.path
            if s.id is not None:
                if s.id in ids:
                    line, col = self.loaded.position((*ids[s.id], "id"))
                    self.add(
                        (*p, "id"),
                        f"duplicate step id '{s.id}' (first at line {line}, column {col}); "
                        "expected each id once",
                    )
                else:
                    ids[s.id] = p
            if isinstance(s, CrewStep) and s.id is None:
                self.add(
                    p,
                    "a crew step needs an id (the crew confirms it by id: 'kiboauto ctl RUN_DIR "
                    "confirm ID'); expected e.g. 'id: passage_cells'",
                )
        for at in self.steps:
            s, p = at.step, at.path
            target = s.on_failure.goto if s.on_failure is not None else None
            if target is not None and target not in ids:
                where = (*p, "on_failure", "then")
                if where not in self.loaded.positions.values:
                    where = (*p, "on_failure")
                listed = ", ".join(ids) or "none (give the target step an id)"
                self.add(
                    where,
                    f"goto '{target}': no step has id '{target}'; expected one of the step "
                    f"ids: {listed}",
                )
        seen: dict[str, int] = {}
        for i, w in enumerate(self.p.watchdogs):
            if w.name in seen:
                self.add(
                    ("watchdogs", i, "name"),
                    f"duplicate watchdog name '{w.name}' (also watchdogs[{seen[w.name]}]); "
                    "expected each name once",
                )
            seen.setdefault(w.name, i)

    # -- station -------------------------------------------------------------------------------

    def station_device(self, role: str) -> Any:
        if self.station is None or role not in self.p.roles:
            return None
        return self.station.devices.get(self.p.device_for(role))

    def check_station(self) -> None:
        if self.station is None:
            return
        devices = self.station.devices
        for name, role in self.p.roles.items():
            dev_name = self.p.device_for(name)
            path: PathKey = ("roles", name, "device") if role.device else ("roles", name)
            at_key = role.device is None
            dev = devices.get(dev_name)
            if dev is None:
                hint = "" if role.device else f" (set 'device:' of role '{name}' to one of them)"
                self.add(
                    path,
                    f"the station has no device '{dev_name}' for role '{name}'; expected one of "
                    f"its devices: {', '.join(devices)}{hint}",
                    at_key=at_key,
                )
                continue
            kinds = KINDS_BY_DRIVER.get(dev.driver, ())
            if role.kind not in kinds:
                drivers = [d for d, ks in KINDS_BY_DRIVER.items() if role.kind in ks]
                self.add(
                    path,
                    f"station device '{dev_name}' (driver {dev.driver}) is a "
                    f"{' and a '.join(kinds) or 'device of no known kind'}, not a {role.kind}; "
                    f"expected a device with driver {' or '.join(drivers)}",
                    at_key=at_key,
                )

    # -- feasibility ---------------------------------------------------------------------------

    def capacity(self, role: str) -> tuple[float, str] | None:
        """The syringe of a pump role in uL, and where that figure comes from."""
        r = self.p.roles.get(role)
        if r is None:
            return None
        station_cap: tuple[float, str] | None = None
        dev = self.station_device(role)
        if dev is not None and dev.driver == "cavro":
            try:
                ul = float(dev.options.get("syringe_volume_ul", CAVRO_DEFAULT_SYRINGE_UL))
            except (TypeError, ValueError):
                ul = CAVRO_DEFAULT_SYRINGE_UL
            station_cap = (ul, f"station device {self.p.device_for(role)}'s syringe")
        if r.syringe is not None:
            ul_role = self.worst(r.syringe, "uL", largest=False)
            if ul_role is not None:
                if station_cap is not None and station_cap[0] < ul_role:
                    self.add(
                        ("roles", role, "syringe"),
                        f"syringe {r.syringe} is larger than {station_cap[1]} "
                        f"({_fmt(station_cap[0])} uL); expected the syringe fitted",
                    )
                    return station_cap
                return ul_role, f"role {role}'s syringe"
        return station_cap

    def check_volumes(self) -> None:
        caps: dict[str, tuple[float, str] | None] = {}
        for at in self.steps:
            pump = _pump_args(at.step)
            if pump is None:
                continue
            kind, args = pump
            path = (*at.path, kind, "volume")
            if path in self.broken_refs or args.pump not in self.p.roles:
                continue
            for desc, ul in self.values(args.volume, "uL", "max"):
                if ul <= 0:
                    self.add(path, f"volume {desc} is not above 0 uL; expected a volume > 0")
            rate_path = (*at.path, kind, "rate")
            if rate_path not in self.broken_refs:
                for desc, v in self.values(args.rate, "uL/min", "min"):
                    if v <= 0:
                        self.add(rate_path, f"rate {desc} is not above 0; expected a rate > 0")
            if args.pump not in caps:
                caps[args.pump] = self.capacity(args.pump)
            cap = caps[args.pump]
            if cap is None:
                continue
            if rate_path not in self.broken_refs:
                self.check_cavro_rate(rate_path, args.pump, args.rate)
            for desc, ul in self.values(args.volume, "uL", "max"):
                if ul > cap[0] * (1 + 1e-9):
                    self.add(
                        path,
                        f"{kind} volume {desc} is more than {cap[1]} holds "
                        f"({_fmt(cap[0])} uL); expected at most {_fmt(cap[0])} uL per step",
                    )

    def check_cavro_rate(self, path: PathKey, role: str, rate: QuantityText) -> None:
        """A Cavro pump's flow range follows from its syringe: top speed 5..6000 pulses/s."""
        dev = self.station_device(role)
        if dev is None or dev.driver != "cavro":
            return
        try:
            ul = float(dev.options.get("syringe_volume_ul", CAVRO_DEFAULT_SYRINGE_UL))
        except (TypeError, ValueError):
            return
        lo, hi = (ul * 60.0 * p / CAVRO_PULSES_PER_STROKE for p in CAVRO_SPEED_RANGE)
        for desc, v in self.values(rate, "uL/min", "min max"):
            if v > 0 and not lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                self.add(
                    path,
                    f"rate {desc} is outside what station device "
                    f"{self.p.device_for(role)} pumps with its {_fmt(ul)} uL syringe; expected "
                    f"{_fmt(lo)}..{_fmt(hi)} uL/min",
                )

    def iterations(self, step: RepeatStep) -> int | None:
        """The most times a repeat runs its steps (as the engine counts: ``for`` allows one
        iteration at 0 and one at each whole ``every`` up to ``for``)."""
        r = step.repeat
        bound = r.times
        if r.for_ is not None:
            every = self.worst(r.every, "s", largest=False)
            total = _mag(value_of(r.for_), "s")
            if every is not None and every > 0 and total is not None:
                by_time = math.floor(total / every) + 1
                bound = by_time if bound is None else min(bound, by_time)
        return bound

    def totals(self, steps: Sequence[StepBase]) -> dict[str, float]:
        """The most liquid each pump role dispenses running ``steps`` once, in uL."""
        out: dict[str, float] = {}

        def add(other: dict[str, float], factor: float = 1.0) -> None:
            for k, v in other.items():
                out[k] = out.get(k, 0.0) + factor * v

        for s in steps:
            if isinstance(s, DispenseStep):
                ul = self.worst(s.dispense.volume, "uL")
                if ul is not None:
                    add({s.dispense.pump: ul})
            elif isinstance(s, RepeatStep):
                n = self.iterations(s)
                if n is not None:
                    add(self.totals(s.repeat.steps), n)
            elif isinstance(s, BranchStep):
                a, b = self.totals(s.branch.then), self.totals(s.branch.else_)
                add({k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in a.keys() | b.keys()})
            elif isinstance(s, GroupStep):
                add(self.totals(s.group))
        return out

    def check_reservoirs(self) -> None:
        totals = self.totals(self.p.steps)
        for name, role in self.p.roles.items():
            if role.reservoir is None or ("roles", name, "reservoir") in self.broken_refs:
                continue
            have = self.worst(role.reservoir, "uL", largest=False)
            need = totals.get(name, 0.0)
            if have is not None and need > have * (1 + 1e-9):
                self.add(
                    ("roles", name, "reservoir"),
                    f"'{name}' dispenses up to {_fmt(need)} uL over the whole run (each repeat "
                    f"counted at its most iterations), more than its reservoir of "
                    f"{_fmt(have)} uL; expected at most {_fmt(have)} uL in all",
                )

    def setpoint_range(self, role: str) -> tuple[float, float, str]:
        r = self.p.roles[role]
        if r.range is not None:
            lo = self.worst(r.range[0], "degC", largest=False)
            hi = self.worst(r.range[1], "degC", largest=True)
            if lo is not None and hi is not None:
                if lo >= hi:
                    self.add(
                        ("roles", role, "range"),
                        f"range {_fmt(lo)}..{_fmt(hi)} degC is empty; expected [low, high] "
                        "with low below high",
                    )
                return lo, hi, f"the range of role '{role}'"
        lo, hi = DEFAULT_SETPOINT_RANGE_C
        return lo, hi, "the controller's default range limits"

    def check_setpoints(self) -> None:
        targets: list[tuple[PathKey, str, QuantityText]] = []
        for at in self.steps:
            if isinstance(at.step, SetTemperatureStep):
                a = at.step.set_temperature
                targets.append(((*at.path, "set_temperature", "to"), a.device, a.to))
        for name, v in self.p.safe.temperatures.items():
            targets.append((("safe", "temperatures", name), name, v))
        for path, role, value in targets:
            r = self.p.roles.get(role)
            if r is None or r.kind != "ThermalController" or path in self.broken_refs:
                continue
            lo, hi, source = self.setpoint_range(role)
            for desc, c in self.values(value, "degC", "min max"):
                if not lo <= c <= hi:
                    self.add(
                        path,
                        f"set point {desc} is outside {source} "
                        f"({_fmt(lo)}..{_fmt(hi)} degC); expected {_fmt(lo)} degC <= set point "
                        f"<= {_fmt(hi)} degC",
                    )

    def check_red_limits(self) -> None:
        """A red limit puts the run on hold: the red band of a controller's temperature must
        hold every set point the protocol gives that controller."""
        for i, m in enumerate(self.p.monitor):
            role = self.p.roles.get(m.device)
            limits = m.limits.get("temperature")
            if role is None or role.kind != "ThermalController" or limits is None:
                continue
            if limits.red is None:
                continue
            low, high = (None if v is None else _mag(_safe_value(v), "degC") for v in limits.red)
            outside: list[str] = []
            for at in self.steps:
                s = at.step
                if isinstance(s, SetTemperatureStep) and s.set_temperature.device == m.device:
                    outside += self.outside(s.set_temperature.to, low, high)
            if m.device in self.p.safe.temperatures:
                outside += self.outside(self.p.safe.temperatures[m.device], low, high)
            if outside:
                lo_text = "-inf" if low is None else _fmt(low)
                hi_text = "inf" if high is None else _fmt(high)
                listed = list(dict.fromkeys(outside))
                verb = "is" if len(listed) == 1 else "are"
                noun = "set point" if len(listed) == 1 else "set points"
                self.add(
                    ("monitor", i, "limits", "temperature", "red"),
                    f"{noun} {'; '.join(listed)} {verb} outside the red band "
                    f"{lo_text}..{hi_text} degC of {m.device}.temperature: reaching it would put "
                    "the run on hold; expected a red band that holds every set point of the run",
                )

    def outside(self, value: QuantityText, low: float | None, high: float | None) -> list[str]:
        return [
            desc
            for desc, c in self.values(value, "degC", "min max")
            if (low is not None and c < low) or (high is not None and c > high)
        ]

    def check_ports_and_cells(self) -> None:
        for at in self.steps:
            s = at.step
            if isinstance(s, SelectPortStep):
                dev = self.station_device(s.select_port.valve)
                if dev is None or dev.driver != "cavro":
                    continue
                try:
                    ports = int(dev.options.get("ports", CAVRO_DEFAULT_PORTS))
                except (TypeError, ValueError):
                    continue
                if s.select_port.port > ports:
                    name = self.p.device_for(s.select_port.valve)
                    self.add(
                        (*at.path, "select_port", "port"),
                        f"port {s.select_port.port} is not a port of '{s.select_port.valve}' "
                        f"(station device {name}: a {ports}-port valve); expected 1..{ports}",
                    )
            elif isinstance(s, InspectStep | CaptureStep):
                args = s.inspect if isinstance(s, InspectStep) else s.capture
                dev = self.station_device(args.camera)
                if dev is None or dev.driver != "opencv" or str(dev.port) != "sim":
                    continue
                try:
                    cells = int(dev.sim.options.get("cells", SIM_CAMERA_CELLS))
                except (TypeError, ValueError):
                    continue
                if args.cell > cells:
                    name = self.p.device_for(args.camera)
                    self.add(
                        (*at.path, s.kind, "cell"),
                        f"cell {args.cell} is not a growth cell of '{args.camera}' (station "
                        f"device {name}: a simulated camera with {cells} cells); expected "
                        f"1..{cells}",
                    )

    def check_repeats(self) -> None:
        for at in self.steps:
            s = at.step
            if not isinstance(s, RepeatStep):
                continue
            r = s.repeat
            path = (*at.path, "repeat", "every")
            if path in self.broken_refs:
                continue
            for desc, sec in self.values(r.every, "s", "min"):
                if sec <= 0:
                    self.add(path, f"every {desc} is not above 0 s; expected a period > 0 s")
            every = self.worst(r.every, "s", largest=True)
            total = _mag(value_of(r.for_), "s") if r.for_ is not None else None
            if every is not None and total is not None and 0 < total < every:
                self.add(
                    (*at.path, "repeat", "for"),
                    f"'for' {r.for_} is shorter than 'every' {r.every}: the steps would run "
                    "once; expected 'for' at least as long as 'every' (or 'times: 1')",
                )

    def duration(self, steps: Sequence[StepBase]) -> float:
        """The longest the steps take (without holds and waits for the crew beyond their
        expected time), in seconds."""
        total = 0.0
        for s in steps:
            total += self.step_duration(s)
        return total

    def step_duration(self, s: StepBase) -> float:
        d = 0.0
        pump = _pump_args(s)
        if pump is not None:
            ul = self.worst(pump[1].volume, "uL")
            rate = self.worst(pump[1].rate, "uL/s", largest=False)
            d = ul / rate if ul is not None and rate is not None and rate > 0 else 0.0
        elif isinstance(s, WaitStep):
            d = self.worst(s.wait, "s") or 0.0
        elif isinstance(s, SetTemperatureStep):
            a = s.set_temperature
            d = (_mag(value_of(a.within), "s") or 0.0) if a.wait_stable else 0.0
        elif isinstance(s, CrewStep):
            limit = s.crew.wait_at_most if s.crew.wait_at_most is not None else s.crew.expected
            d = _mag(value_of(limit), "s") or 0.0
        elif isinstance(s, RepeatStep):
            n = self.iterations(s) or 1
            every = self.worst(s.repeat.every, "s") or 0.0
            body = self.duration(s.repeat.steps)
            d = (n - 1) * max(every, body) + body
        elif isinstance(s, BranchStep):
            d = max(self.duration(s.branch.then), self.duration(s.branch.else_))
        elif isinstance(s, GroupStep):
            d = self.duration(s.group)
        if s.timeout is not None:
            limit_s = self.worst(s.timeout, "s")
            if limit_s is not None:
                d = min(d, limit_s)
        return d

    def check_duration(self) -> None:
        total = 0.0
        for i, s in enumerate(self.p.steps):
            d = self.step_duration(s)
            if not math.isfinite(d):
                self.add(
                    ("steps", i),
                    f"this step may take {_fmt(d)} s; expected a finite duration (bound its "
                    "repeats with 'times' or 'for' and its waits)",
                )
                return
            total += d
        if not math.isfinite(total):
            self.add(
                ("steps",),
                f"the run may take {_fmt(total)} s; expected a finite duration",
            )

    def run(self) -> list[Problem]:
        self.check_references()
        self.check_roles()
        self.check_conditions()
        self.check_steps()
        self.check_station()
        self.check_volumes()
        self.check_reservoirs()
        self.check_setpoints()
        self.check_red_limits()
        self.check_ports_and_cells()
        self.check_repeats()
        self.check_duration()
        unique: dict[tuple[int, int, str, str], Problem] = {}
        for p in self.problems:
            unique.setdefault((p.line, p.column, p.path, p.message), p)
        return sorted(unique.values(), key=lambda p: (p.line, p.column, p.message))


def validate(loaded: LoadedProtocol, station: StationFile | None = None) -> list[Problem]:
    """Every problem of a loaded protocol that needs the whole protocol (and, given ``station``,
    the station it will run on) to see; an empty list when it may run."""
    return _Checker(loaded, station).run()
