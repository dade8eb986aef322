"""A protocol's steps as a program: stable labels, lookups, and the values conditions read.

Every step gets a **label** that does not depend on what happens at run time: its ``id`` when it
has one, else its position (``3``, ``3.2``, ``5.then.1``). A step executed inside repeats also
gets an **execution key**: its label plus the iteration of every enclosing repeat
(``image_cells.2@12``); the journal's ``steps`` and ``actions`` rows carry that key, which is how
a resumed run knows what a step already did.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiboauto.protocol.model import (
    BranchStep,
    GroupStep,
    Protocol,
    RepeatStep,
    StepBase,
    is_identifier,
)
from kiboauto.units import Q_, as_quantity

__all__ = ["Block", "Program", "Values", "step_label"]


def step_label(step: StepBase, position: str) -> str:
    """A step's label: its id, or its position in the program."""
    return step.id if step.id else position


@dataclass(frozen=True)
class Block:
    """A list of steps that run one after the other (the protocol's, a repeat's, a branch's)."""

    label: str
    steps: Sequence[StepBase]
    labels: tuple[str, ...]


def _children(step: StepBase, label: str) -> list[tuple[str, Sequence[StepBase]]]:
    if isinstance(step, RepeatStep):
        return [(f"{label}.do", step.repeat.steps)]
    if isinstance(step, BranchStep):
        return [(f"{label}.then", step.branch.then), (f"{label}.else", step.branch.else_)]
    if isinstance(step, GroupStep):
        return [(f"{label}.group", step.group)]
    return []


class Program:
    """The protocol's blocks and steps by label."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.blocks: dict[str, Block] = {}
        self.steps: dict[str, StepBase] = {}
        self.parent: dict[str, str] = {}  # step label -> block label
        self._add_block("main", protocol.steps, prefix="")

    def _add_block(self, block_label: str, steps: Sequence[StepBase], prefix: str) -> None:
        labels = []
        for i, step in enumerate(steps, start=1):
            label = step_label(step, f"{prefix}{i}")
            labels.append(label)
            self.steps[label] = step
            self.parent[label] = block_label
            for child_label, child_steps in _children(step, label):
                self._add_block(child_label, child_steps, prefix=f"{child_label}.")
        self.blocks[block_label] = Block(block_label, steps, tuple(labels))

    def top_level(self, label: str) -> str:
        """The top-level step that contains the step ``label`` (itself when top-level)."""
        block = self.parent.get(label)
        while block is not None and block != "main":
            owner = block.rsplit(".", 1)[0]  # "<label>.do" / ".then" / ".else" / ".group"
            label = owner
            block = self.parent.get(owner)
        return label

    def walk(self) -> Iterator[tuple[str, StepBase]]:
        """Every step with its label, in program order."""
        yield from self.steps.items()

    def crew_steps(self) -> list[tuple[str, StepBase]]:
        return [(label, s) for label, s in self.steps.items() if s.kind == "crew"]


@dataclass
class Values:
    """What conditions can read: parameters, telemetry, inspection results, run time, loops."""

    params: dict[str, Any] = field(default_factory=dict)
    telemetry: Mapping[str, object] = field(default_factory=dict)
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)
    run_time_s: float = 0.0
    loop_count: int = 0
    _cell_env: dict[str, object] | None = field(default=None, repr=False)

    def set_cell(self, n: int, result: dict[str, Any]) -> None:
        """Record cell ``n``'s latest inspection result."""
        self.cells[n] = result
        self._cell_env = None

    def _cells_env(self) -> dict[str, object]:
        if self._cell_env is None:
            out: dict[str, object] = {}
            for n, result in self.cells.items():
                for key, value in result.items():
                    if isinstance(value, bool | str):
                        out[f"cell[{n}].{key}"] = value
                    elif isinstance(value, int | float):
                        out[f"cell[{n}].{key}"] = _with_unit(key, value)
            self._cell_env = out
        return self._cell_env

    def env(self) -> dict[str, object]:
        out: dict[str, object] = {f"params.{k}": v for k, v in self.params.items()}
        out.update(self.telemetry)
        out.update(self._cells_env())
        out["run.time"] = Q_(self.run_time_s, "s")
        out["loop.count"] = self.loop_count
        return out


def _with_unit(key: str, value: float) -> object:
    """Inspection numbers named ``*_um`` / ``*_um2`` are lengths / areas in micrometres."""
    if key.endswith("_um"):
        return Q_(value, "um")
    if key.endswith("_um2"):
        return Q_(value, "um**2")
    return value


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Any:
    """A quantity literal of the protocol, parsed once (pint parsing costs tens of us)."""
    return as_quantity(text)


@functools.lru_cache(maxsize=4096)
def literal_in(text: str, unit: str) -> float:
    """The magnitude of a quantity literal in ``unit`` (cached: steps repeat)."""
    return float(_parsed(text).to(unit).magnitude)


def resolve(value: object, params: Mapping[str, Any], unit: str | None = None) -> Any:
    """A step field's value: a parameter's current value when it names one, else the quantity
    written (converted to ``unit`` when given)."""
    if isinstance(value, str) and is_identifier(value.strip()) and value.strip() in params:
        q = params[value.strip()]
    else:
        q = _parsed(value) if isinstance(value, str) else value
    if unit is not None and hasattr(q, "to"):
        return q.to(unit)
    return q
