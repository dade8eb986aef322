"""The New Era pump's ``DIS`` volume counters: reading them, their resolution and saturation.

Everything the driver says about an action's delivered volume is a difference of these
counters (see :mod:`kiboauto.drivers.newera_actions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .newera_commands import DIS_RE
from .newera_wire import COUNTER_LIMIT, MOVING, VOLUME_UNITS, Reply, display_resolution

__all__ = ["Counters", "needs_clear"]


@dataclass(frozen=True)
class Counters:
    """One ``DIS`` reply: the status it carried and both volume counters as displayed."""

    status: str
    status_text: str
    infused_text: str
    withdrawn_text: str
    unit: str  # "UL" | "ML"

    @classmethod
    def from_reply(cls, reply: Reply) -> Counters:
        """The counters of a ``DIS`` reply the frame parser has checked."""
        m = DIS_RE.fullmatch(reply.data)
        assert m is not None  # checked by the frame parser
        return cls(reply.status, reply.status_text, m.group(1), m.group(2), m.group(3))

    @property
    def size_ul(self) -> float:
        return VOLUME_UNITS[self.unit]

    @property
    def infused_ul(self) -> float:
        return float(self.infused_text) * self.size_ul

    @property
    def withdrawn_ul(self) -> float:
        return float(self.withdrawn_text) * self.size_ul

    @property
    def moving(self) -> bool:
        return self.status in MOVING

    @property
    def resolution_ul(self) -> float:
        """One count of the last digit of the coarser counter, in uL."""
        return max(_resolution(self.infused_text), _resolution(self.withdrawn_text)) * self.size_ul

    def counter_text(self, kind: str) -> str:
        """The counter a ``dispense`` (infused) or ``withdraw`` (withdrawn) moves, as displayed."""
        return self.infused_text if kind == "dispense" else self.withdrawn_text

    def counter_ul(self, kind: str) -> float:
        return self.infused_ul if kind == "dispense" else self.withdrawn_ul

    def saturated(self, kind: str) -> bool:
        return float(self.counter_text(kind)) >= COUNTER_LIMIT


def _resolution(text: str) -> float:
    """One count of the last digit of a number as written (``1.234`` -> 0.001)."""
    _, _, frac = text.partition(".")
    return 10.0 ** (-len(frac))


def needs_clear(counter_ul: float, target_ul: float, size: float) -> bool:
    """True when a counter at ``counter_ul`` must be cleared before moving ``target_ul`` more
    (volumes in a unit of ``size`` uL): it would saturate at 9999, or its last digit would be
    coarser than both a fresh counter's and a thousandth of the target."""
    if counter_ul <= 0:
        return False
    end = (counter_ul + target_ul) / size
    if end >= COUNTER_LIMIT:
        return True
    fresh = display_resolution(target_ul / size) * size
    return display_resolution(end) * size > max(fresh, target_ul / 1000.0)
