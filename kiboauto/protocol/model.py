"""The protocol model: what an experiment does, as data validated by pydantic.

A protocol file (YAML, read by :mod:`kiboauto.protocol.loader`) names the device **roles** it
needs, its **parameters** (quantities with units, limits and defaults), the **steps** to run, what
to **monitor**, its **watchdogs**, its biological **time limits** and its **safe state**. Each
step is a mapping with exactly one *kind* key (``dispense:``, ``wait:``, ``repeat:`` ...) and a few
common keys (``id``, ``note``, ``on_failure``, ``timeout``). The language is described, with a
reference of every step, in ``docs/protocol-language.md``.

This module checks what one field can check on its own (syntax, units, ranges of numbers,
conditions that parse). Checks that need the whole protocol or a station (parameter references,
roles present, feasibility) live in :mod:`kiboauto.protocol.validate`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pint
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from kiboauto.protocol.expressions import ExpressionError, parse_condition, parse_watchdog
from kiboauto.units import UnitError, as_quantity

__all__ = [
    "DEVICE_KINDS",
    "STEP_KINDS",
    "BranchArgs",
    "BranchStep",
    "CaptureArgs",
    "CaptureStep",
    "CrewArgs",
    "CrewStep",
    "DispenseStep",
    "EventArgs",
    "EventStep",
    "GroupStep",
    "HoldStep",
    "InitializeArgs",
    "InitializeStep",
    "InspectArgs",
    "InspectStep",
    "Limits",
    "MonitorSpec",
    "OnFailure",
    "Parameter",
    "Protocol",
    "PumpArgs",
    "RepeatArgs",
    "RepeatStep",
    "Role",
    "SafeState",
    "SelectPortArgs",
    "SelectPortStep",
    "SetTemperatureArgs",
    "SetTemperatureStep",
    "Step",
    "StepBase",
    "TimeLimits",
    "WaitStep",
    "WatchdogSpec",
    "WithdrawStep",
    "is_identifier",
    "quantity_of",
    "value_of",
]

#: device kinds a role may ask for (the protocols of :mod:`kiboauto.devices`)
DEVICE_KINDS = ("SyringePump", "Valve", "ThermalController", "Camera")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DIMENSIONS = {
    "volume": "[length] ** 3",
    "flow": "[length] ** 3 / [time]",
    "temperature": "[temperature]",
    "time": "[time]",
    "length": "[length]",
}


def is_identifier(text: str) -> bool:
    """Whether ``text`` can name a step, a role or a parameter (letters, digits, ``_``)."""
    return bool(_IDENT.match(text))


#: the longest quantity text read (a number and a unit are short; pint is not fed essays)
MAX_QUANTITY_TEXT = 100

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?"
_UNIT_ATOM = r"[A-Za-zµμ°Ω_%][A-Za-z0-9µμ°Ω_]*(?:\s*(?:\^|\*\*)\s*[+-]?\d{1,2})?"
_QUANTITY_TEXT = re.compile(
    rf"^\s*{_NUMBER}(?:\s*{_UNIT_ATOM}(?:(?:\s*[/*]\s*|\s+){_UNIT_ATOM})*)?\s*$"
)


def _read_quantity(text: str) -> Any:
    """``text`` (a number and an optional unit) as a pint quantity, or :class:`UnitError`.

    The text is checked against a plain ``NUMBER [UNIT]`` shape before pint sees it: pint's parser
    evaluates arithmetic, so ``9**9**9 uL`` would never return and ``1/0 uL`` would raise
    ``ZeroDivisionError``.
    """
    if len(text) > MAX_QUANTITY_TEXT:
        raise UnitError(
            f"{text[:20]!r}... is {len(text)} characters long; expected a number and a unit "
            f"(at most {MAX_QUANTITY_TEXT} characters)"
        )
    if not _QUANTITY_TEXT.match(text):
        raise UnitError(f"cannot read {text!r} as a quantity: expected a number and a unit")
    try:
        return as_quantity(text)
    except UnitError:
        raise
    except (ArithmeticError, pint.errors.PintError, TypeError, ValueError, AttributeError) as e:
        raise UnitError(f"cannot read {text!r} as a quantity: {e}") from None


def quantity_of(text: str, kind: str) -> Any:
    """Read ``text`` as a quantity of ``kind`` (volume, flow, temperature, time, length).

    Raises ``ValueError`` saying what was expected.
    """
    try:
        q = _read_quantity(text)
    except UnitError as e:
        raise ValueError(f"{e}; expected a {kind} such as {_EXAMPLES[kind]}") from None
    if q.dimensionless:
        raise ValueError(f"{text!r} has no unit; expected a {kind} such as {_EXAMPLES[kind]}")
    if not q.check(_DIMENSIONS[kind]):
        raise ValueError(
            f"{text!r} is a {q.dimensionality}, not a {kind}; expected e.g. {_EXAMPLES[kind]}"
        )
    try:
        magnitude = float(q.magnitude)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a single number with a unit") from None
    if magnitude != magnitude or magnitude in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a finite quantity")
    return q


_EXAMPLES = {
    "volume": "'10 uL'",
    "flow": "'50 uL/min'",
    "temperature": "'20 degC'",
    "time": "'6 h'",
    "length": "'100 um'",
}


def _ref_or(kind: str) -> Any:
    """A field holding a quantity of ``kind`` or the name of a parameter (checked later)."""

    def check(value: str | float | int) -> str:
        text = str(value).strip()
        if is_identifier(text):
            return text  # a parameter reference: checked against the parameters by the model
        quantity_of(text, kind)
        return text

    return AfterValidator(check)


def _quantity(kind: str) -> Any:
    """A field holding a literal quantity of ``kind`` (no parameter reference)."""

    def check(value: str | float | int) -> str:
        text = str(value).strip()
        quantity_of(text, kind)
        return text

    return AfterValidator(check)


def _positive_time(value: str) -> str:
    if quantity_of(value, "time").to("s").magnitude <= 0:
        raise ValueError(f"{value!r} must be longer than 0 s")
    return value


def _condition(value: str) -> str:
    try:
        parse_condition(value)
    except ExpressionError as e:
        raise ValueError(f"condition {value!r}: {e}") from None
    return value


def _watchdog(value: str) -> str:
    try:
        parse_watchdog(value)
    except ExpressionError as e:
        raise ValueError(f"watchdog {value!r}: {e}") from None
    return value


def _ident(value: str) -> str:
    if not is_identifier(value):
        raise ValueError(
            f"{value!r} is not a name: use letters, digits and '_', not starting with a digit"
        )
    return value


QuantityText = str | float | int
Volume = Annotated[QuantityText, _ref_or("volume")]
Flow = Annotated[QuantityText, _ref_or("flow")]
Temperature = Annotated[QuantityText, _ref_or("temperature")]
Duration = Annotated[QuantityText, _ref_or("time")]
FixedDuration = Annotated[QuantityText, _quantity("time"), AfterValidator(_positive_time)]
Condition = Annotated[str, AfterValidator(_condition)]
Name = Annotated[str, AfterValidator(_ident)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Role(_Strict):
    """A device the protocol needs: its kind, the station device that plays it, and (for pumps)
    what the feasibility check must know."""

    kind: Literal["SyringePump", "Valve", "ThermalController", "Camera"]
    device: Name | None = Field(
        default=None, description="station device name; default: the role's own name"
    )
    syringe: Volume | None = Field(default=None, description="syringe capacity (pumps)")
    reservoir: Volume | None = Field(
        default=None, description="liquid available to this pump for the whole run"
    )
    range: tuple[Temperature, Temperature] | None = Field(
        default=None, description="set points this thermal controller accepts, low and high"
    )
    um_per_px: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="optical scale (cameras)"
    )


class Parameter(_Strict):
    """A value the protocol uses by name, set before the run (``--set``) or from the ground."""

    default: QuantityText | bool
    min: QuantityText | None = None
    max: QuantityText | None = None
    settable: bool = Field(default=True, description="may be changed while the run is going")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if isinstance(self.default, bool):
            if self.min is not None or self.max is not None:
                raise ValueError("a yes/no parameter has no min or max")
            return self
        default = _number_or_quantity(self.default, "default")
        for bound in ("min", "max"):
            text = getattr(self, bound)
            if text is None:
                continue
            value = _number_or_quantity(text, bound)
            try:
                ok = value >= default if bound == "max" else value <= default
            except (pint.DimensionalityError, TypeError, ValueError):
                raise ValueError(
                    f"{bound} {text!r} and default {self.default!r} are not the same kind of "
                    "quantity"
                ) from None
            if not ok:
                raise ValueError(f"default {self.default!r} is outside {bound} {text!r}")
        return self

    def quantity(self, value: QuantityText | bool | None = None) -> Any:
        """``value`` (default: the default) as a pint quantity, a float or a bool."""
        v = self.default if value is None else value
        if isinstance(v, bool):
            return v
        return _number_or_quantity(v, "value")


def _number_or_quantity(value: QuantityText, what: str) -> Any:
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{what}: {value} is too large a number") from None
    text = value.strip()
    if len(text) <= MAX_QUANTITY_TEXT:
        try:
            return float(text)
        except ValueError:
            pass
    try:
        q = _read_quantity(text)
        float(q.magnitude)
    except UnitError as e:
        raise ValueError(f"{what}: {e}") from None
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what}: {text!r} is not a single number with a unit") from None
    return q


def value_of(value: QuantityText) -> Any:
    """A number or a quantity text (``5``, ``'20 degC'``) as a float or a pint quantity.

    Raises ``ValueError`` saying what was expected; used for limits and parameter values.
    """
    return _number_or_quantity(value, "value")


class Limits(_Strict):
    """Yellow (warning) and red (alarm) limits of one reading: ``[low, high]``, either may be
    ``null``."""

    yellow: tuple[QuantityText | None, QuantityText | None] | None = None
    red: tuple[QuantityText | None, QuantityText | None] | None = None

    @field_validator("yellow", "red")
    @classmethod
    def _ordered(
        cls, value: tuple[QuantityText | None, QuantityText | None] | None
    ) -> tuple[QuantityText | None, QuantityText | None] | None:
        if value is None:
            return value
        low, high = (None if v is None else _number_or_quantity(v, "limit") for v in value)
        if low is not None and high is not None:
            try:
                ordered = bool(low < high)
            except (pint.errors.PintError, TypeError, ValueError):
                raise ValueError(
                    f"low {value[0]!r} and high {value[1]!r} are not the same kind of quantity"
                ) from None
            if not ordered:
                raise ValueError(f"low {value[0]!r} is not below high {value[1]!r}")
        return value


class MonitorSpec(_Strict):
    """Sample a device's readings at a rate and check them against limits."""

    device: Name = Field(description="role name")
    every: FixedDuration = "1 min"
    limits: dict[str, Limits] = Field(default_factory=dict, description="reading name -> limits")


class WatchdogSpec(_Strict):
    """A condition over telemetry watched during the whole run, and what to do when it holds."""

    name: Name
    when: Annotated[str, AfterValidator(_watchdog)] = Field(
        description="e.g. 'incubator.temperature > 25 degC for 5 min'"
    )
    then: Literal["event", "hold", "safe", "abort"] = "hold"
    severity: Literal["info", "warning", "alarm", "critical"] = "alarm"
    message: str = ""


class TimeLimits(_Strict):
    """How long a run may stay paused or holding before its safe action runs (biology does not
    wait for the ground)."""

    max_paused: FixedDuration | None = None
    max_holding: FixedDuration | None = None
    then: Literal["safe", "abort"] = "safe"


class SafeState(_Strict):
    """What 'safe' means for this experiment: set points for thermal controllers (by role).
    Pumps are always stopped."""

    temperatures: dict[Name, Temperature] = Field(default_factory=dict)


_POLICY = re.compile(r"^(abort|skip|hold|fail|goto\s+([A-Za-z_][A-Za-z0-9_]*))$")


class OnFailure(_Strict):
    """What to do when a step fails: retry at most ``retry`` times after ``delay``, then
    ``then`` (``abort``, ``skip``, ``hold``, ``fail`` or ``goto STEP_ID``)."""

    retry: int = Field(default=0, ge=0, le=100)
    delay: Duration = "0 s"
    then: str = "hold"

    @field_validator("then")
    @classmethod
    def _known(cls, value: str) -> str:
        text = " ".join(value.split())
        if not _POLICY.match(text):
            raise ValueError(
                f"unknown policy {value!r}; expected abort, skip, hold, fail or 'goto STEP_ID'"
            )
        return text

    @property
    def goto(self) -> str | None:
        """The step id of a ``goto STEP_ID`` policy, else None."""
        m = _POLICY.match(self.then)
        return m.group(2) if m else None


def _policy_before(value: Any) -> Any:
    if isinstance(value, str):
        return {"then": value}
    return value


Policy = Annotated[OnFailure, Field(description="what to do when the step fails")]


class StepBase(_Strict):
    """Keys every step may have."""

    id: Name | None = Field(default=None, description="a name for goto, skip and the journal")
    note: str = Field(default="", description="free text for people")
    on_failure: OnFailure | None = None
    timeout: Duration | None = None

    @field_validator("on_failure", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _policy_before(value)

    @property
    def kind(self) -> str:
        raise NotImplementedError


class SetTemperatureArgs(_Strict):
    """Set a thermal controller and (by default) wait until it is stable at the set point."""

    device: Name
    to: Temperature
    wait_stable: bool = True
    tolerance: Annotated[QuantityText, _quantity("temperature")] = "0.5 K"
    stable_for: FixedDuration = "5 min"
    within: FixedDuration = Field(default="2 h", description="give up if not stable by then")


class PumpArgs(_Strict):
    """Move a syringe pump: a volume at a rate (exactly once, even across a crash)."""

    pump: Name
    volume: Volume
    rate: Flow


class InitializeArgs(_Strict):
    """Initialise a device that needs it before use (a Cavro pump homes its plunger and valve)."""

    device: Name


class SelectPortArgs(_Strict):
    """Turn a distribution valve to a port."""

    valve: Name
    port: int = Field(ge=1, le=64)


class CaptureArgs(_Strict):
    """Take an image of a growth cell and keep it in the run directory."""

    camera: Name
    cell: int = Field(default=1, ge=1, le=1000)


class InspectArgs(_Strict):
    """Take an image of a growth cell and inspect it (crystals, or confluence of cells)."""

    camera: Name
    cell: int = Field(default=1, ge=1, le=1000)
    mode: Literal["crystals", "confluence"] = "crystals"


class CrewArgs(_Strict):
    """A procedure for the crew; the run waits for their confirmation (``ctl confirm STEP``)."""

    procedure: str = Field(min_length=1)
    expected: FixedDuration = Field(description="crew time the procedure takes")
    wait_at_most: FixedDuration | None = Field(
        default=None, description="fail the step if not confirmed by then"
    )


class EventArgs(_Strict):
    """Journal an event (and send it to the ground)."""

    message: str = Field(min_length=1)
    severity: Literal["info", "warning", "alarm", "critical"] = "info"


class RepeatArgs(_Strict):
    """Run ``steps`` every ``every`` until ``until`` holds, at most ``times`` times or for at most
    ``for`` (at least one of ``times`` and ``for`` is required, so that it ends)."""

    every: Duration
    until: Condition | None = None
    times: int | None = Field(default=None, ge=1, le=1_000_000)
    for_: FixedDuration | None = Field(default=None, alias="for")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _ends(self) -> RepeatArgs:
        if self.times is None and self.for_ is None:
            raise ValueError("a repeat needs 'times' or 'for' so that it ends")
        return self


class BranchArgs(_Strict):
    """Run ``then`` when ``if`` holds, else ``else``."""

    if_: Condition = Field(alias="if")
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")


class SetTemperatureStep(StepBase):
    """Set a temperature (and wait until stable)."""

    set_temperature: SetTemperatureArgs


class DispenseStep(StepBase):
    """Dispense a volume."""

    dispense: PumpArgs


class WithdrawStep(StepBase):
    """Withdraw (aspirate) a volume."""

    withdraw: PumpArgs


class InitializeStep(StepBase):
    """Initialise a device (done once per run: a resumed run does not initialise it again)."""

    initialize: InitializeArgs


class SelectPortStep(StepBase):
    """Select a valve port."""

    select_port: SelectPortArgs


class WaitStep(StepBase):
    """Wait for a time."""

    wait: Duration


class CaptureStep(StepBase):
    """Capture an image."""

    capture: CaptureArgs


class InspectStep(StepBase):
    """Capture and inspect an image."""

    inspect: InspectArgs


class RepeatStep(StepBase):
    """Repeat steps on a period."""

    repeat: RepeatArgs


class BranchStep(StepBase):
    """Choose steps on a condition."""

    branch: BranchArgs


class HoldStep(StepBase):
    """Put the run on hold until the ground releases it."""

    hold: str = Field(description="what the ground must decide")


class CrewStep(StepBase):
    """Ask the crew to do something and wait for their confirmation."""

    crew: CrewArgs


class EventStep(StepBase):
    """Journal an event."""

    event: EventArgs


class GroupStep(StepBase):
    """Steps that belong together (one policy, one id)."""

    group: list[Step] = Field(min_length=1)


_STEP_CLASSES: dict[str, type[StepBase]] = {
    "set_temperature": SetTemperatureStep,
    "dispense": DispenseStep,
    "withdraw": WithdrawStep,
    "initialize": InitializeStep,
    "select_port": SelectPortStep,
    "wait": WaitStep,
    "capture": CaptureStep,
    "inspect": InspectStep,
    "repeat": RepeatStep,
    "branch": BranchStep,
    "hold": HoldStep,
    "crew": CrewStep,
    "event": EventStep,
    "group": GroupStep,
}
#: every step kind, the key that names it in a step mapping
STEP_KINDS = tuple(_STEP_CLASSES)

for _kind, _cls in _STEP_CLASSES.items():
    _cls.kind = property(lambda self, k=_kind: k)  # type: ignore[method-assign,misc,assignment]


def _step_tag(value: Any) -> str | None:
    """The kind of a step mapping (its one kind key), or None (refused with a clear message)."""
    if isinstance(value, StepBase):
        return value.kind
    if not isinstance(value, dict):
        return None
    kinds = [k for k in value if k in _STEP_CLASSES]
    return kinds[0] if len(kinds) == 1 else None


Step = Annotated[
    Annotated[SetTemperatureStep, Tag("set_temperature")]
    | Annotated[DispenseStep, Tag("dispense")]
    | Annotated[WithdrawStep, Tag("withdraw")]
    | Annotated[InitializeStep, Tag("initialize")]
    | Annotated[SelectPortStep, Tag("select_port")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[CaptureStep, Tag("capture")]
    | Annotated[InspectStep, Tag("inspect")]
    | Annotated[RepeatStep, Tag("repeat")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[HoldStep, Tag("hold")]
    | Annotated[CrewStep, Tag("crew")]
    | Annotated[EventStep, Tag("event")]
    | Annotated[GroupStep, Tag("group")],
    Discriminator(
        _step_tag,
        custom_error_type="step_kind",
        custom_error_message=(
            "a step is a mapping with exactly one of: " + ", ".join(_STEP_CLASSES)
        ),
    ),
]


def _role_before(value: Any) -> Any:
    if isinstance(value, str):
        return {"kind": value}
    return value


class Protocol(_Strict):
    """A whole experiment protocol."""

    name: Name
    version: str | int = 1
    description: str = ""
    roles: dict[Name, Role] = Field(min_length=1)
    parameters: dict[Name, Parameter] = Field(default_factory=dict)
    monitor: list[MonitorSpec] = Field(default_factory=list)
    watchdogs: list[WatchdogSpec] = Field(default_factory=list)
    time_limits: TimeLimits = Field(default_factory=TimeLimits)
    safe: SafeState = Field(default_factory=SafeState)
    steps: list[Step] = Field(min_length=1)

    @field_validator("roles", mode="before")
    @classmethod
    def _role_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _role_before(v) for k, v in value.items()}
        return value

    def device_for(self, role: str) -> str:
        """The station device that plays ``role``."""
        r = self.roles[role]
        return r.device or role


# forward references of the recursive step types
for _model in (RepeatArgs, BranchArgs, GroupStep, Protocol):
    _model.model_rebuild()
