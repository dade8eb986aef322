"""Finding the well: the dark ring of the growth cell, fitted as a circle on a small copy."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from .prep import percentile_u8

__all__ = ["find_well", "fit_circle"]


def fit_circle(
    xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
) -> tuple[float, float, float]:
    """Least-squares (Kåsa) circle through points: (cx, cy, r)."""
    a = np.column_stack([xs, ys, np.ones_like(xs)])
    b = xs * xs + ys * ys
    sol = np.linalg.solve(a.T @ a + 1e-9 * np.eye(3), a.T @ b)  # normal equations: 3x3, fast
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r = float(np.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0)))
    return float(cx), float(cy), r


def find_well(small: npt.NDArray[np.uint8]) -> tuple[float, float, float, float] | None:
    """The well as (cx, cy, r_ring, r_inner) in ``small``'s pixels, or None when there is none.

    The clear inside of the well is a large bright region bounded by the dark wall ring and not
    touching the frame: a circle is fitted (robustly) to its outer boundary, giving the inner edge
    of the ring; the darkest radius just outside it, averaged over all directions, is the ring.
    """
    h, w = small.shape
    short = min(h, w)
    smooth = np.asarray(cv2.GaussianBlur(small, (5, 5), 0), dtype=np.uint8)
    ref = percentile_u8(smooth, 75)
    if ref < 8:
        return None
    _, bright = cv2.threshold(smooth, 0.55 * ref, 1, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    best: npt.NDArray[np.int32] | None = None
    best_extent = 0
    for c in contours:
        x, y, bw, bh = cv2.boundingRect(c)
        extent = max(bw, bh)
        if extent < 0.4 * short or extent <= best_extent:
            continue
        if x <= 0 or y <= 0 or x + bw >= w or y + bh >= h:
            continue  # touches the frame: the field outside the well, not its inside
        best, best_extent = np.asarray(c, dtype=np.int32), extent
    if best is None:
        return None
    pts = best.reshape(-1, 2).astype(np.float64)
    xs, ys = pts[:, 0], pts[:, 1]
    cx, cy, r = fit_circle(xs, ys)
    for tol in (0.10, 0.04):
        d = np.abs(np.hypot(xs - cx, ys - cy) - r)
        keep = d < tol * r + 1.0
        if keep.sum() < 12:
            break
        cx, cy, r = fit_circle(xs[keep], ys[keep])
    if not (0.2 * short < r < 0.8 * max(h, w)):
        return None
    # the ring: darkest mean radius between the inner edge and 1.3x it
    n_r = 96
    max_r = 1.35 * r
    polar = cv2.warpPolar(
        smooth, (n_r, 90), (cx, cy), max_r, cv2.WARP_POLAR_LINEAR | cv2.WARP_FILL_OUTLIERS
    )
    profile = polar.astype(np.float32).mean(axis=0)
    i0 = int(r / max_r * n_r)
    ring = r
    if i0 < n_r - 2:
        ring = (i0 + int(np.argmin(profile[i0:]))) * max_r / n_r
    return cx, cy, ring, r
