"""How long a protocol's steps take, before running it: shortest, likely and longest.

Durations come from the protocol alone: waits, repeat periods and bounds, crew times, pump
volumes over rates, settling times. Where the length depends on what the run will find (a repeat
``until`` a condition, a branch), the shortest and longest cases are both given; *likely* is the
longest for a repeat with no ``until`` and the midpoint otherwise. ``--dry-run`` puts beside these
the durations the run really took on the simulated rig.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiboauto.engine.program import Program, resolve
from kiboauto.protocol.model import (
    BranchStep,
    CrewStep,
    DispenseStep,
    GroupStep,
    Protocol,
    RepeatStep,
    SetTemperatureStep,
    StepBase,
    WaitStep,
    WithdrawStep,
)
from kiboauto.units import as_quantity

__all__ = ["StepEstimate", "estimate_program"]


@dataclass(frozen=True)
class StepEstimate:
    """The planned duration of one top-level step, in protocol seconds."""

    label: str
    kind: str
    shortest_s: float
    likely_s: float
    longest_s: float


def _seconds(value: object, params: dict[str, object]) -> float:
    return float(as_quantity(resolve(value, params)).to("s").magnitude)


def _span(step: StepBase, params: dict[str, object]) -> tuple[float, float]:
    """(shortest, longest) of one step."""
    if isinstance(step, WaitStep):
        s = _seconds(step.wait, params)
        return s, s
    if isinstance(step, DispenseStep | WithdrawStep):
        args = step.dispense if isinstance(step, DispenseStep) else step.withdraw
        ul = float(as_quantity(resolve(args.volume, params)).to("uL").magnitude)
        rate = float(as_quantity(resolve(args.rate, params)).to("uL/min").magnitude)
        s = 60.0 * ul / rate if rate > 0 else 0.0
        return s, s
    if isinstance(step, SetTemperatureStep):
        settle = step.set_temperature
        if not settle.wait_stable:
            return 0.0, 0.0
        return _seconds(settle.stable_for, params), _seconds(settle.within, params)
    if isinstance(step, CrewStep):
        s = _seconds(step.crew.expected, params)
        return s, s
    if isinstance(step, GroupStep):
        return _sum(step.group, params)
    if isinstance(step, BranchStep):
        a = _sum(step.branch.then, params)
        b = _sum(step.branch.else_, params)
        return min(a[0], b[0]), max(a[1], b[1])
    if isinstance(step, RepeatStep):
        r = step.repeat
        every = _seconds(r.every, params)
        body = _sum(r.steps, params)
        bound = r.times if r.times is not None else None
        if r.for_ is not None:
            by_time = int(_seconds(r.for_, params) // every) + 1 if every > 0 else 1
            bound = by_time if bound is None else min(bound, by_time)
        n = bound or 1
        longest = (n - 1) * every + body[1]
        shortest = body[0] if r.until is not None else longest
        return shortest, longest
    return 0.0, 0.0


def _sum(steps: Sequence[StepBase], params: dict[str, object]) -> tuple[float, float]:
    lo = hi = 0.0
    for s in steps:
        a, b = _span(s, params)
        lo += a
        hi += b
    return lo, hi


def estimate_program(protocol: Protocol) -> list[StepEstimate]:
    """Each top-level step's planned duration."""
    params: dict[str, object] = {k: p.quantity() for k, p in protocol.parameters.items()}
    program = Program(protocol)
    block = program.blocks["main"]
    out = []
    for step, label in zip(block.steps, block.labels, strict=True):
        lo, hi = _span(step, params)
        likely = hi if not (isinstance(step, RepeatStep) and step.repeat.until) else (lo + hi) / 2
        out.append(StepEstimate(label, step.kind, lo, likely, hi))
    return out
