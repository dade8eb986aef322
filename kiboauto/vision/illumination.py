"""Flattening uneven light inside the drop: a robust smooth (quadratic) background model."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["fit_background", "flatten"]


_GRID = 32  # the background is returned on a _GRID x _GRID grid of cell centres over the ROI
_G = (2.0 * np.arange(_GRID) + 1.0) / _GRID - 1.0  # cell centres in [-1, 1]
_GU, _GV = np.meshgrid(_G, _G)
# the quadratic's terms (1, u, v, u^2, uv, v^2) at every grid cell, row by row
_GRID_TERMS = np.stack(
    [np.ones_like(_GU), _GU, _GV, _GU * _GU, _GU * _GV, _GV * _GV], axis=-1
).reshape(-1, 6)


def _least_squares(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """x minimising |a x - b| (normal equations by Cholesky: a is tall and well conditioned)."""
    _, x = cv2.solve(a, b[:, None], flags=cv2.DECOMP_CHOLESKY | cv2.DECOMP_NORMAL)
    return np.asarray(x, dtype=np.float64).ravel()


def fit_background(
    coarse_roi: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], max_points: int = 300
) -> npt.NDArray[np.float32]:
    """A smooth background for ``coarse_roi`` fitted to the pixels under ``mask`` (0/1).

    A quadratic surface is fitted by least squares to the pixels under the mask on a regular grid
    of about 2 ``max_points`` pixels, then refitted once to the pixels close to it, so crystals,
    dirt and the meniscus (outliers) do not pull it. It is returned sampled at the centres of a
    32 x 32 grid of cells spanning the ROI (the layout ``cv2.resize`` assumes when :func:`flatten`
    enlarges it). Values are at least 1.0.
    """
    h, w = coarse_roi.shape
    step = max(1, int(math.sqrt(h * w / (2.0 * max_points))))
    picked = mask[::step, ::step].view(np.bool_)  # (the mask is 0/1)
    vals = coarse_roi[::step, ::step][picked].astype(np.float64)
    if vals.size < 12:
        level = float(np.median(coarse_roi)) if coarse_roi.size else 1.0
        return np.full((_GRID, _GRID), max(level, 1.0), np.float32)
    ys, xs = np.nonzero(picked)
    # pixel x lies at u = (2 x + 1) / w - 1 (pixel centres, the ROI spanning [-1, 1])
    u = xs * (2.0 * step / w) + (1.0 / w - 1.0)
    v = ys * (2.0 * step / h) + (1.0 / h - 1.0)
    terms = np.empty((vals.size, 6), np.float64)
    terms[:, 0], terms[:, 1], terms[:, 2] = 1.0, u, v
    terms[:, 3], terms[:, 4], terms[:, 5] = u * u, u * v, v * v
    coef = _least_squares(terms, vals)
    resid = np.abs(vals - terms @ coef)
    med = float(np.partition(resid, resid.size // 2)[resid.size // 2])  # (upper) median
    keep = resid < 2.5 * (1.4826 * med + 1.0)
    if np.count_nonzero(keep) >= 12:
        coef = _least_squares(terms[keep], vals[keep])
    bg = (_GRID_TERMS @ coef).reshape(_GRID, _GRID)
    return np.asarray(np.maximum(bg, 1.0), dtype=np.float32)


def flatten(
    work_roi: npt.NDArray[np.uint8], background: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """``work_roi`` divided by the background, scaled so the background reads 128 (uint8)."""
    h, w = work_roi.shape
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(cv2.divide(work_roi, bg, scale=128.0, dtype=cv2.CV_8U), dtype=np.uint8)
