"""`track`: follow the crystals of one cell through a time series of inspections."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .types import GrowthReport, GrowthTrack, Inspection

__all__ = ["track"]


@dataclass
class _Open:
    times: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)
    centroids: list[tuple[float, float]] = field(default_factory=list)  # full-res px
    um: list[tuple[float, float]] = field(default_factory=list)  # drift-corrected, µm
    absent_before: float = -math.inf  # last image time at which it was not yet seen


def _growth_rate(times: list[float], lengths: list[float]) -> float:
    """µm/h over the growing phase (points until the length first reaches 90 % of its maximum)."""
    if len(times) < 2:
        return 0.0
    top = max(lengths)
    end = next(i for i, v in enumerate(lengths) if v >= 0.9 * top) + 1
    end = max(end, 2)
    t = np.asarray(times[:end], dtype=np.float64) / 3600.0
    v = np.asarray(lengths[:end], dtype=np.float64)
    if float(np.ptp(t)) <= 0:
        return 0.0
    slope = float(np.polyfit(t, v, 1)[0])
    return max(slope, 0.0)


def track(
    series: Sequence[tuple[float, Inspection]],
    *,
    max_jump_um: float = 60.0,
    min_seen: int = 2,
) -> GrowthReport:
    """Match crystals between the images of one cell and report each crystal's growth.

    ``series``: (clock time in s, inspection) pairs, in any order. Crystals are matched to the
    nearest track (greedy, closest pairs first) within ``max_jump_um``; stage drift between images
    is removed using the well centre when both images found it. A track must be seen in at least
    ``min_seen`` images (one-off detections are noise). Nucleation time: the first-seen length
    extrapolated back at the measured growth rate, but not before the last image without it.
    """
    items = sorted(series, key=lambda p: p[0])
    tracks: list[_Open] = []
    times: list[float] = []
    counts: list[int] = []
    ref_well: tuple[float, float] | None = None
    for t, insp in items:
        times.append(float(t))
        counts.append(len(insp.crystals))
        um = insp.um_per_px
        dx = dy = 0.0
        if insp.well is not None:
            if ref_well is None:
                ref_well = insp.well.center_px
            else:
                dx = insp.well.center_px[0] - ref_well[0]
                dy = insp.well.center_px[1] - ref_well[1]
        pos = [((c.centroid_px[0] - dx) * um, (c.centroid_px[1] - dy) * um) for c in insp.crystals]
        pairs: list[tuple[float, int, int]] = []
        for ti, tr in enumerate(tracks):
            lx, ly = tr.um[-1]
            for ci, (x, y) in enumerate(pos):
                d = math.hypot(x - lx, y - ly)
                if d <= max_jump_um:
                    pairs.append((d, ti, ci))
        pairs.sort()
        used_t: set[int] = set()
        used_c: set[int] = set()
        for _, ti, ci in pairs:
            if ti in used_t or ci in used_c:
                continue
            used_t.add(ti)
            used_c.add(ci)
            _extend(tracks[ti], t, insp, ci, pos[ci])
        for ci in range(len(pos)):
            if ci not in used_c:
                new = _Open(absent_before=times[-2] if len(times) > 1 else -math.inf)
                _extend(new, t, insp, ci, pos[ci])
                tracks.append(new)
    done: list[GrowthTrack] = []
    for tr in tracks:
        if len(tr.times) < min_seen:
            continue
        rate = _growth_rate(tr.times, tr.lengths)
        first_t, first_len = tr.times[0], tr.lengths[0]
        nuc = first_t - (first_len / rate * 3600.0 if rate > 0 else 0.0)
        lower = tr.absent_before if math.isfinite(tr.absent_before) else nuc
        nuc = min(first_t, max(nuc, lower))
        done.append(
            GrowthTrack(
                id=len(done) + 1,
                times_s=tr.times,
                lengths_um=tr.lengths,
                centroids_px=tr.centroids,
                nucleation_s=nuc,
                growth_um_per_h=rate,
            )
        )
    return GrowthReport(tracks=done, times_s=times, counts=counts)


def _extend(tr: _Open, t: float, insp: Inspection, ci: int, pos_um: tuple[float, float]) -> None:
    c = insp.crystals[ci]
    tr.times.append(float(t))
    tr.lengths.append(c.length_um)
    tr.centroids.append(c.centroid_px)
    tr.um.append(pos_um)
