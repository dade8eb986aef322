"""Exactly-once pump actions across crashes: intent first, then action, then reconciliation.

The rule of the house: an action that cannot be repeated is written down (its
:class:`~kiboauto.devices.ActionMarker`, committed to durable storage) before its start is sent,
and an action found open after a restart is settled by asking the device what it did, never by
sending it again. This module holds that rule for one pump; the experiment engine's journal is the
``commit`` callback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from kiboauto.devices import (
    ActionMarker,
    DeviceError,
    PumpResult,
    QuantityLike,
    SyringePump,
)
from kiboauto.units import Q_

__all__ = ["Commit", "complete", "run_once"]

log = logging.getLogger(__name__)

Commit = Callable[[ActionMarker], Awaitable[None]]
"""Stores a marker durably (journal row committed, file fsynced) before its start is sent."""


async def run_once(
    pump: SyringePump, kind: str, volume: QuantityLike, rate: QuantityLike, commit: Commit
) -> PumpResult:
    """Prepare, commit the marker, then start: the normal path of a journaled action."""
    marker = await pump.prepare(kind, volume, rate)
    await commit(marker)
    result: PumpResult = await pump.start(marker)
    return result


async def complete(pump: SyringePump, marker: ActionMarker, commit: Commit) -> PumpResult:
    """Finish an action found open after a restart, moving exactly what is still missing.

    Asks the device what ``marker``'s action delivered; follows it to its end if it is still
    running; then, if a remainder is left, prepares a new action for exactly that remainder,
    commits its marker and starts it. The result counts everything delivered for the original
    marker. Raises :class:`~kiboauto.devices.DeviceStateLost` when the device cannot say (it was
    power-cycled or re-initialised): that needs a person, not a guess.
    """
    delivery = await pump.delivered_since(marker)
    log.info(
        "%s: open %s action of %.6g uL found; device says %.6g uL delivered%s",
        marker.device,
        marker.kind,
        marker.target_ul,
        delivery.delivered_ul,
        ", still moving" if delivery.moving else "",
    )
    if delivery.moving:
        try:
            await pump.adopt(marker)
        except DeviceError as e:
            if e.delivered_ul is None:
                raise
            log.info("%s: adopted move ended early: %s", marker.device, e)
        delivery = await pump.delivered_since(marker)
    delivered = delivery.delivered_ul
    remainder = marker.remainder(delivered)
    if remainder == 0.0:
        return PumpResult(delivered, marker.target_ul, marker)
    log.info("%s: completing the remaining %.6g uL", marker.device, remainder)
    follow_up = await pump.prepare(
        marker.kind, Q_(remainder, "uL"), Q_(marker.rate_ul_min, "uL/min")
    )
    await commit(follow_up)
    try:
        result: PumpResult = await pump.start(follow_up)
    except DeviceError as e:
        if e.delivered_ul is not None:
            e.delivered_ul += delivered
        e.marker = marker
        raise
    return PumpResult(delivered + result.delivered_ul, marker.target_ul, marker)
