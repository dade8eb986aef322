"""Flattening uneven light inside the drop: a robust smooth (quadratic) background model."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["fit_background", "flatten"]


def fit_background(
    coarse_roi: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], max_points: int = 300
) -> npt.NDArray[np.float32]:
    """A smooth background for ``coarse_roi`` fitted to the pixels under ``mask``.

    The result is sampled on a grid of at most 32 x 32 spanning the ROI (corner to corner).

    A quadratic surface is fitted by least squares, then refitted once to the pixels close to it,
    so crystals, dirt and the meniscus (outliers) do not pull it. Values are at least 1.0.
    """
    h, w = coarse_roi.shape
    step = max(1, int(math.sqrt(h * w / (2.0 * max_points))))
    grid = mask[::step, ::step]
    idx = np.flatnonzero(grid)
    n = idx.size
    if n < 12:
        level = float(np.median(coarse_roi)) if coarse_roi.size else 1.0
        return np.full((min(h, 32), min(w, 32)), max(level, 1.0), np.float32)
    if n > max_points:  # evenly spread picks, first and last included
        idx = idx[np.arange(max_points, dtype=np.int64) * (n - 1) // (max_points - 1)]
        n = max_points
    ys, xs = np.divmod(idx, grid.shape[1])
    vals = coarse_roi[::step, ::step].ravel()[idx].astype(np.float32)
    # coordinates scaled to [-1, 1] over the ROI, design columns 1, u, v, u^2, uv, v^2
    sx, sy = 2.0 / max(w, 1), 2.0 / max(h, 1)
    u = (xs * step).astype(np.float32) * np.float32(sx) - 1
    v = (ys * step).astype(np.float32) * np.float32(sy) - 1
    a = np.empty((n, 6), np.float32)
    a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5] = 1, u, v, u * u, u * v, v * v
    col = vals[:, None]
    keep: npt.NDArray[np.bool_] | None = None
    coef: Any = np.zeros((6, 1), np.float32)
    for _ in range(2):
        ak, vk = (a, col) if keep is None else (a[keep], col[keep])
        _, coef = cv2.solve(ak, vk, flags=cv2.DECOMP_CHOLESKY | cv2.DECOMP_NORMAL)
        resid = np.abs(vals - (a @ coef).ravel())
        rk = resid if keep is None else resid[keep]
        half = rk.size // 2
        med = float(np.partition(rk, half)[half])  # (upper) median
        keep = resid < 2.5 * (1.4826 * med + 1.0)
        if np.count_nonzero(keep) < 12:
            break
    # evaluated on a small grid (the surface is smooth); flatten() interpolates it up
    gw, gh = min(w, 32), min(h, 32)
    gx = np.arange(gw, dtype=np.float32) * np.float32((w - 1) * sx / max(gw - 1, 1)) - 1
    gy = np.arange(gh, dtype=np.float32) * np.float32((h - 1) * sy / max(gh - 1, 1)) - 1
    gy = gy[:, None]
    c0, c1, c2, c3, c4, c5 = coef.ravel().tolist()
    bg = (c0 + c1 * gx + c3 * gx * gx) + gy * (c2 + c4 * gx) + c5 * gy * gy
    return np.asarray(np.maximum(bg, 1.0), dtype=np.float32)


def flatten(
    work_roi: npt.NDArray[np.uint8], background: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """``work_roi`` divided by the background, scaled so the background reads 128 (uint8)."""
    h, w = work_roi.shape
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(cv2.divide(work_roi, bg, scale=128.0, dtype=cv2.CV_8U), dtype=np.uint8)
