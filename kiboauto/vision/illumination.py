"""Flattening uneven light inside the drop: a robust smooth (quadratic) background model, bent
to follow the light where a real drop's lens effect makes it change faster than a quadratic."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["background_grid", "fit_background", "flatten", "follow_local_light"]


_GRID = 32  # the background is handed to flatten() on a _GRID x _GRID grid of cell centres
_CELLS = np.arange(_GRID, dtype=np.float64) + 0.5


def _least_squares(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """x minimising |a x - b| (normal equations by Cholesky: a is tall and well conditioned)."""
    _, x = cv2.solve(a, b[:, None], flags=cv2.DECOMP_CHOLESKY | cv2.DECOMP_NORMAL)
    return np.asarray(x, dtype=np.float64).ravel()


def fit_background(
    coarse_roi: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], max_points: int = 300
) -> npt.NDArray[np.float64]:
    """A smooth background for ``coarse_roi`` fitted to the pixels under ``mask`` (0/1): the
    coefficients of a quadratic in (1, u, v, u^2, uv, v^2), where pixel (x, y) of the ROI lies at
    u = (2 x + 1) / w - 1, v = (2 y + 1) / h - 1 (the ROI spans [-1, 1]).

    The quadratic is fitted by least squares to the pixels under the mask on a regular grid of
    about 2 ``max_points`` pixels, then refitted once to the pixels close to it, so crystals,
    dirt and the meniscus (outliers) do not pull it. With fewer than 12 such pixels it is the
    ROI's median level. See :func:`background_grid` for its values.
    """
    h, w = coarse_roi.shape
    step = max(1, int(math.sqrt(h * w / (2.0 * max_points))))
    picked = mask[::step, ::step].view(np.bool_)  # (the mask is 0/1)
    vals = coarse_roi[::step, ::step][picked].astype(np.float64)
    if vals.size < 12:
        level = float(np.median(coarse_roi)) if coarse_roi.size else 1.0
        return np.asarray([level, 0.0, 0.0, 0.0, 0.0, 0.0])
    ys, xs = np.nonzero(picked)
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
    return coef


def background_grid(
    coef: npt.NDArray[np.float64],
    roi_shape: tuple[int, int],
    window: tuple[int, int, int, int] | None = None,
) -> npt.NDArray[np.float32]:
    """The background of :func:`fit_background` (for a ROI of ``roi_shape`` (h, w)) at the
    centres of a 32 x 32 grid of cells spanning ``window`` (x0, y0, x1, y1) of that ROI (all of
    it by default): the layout ``cv2.resize`` assumes when :func:`flatten` enlarges it. Values are
    at least 1.0."""
    h, w = roi_shape
    x0, y0, x1, y1 = window if window is not None else (0, 0, w, h)
    u = (2.0 * x0 + _CELLS * (2.0 * (x1 - x0) / _GRID)) / w - 1.0
    v = ((2.0 * y0 + _CELLS * (2.0 * (y1 - y0) / _GRID)) / h - 1.0)[:, None]
    c0, c1, c2, c3, c4, c5 = coef.tolist()
    bg = (c0 + u * (c1 + c3 * u)) + v * ((c2 + c4 * u) + c5 * v)
    return np.asarray(np.maximum(bg, 1.0), dtype=np.float32)


def flatten(
    work_roi: npt.NDArray[np.uint8], background: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """``work_roi`` divided by the background, scaled so the background reads 128 (uint8)."""
    h, w = work_roi.shape
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(cv2.divide(work_roi, bg, scale=128.0, dtype=cv2.CV_8U), dtype=np.uint8)


_LOCAL_SIGMA = 4.0  # coarse pixels: how closely the light is followed
_LOCAL_EDGE = 0.12  # 3x3 gradient, relative to the background: pixels near it are not light
_LOCAL_KEEP = (0.5, 0.12)  # per pass, how far from the background a pixel may be and still count
_NEAR_EDGE = np.ones((5, 5), np.uint8)


def follow_local_light(
    coarse: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], smooth: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The background of ``coarse`` (a coarse-copy window, with ``mask`` 0/1 the drop's inside)
    as the light it really has: ``smooth`` (the quadratic background on the same pixels) moved
    towards a Gaussian-weighted mean of the drop pixels around each pixel that are neither near
    an edge nor far from the background (two passes, the second against the first's result).

    A real drop is a lens: the light brightens in a band inside the meniscus and dims in a
    crystal's shadow over a few dozen pixels, which no quadratic follows; left in, such a band
    reads as one large bright object joining every crystal on it to the drop edge. Crystals
    stay out of the mean (their outlines are edges, their insides far from the background);
    where too few pixels are left near a pixel (inside a large crystal), the quadratic is kept.
    """
    level = coarse.astype(np.float32)
    grad = cv2.morphologyEx(coarse, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    near_edge = cv2.dilate(np.asarray(grad > _LOCAL_EDGE * smooth, np.uint8), _NEAR_EDGE)
    usable = (mask > 0) & (near_edge == 0)
    h, w = coarse.shape
    half = (max(w // 2, 1), max(h // 2, 1))
    bg = smooth
    for keep in _LOCAL_KEEP:
        counted = (usable & (np.abs(level - bg) < keep * bg)).astype(np.float32)
        # the weighted mean is smooth: taken on a half-size copy (a quarter of the pixels, half
        # the kernel) and enlarged back
        both = cv2.resize(cv2.merge([counted, level * counted]), half, interpolation=cv2.INTER_AREA)
        both = cv2.GaussianBlur(both, (0, 0), 0.5 * _LOCAL_SIGMA)
        weight, total = cv2.split(cv2.resize(both, (w, h), interpolation=cv2.INTER_LINEAR))
        mean = total / np.maximum(weight, 1e-6)
        trust = np.minimum(weight * (1.0 / 0.3), 1.0)
        bg = np.asarray(smooth + trust * (mean - smooth), np.float32)
    return np.asarray(np.maximum(bg, 1.0), np.float32)
