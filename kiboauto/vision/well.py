"""Finding the well: the dark ring of the growth cell, fitted as a circle on a small copy."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from .filters import rows_around5, rows_gauss5
from .jit import compiled, inlined

__all__ = ["find_well", "fit_circle", "well_reference"]


def fit_circle(
    xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
) -> tuple[float, float, float]:
    """Least-squares (Kåsa) circle through points: (cx, cy, r)."""
    pts = np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], axis=1)
    keep = np.ones(len(pts), np.bool_)
    return _kasa(np.ascontiguousarray(pts), keep)


@inlined
def _kasa(pts: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """The Kåsa circle of the points ``pts[keep]``: the normal equations of
    x^2 + y^2 = 2 cx x + 2 cy y + c, solved by Cramer's rule (a 3x3 system)."""
    p = q = r_ = s = t = u = b0 = b1 = b2 = 0.0
    for i in range(pts.shape[0]):
        if not keep[i]:
            continue
        x, y = pts[i, 0], pts[i, 1]
        z = x * x + y * y
        p += x * x
        q += x * y
        r_ += x
        s += y * y
        t += y
        u += 1.0
        b0 += x * z
        b1 += y * z
        b2 += z
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


@compiled
def _robust_circle(pts: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """A Kåsa circle, refitted twice to the points within 10 % and then 4 % (+ 1 px) of its
    radius, so blobs joined to the well's inside do not pull it."""
    n = pts.shape[0]
    keep = np.ones(n, np.bool_)
    cx, cy, r = _kasa(pts, keep)
    for tol in (0.10, 0.04):
        lo, hi = max((1.0 - tol) * r - 1.0, 0.0), (1.0 + tol) * r + 1.0
        lo2, hi2 = lo * lo, hi * hi
        count = 0
        for i in range(n):
            dx, dy = pts[i, 0] - cx, pts[i, 1] - cy
            d2 = dx * dx + dy * dy
            keep[i] = lo2 < d2 < hi2
            count += keep[i]
        if count < 12:
            break
        cx, cy, r = _kasa(pts, keep)
    return cx, cy, r


@compiled
def _ring_profile(
    img: npt.NDArray[np.uint8], cx: float, cy: float, max_r: float, n_r: int, n_a: int
) -> npt.NDArray[np.float64]:
    """Mean level at ``n_r`` radii from 0 to ``max_r`` around (cx, cy), over ``n_a`` directions,
    bilinear; directions whose sample lies outside the image do not count, and a radius seen in
    fewer than 5 directions reads +inf (not a candidate for the darkest ring)."""
    h, w = img.shape
    profile = np.empty(n_r, np.float64)
    cos = np.empty(n_a, np.float64)
    sin = np.empty(n_a, np.float64)
    for a in range(n_a):
        ang = 2.0 * math.pi * a / n_a
        cos[a] = math.cos(ang)
        sin[a] = math.sin(ang)
    for i in range(n_r):
        rho = i * max_r / n_r
        total = 0.0
        seen = 0
        for a in range(n_a):
            x = cx + rho * cos[a]
            y = cy + rho * sin[a]
            if not (0.0 <= x <= w - 1 and 0.0 <= y <= h - 1):
                continue
            x0 = min(int(x), w - 2) if w > 1 else 0
            y0 = min(int(y), h - 2) if h > 1 else 0
            fx, fy = x - x0, y - y0
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            top = img[y0, x0] * (1.0 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1.0 - fx) + img[y1, x1] * fx
            total += top * (1.0 - fy) + bottom * fy
            seen += 1
        profile[i] = total / seen if seen >= 5 else np.inf
    return profile


def well_reference(small: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], float]:
    """(``small`` smoothed by a 5x5 Gaussian, its 75th percentile): the inputs of
    :func:`find_well`; the percentile is also the brightness reference of the drop search.

    The Gaussian is OpenCV's for a 5x5 window (weights 1 4 6 4 1 / 16 each way, mirrored
    border without repeating the edge pixel, rounded half up: ``cv2.GaussianBlur(small, (5, 5),
    0)``, bit for bit); the percentile is the least level with at least 75 % of the pixels at or
    below it. Both in one compiled pass (numba).
    """
    if small.ndim != 2 or small.size == 0:
        raise ValueError(f"need a non-empty grey image, got shape {small.shape}")
    smooth, level = _smooth_and_level(np.ascontiguousarray(small, dtype=np.uint8), 0.75)
    return smooth, float(level)


@compiled
def _smooth_and_level(
    img: npt.NDArray[np.uint8], fraction: float
) -> tuple[npt.NDArray[np.uint8], int]:
    h, w = img.shape
    across = np.empty((h, w), np.uint16)  # the row pass: at most 16 x 255
    rows_gauss5(img, across)
    smooth = np.empty((h, w), np.uint8)
    hist = np.zeros(256, np.int64)
    for y in range(h):
        a0, a1, a2, a3, a4 = rows_around5(across, y)
        d = smooth[y]
        for x in range(w):
            # at most 16 x 16 x 255 + 128 = 65408: the sum fits 16 bits
            t = (
                a0[x]
                + np.uint16(4) * (a1[x] + a3[x])
                + np.uint16(6) * a2[x]
                + a4[x]
                + np.uint16(128)
            )
            d[x] = np.uint8(t >> np.uint16(8))
        for x in range(w):
            hist[d[x]] += 1
    target = fraction * h * w
    total = 0
    for level in range(256):
        total += hist[level]
        if total >= target:
            return smooth, level
    return smooth, 255


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
    cx, cy, r = _robust_circle(pts)
    if not (0.2 * short < r < 0.8 * max(h, w)):
        return None
    # the ring: the darkest mean radius between the inner edge and 1.35x it
    n_r = 96
    max_r = 1.35 * r
    profile = _ring_profile(smooth, cx, cy, max_r, n_r, 90)
    i0 = int(r / max_r * n_r)
    ring = r
    if i0 < n_r - 2:
        ring = (i0 + int(np.argmin(profile[i0:]))) * max_r / n_r
    return cx, cy, ring, r
