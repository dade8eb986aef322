"""Flattening uneven light inside the drop: a robust smooth (quadratic) background model."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["fit_background", "flatten"]


def _design(xs: npt.NDArray[np.float32], ys: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=-1)


def _median(v: npt.NDArray[np.float32]) -> float:
    """``np.median`` of a 1-D float32 array (same value), without its generic overhead."""
    n = v.size
    k = n // 2
    if n % 2:
        return float(np.partition(v, k)[k])
    part = np.partition(v, (k - 1, k))
    return float((part[k - 1] + part[k]) / np.float32(2))


def fit_background(
    coarse_roi: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], max_points: int = 300
) -> npt.NDArray[np.float32]:
    """A smooth background for ``coarse_roi`` fitted to the pixels under ``mask``.

    The result is sampled on a grid of at most 32 x 32 spanning the ROI (corner to corner).

    A quadratic surface is fitted by least squares, then refitted once to the pixels close to it,
    so crystals, dirt and the meniscus (outliers) do not pull it. Values are at least 1.0.
    """
    h, w = coarse_roi.shape
    step = max(1, int(np.sqrt(h * w / (2.0 * max_points))))
    ys, xs = np.nonzero(mask[::step, ::step])
    ys, xs = ys * step, xs * step
    if xs.size < 12:
        level = float(np.median(coarse_roi)) if coarse_roi.size else 1.0
        return np.full((min(h, 32), min(w, 32)), max(level, 1.0), np.float32)
    if xs.size > max_points:
        pick = np.linspace(0, xs.size - 1, max_points).astype(np.int64)
        xs, ys = xs[pick], ys[pick]
    vals = coarse_roi[ys, xs].astype(np.float32)
    sx, sy = 2.0 / max(w, 1), 2.0 / max(h, 1)
    a = _design(xs.astype(np.float32) * sx - 1, ys.astype(np.float32) * sy - 1)
    keep = np.ones(vals.size, bool)
    coef = np.zeros(6, np.float32)
    ridge = 1e-6 * np.eye(6, dtype=np.float32)
    for _ in range(2):
        ak = a[keep]
        coef = np.linalg.solve(ak.T @ ak + ridge, ak.T @ vals[keep])
        resid = vals - a @ coef
        spread = 1.4826 * _median(np.abs(resid[keep])) + 1.0
        keep = np.abs(resid) < 2.5 * spread
        if np.count_nonzero(keep) < 12:
            break
    # evaluated on a small grid (the surface is smooth); flatten() interpolates it up
    gw, gh = min(w, 32), min(h, 32)
    gx = np.linspace(0, w - 1, gw, dtype=np.float32) * sx - 1
    gy = np.linspace(0, h - 1, gh, dtype=np.float32) * sy - 1
    xx = np.broadcast_to(gx[None, :], (gh, gw))
    yy = np.broadcast_to(gy[:, None], (gh, gw))
    bg = _design(xx, yy) @ coef.astype(np.float32)
    return np.maximum(bg, 1.0).astype(np.float32)


def flatten(
    work_roi: npt.NDArray[np.uint8], background: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """``work_roi`` divided by the background, scaled so the background reads 128 (uint8)."""
    h, w = work_roi.shape
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.divide(work_roi.astype(np.float32), bg, scale=128.0)
    return np.asarray(cv2.convertScaleAbs(out), dtype=np.uint8)
