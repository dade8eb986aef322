"""Calibrated confidence: the class confidence mapped to how often such an answer is right.

The drop model's probability (and the crystal scores the evidence rules report instead) is not
a frequency: on rendered scenes of imagers the model knows least it claims 0.8 where it is right
half of the time. :func:`calibrate` maps a raw confidence through a monotone curve fitted by
``tools/calibrate_vision.py`` on rendered scenes held apart from training (seeds 200000 on) and
from the benchmarks (seeds 100000 on), one curve per geometry group: a round whole well, any other
geometry (square, clipped or no well, droplets) in bright light, and a dark field (UV).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .calibration_table import CONFIDENCE_CURVES, CURVE_SCENES
from .types import Inspection, WellInfo

__all__ = [
    "GROUPS",
    "calibrate",
    "curve_scenes",
    "expected_calibration_error",
    "fit_curve",
    "geometry_group",
    "group_of",
    "isotonic",
]

GROUPS = ("round_well", "other_geometry", "dark_field")


def geometry_group(well: WellInfo | None, dark_field: bool) -> str:
    """The calibration group of one inspection: ``dark_field`` (UV), ``round_well`` (a round
    well wholly in the frame) or ``other_geometry`` (square, clipped or no well)."""
    if dark_field:
        return "dark_field"
    round_well = well is not None and well.shape == "round" and not well.clipped
    return "round_well" if round_well else "other_geometry"


def calibrate(raw: float, group: str) -> float | None:
    """The calibrated confidence for ``raw`` (0..1) in ``group``, or None when no curve was fitted
    for the group (then the raw confidence stands)."""
    curve = CONFIDENCE_CURVES.get(group)
    if not curve:
        return None
    xs, ys = curve
    return float(np.interp(min(max(raw, 0.0), 1.0), xs, ys))


def curve_scenes(group: str) -> int:
    """How many held-apart rendered scenes the group's curve was fitted on (0: none)."""
    return CURVE_SCENES.get(group, 0)


def group_of(inspection: Inspection) -> str:
    """The calibration group of a finished inspection (as :func:`geometry_group`)."""
    return geometry_group(inspection.well, inspection.features.get("dark_field", 0.0) > 0.5)


def isotonic(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pool-adjacent-violators: the non-decreasing sequence closest (least squares) to ``y``."""
    vals: list[float] = []
    weights: list[int] = []
    for v in y.tolist():
        vals.append(float(v))
        weights.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = weights[-2] + weights[-1]
            vals[-2] = (vals[-2] * weights[-2] + vals[-1] * weights[-1]) / w
            weights[-2] = w
            vals.pop()
            weights.pop()
    return np.repeat(np.asarray(vals, dtype=np.float64), weights)


def fit_curve(
    raw: Sequence[float], right: Sequence[bool], max_knots: int = 24
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots (x, y) of the monotone curve from raw confidence to how often the class was right:
    isotonic regression, then averaged over at most ``max_knots`` equal-count runs of the sorted
    raw confidences (x: the run's mean raw confidence, y: its right answers plus one over its
    size plus two, so no run of finite evidence claims certainty), plus the ends 0 and 1;
    x strictly and y weakly increasing, both rounded to 4 decimals."""
    if not raw or len(raw) != len(right):
        raise ValueError("fit_curve needs as many outcomes as confidences, at least one")
    order = np.argsort(np.asarray(raw, dtype=np.float64), kind="stable")
    x = np.asarray(raw, dtype=np.float64)[order]
    fit = isotonic(np.asarray(right, dtype=np.float64)[order])
    pieces = np.array_split(np.arange(x.size), min(max_knots, x.size))
    knots = [
        (round(float(x[p].mean()), 4), (float(fit[p].sum()) + 1.0) / (p.size + 2.0))
        for p in pieces
        if p.size
    ]
    xs, ys = [0.0], [round(knots[0][1], 4)]
    for kx, ky in knots:
        y = round(max(ky, ys[-1]), 4)
        if kx > xs[-1]:
            xs.append(kx)
            ys.append(y)
        else:  # the same x after rounding: keep the higher y
            ys[-1] = y
    if xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(ys[-1])
    return tuple(xs), tuple(ys)


def expected_calibration_error(
    confidence: Sequence[float] | npt.NDArray[np.float64],
    right: Sequence[bool] | npt.NDArray[np.float64],
    bins: int = 10,
) -> float:
    """Expected calibration error: over ``bins`` equal bins of confidence, |how often right -
    mean confidence| weighted by the bin's share of the answers (0: perfectly calibrated)."""
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(right, dtype=np.float64)
    if c.size == 0:
        return 0.0
    idx = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.sum()) * abs(float(y[m].mean()) - float(c[m].mean()))
    return total / c.size
