"""Finding the well: the dark ring of the growth cell, fitted as a circle on a small copy."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from .prep import percentile_u8

__all__ = ["find_well", "fit_circle", "well_reference"]


def fit_circle(
    xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
) -> tuple[float, float, float]:
    """Least-squares (Kåsa) circle through points: (cx, cy, r)."""
    return _kasa(_design(xs, ys))


def _design(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rows (x, y, 1, x^2 + y^2) of the points, for :func:`_kasa`."""
    d = np.empty((xs.size, 4), np.float64)
    d[:, 0], d[:, 1], d[:, 2] = xs, ys, 1.0
    d[:, 3] = xs * xs + ys * ys
    return d


def _kasa(design: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """The Kåsa circle of the points in ``design`` (see :func:`_design`).

    All sums the 3x3 normal equations need come from one 4x4 product; the system is solved by
    Cramer's rule in plain floats (far cheaper than a LAPACK call for so small a system).
    """
    (p, q, r_, b0), (_, s, t, b1), (_, _, u, b2), _ = (design.T @ design).tolist()
    p, s, u = p + 1e-9, s + 1e-9, u + 1e-9
    det = p * (s * u - t * t) - q * (q * u - t * r_) + r_ * (q * t - s * r_)
    if det == 0.0:
        det = 1e-300
    d0 = b0 * (s * u - t * t) - q * (b1 * u - t * b2) + r_ * (b1 * t - s * b2)
    d1 = p * (b1 * u - t * b2) - b0 * (q * u - t * r_) + r_ * (q * b2 - b1 * r_)
    d2 = p * (s * b2 - b1 * t) - q * (q * b2 - b1 * r_) + b0 * (q * t - s * r_)
    cx, cy = d0 / det / 2.0, d1 / det / 2.0
    r = math.sqrt(max(d2 / det + cx * cx + cy * cy, 0.0))
    return cx, cy, r


def well_reference(small: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], float]:
    """(``small`` smoothed by a 5x5 Gaussian, its 75th percentile): the inputs of
    :func:`find_well`; the percentile is also the brightness reference of the drop search."""
    smooth = np.asarray(cv2.GaussianBlur(small, (5, 5), 0), dtype=np.uint8)
    return smooth, percentile_u8(smooth, 75)


def _ones(h: int, w: int) -> npt.NDArray[np.float32]:
    return np.ones((h, w), np.float32)


def find_well(
    smooth: npt.NDArray[np.uint8], ref: float
) -> tuple[float, float, float, float] | None:
    """The well as (cx, cy, r_ring, r_inner) in ``smooth``'s pixels, or None when there is none.

    ``smooth``: a small, smoothed grey copy of the frame; ``ref``: its bright level (75th
    percentile, see :func:`well_reference`). The clear inside of the well is a large bright region
    bounded by the dark wall ring and not touching the frame: a circle is fitted (robustly) to its
    outer boundary, giving the inner edge of the ring; the darkest radius just outside it,
    averaged over all directions, is the ring.
    """
    h, w = smooth.shape
    short = min(h, w)
    if ref < 8:
        return None
    _, bright = cv2.threshold(smooth, 0.55 * ref, 1, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    best: npt.NDArray[np.int32] | None = None
    best_extent = 0
    min_extent = 0.4 * short
    for c in contours:
        if len(c) < min_extent:
            continue  # an outline of n points spans at most n pixels: too small to be the well
        x, y, bw, bh = cv2.boundingRect(c)
        extent = max(bw, bh)
        if extent < min_extent or extent <= best_extent:
            continue
        if x <= 0 or y <= 0 or x + bw >= w or y + bh >= h:
            continue  # touches the frame: the field outside the well, not its inside
        best, best_extent = np.asarray(c, dtype=np.int32), extent
    if best is None:
        return None
    pts = best.reshape(-1, 2).astype(np.float64)
    design = _design(pts[:, 0], pts[:, 1])
    cx, cy, r = _kasa(design)
    for tol in (0.10, 0.04):
        # |distance to the centre - r| < tol r + 1, on squared distances (no root per point):
        # lo^2 < |p - c|^2 < hi^2, and |p - c|^2 - |c|^2 is one product with the design rows
        lo, hi = max((1.0 - tol) * r - 1.0, 0.0), (1.0 + tol) * r + 1.0
        d2 = design @ np.asarray([-2.0 * cx, -2.0 * cy, 0.0, 1.0])
        mid, half = 0.5 * (hi * hi + lo * lo) - cx * cx - cy * cy, 0.5 * (hi * hi - lo * lo)
        keep = np.abs(d2 - mid) < half
        if np.count_nonzero(keep) < 12:
            break
        cx, cy, r = _kasa(design[keep])
    if not (0.2 * short < r < 0.8 * max(h, w)):
        return None
    # the ring: darkest mean radius between the inner edge and 1.3x it
    n_r = 96
    max_r = 1.35 * r
    flags = cv2.WARP_POLAR_LINEAR | cv2.WARP_FILL_OUTLIERS
    polar = cv2.warpPolar(smooth, (n_r, 90), (cx, cy), max_r, flags)
    if min(cx, cy) >= max_r and cx + max_r <= w - 1 and cy + max_r <= h - 1:
        profile = cv2.reduce(polar, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    else:
        # part of the span lies outside the frame (read as 0, darker than any ring): average
        # each radius over the directions that see the frame only, weighted by how much they do
        seen = cv2.warpPolar(_ones(h, w), (n_r, 90), (cx, cy), max_r, flags)
        sums = cv2.reduce(polar, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32F).ravel()
        weights = cv2.reduce(seen, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32F).ravel()
        profile = np.where(weights > 4.5, sums / np.maximum(weights, 1e-6), np.inf)
    i0 = int(r / max_r * n_r)
    ring = r
    if i0 < n_r - 2:
        ring = (i0 + int(np.argmin(profile[i0:]))) * max_r / n_r
    return cx, cy, ring, r
