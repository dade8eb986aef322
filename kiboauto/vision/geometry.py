"""Wells and drops of real imagers: square or clipped wells, no well, drops meeting the wall.

:func:`kiboauto.vision.well.find_well` and :func:`kiboauto.vision.drop.find_drop` handle the
round, whole well with a drop inside it whose edge is a thin dark line (the rendered scenes the
models learnt from). Real imagers also show square sub-wells (VMXi), wells clipped by the frame
(zoomed views), no well at all, drops that meet the well wall, and drop edges that are a broad
shaded band (Rock Imager). This module finds those, on the same small copy:

- :func:`well_region`: the well's bright inside as a mask, whatever its shape, and whether it is
  round or square and clipped by the frame;
- :func:`drop_in_region`: the drop inside that region as what is left when the dry well floor
  (the largest edge-free area reaching the wall) is taken away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .well import fit_circle

__all__ = ["WellRegion", "drop_in_region", "well_region"]

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class WellRegion:
    """The well's inside as seen in the small copy (``mask`` 0/1 over the whole copy)."""

    shape: str  # "round" or "square"
    clipped: bool
    mask: U8
    circle: tuple[float, float, float]  # (cx, cy, r) in small pixels (square: half the long side)
    bbox: tuple[int, int, int, int]


_SQUARE_FILL = 0.87  # outline area / its minimum-area rectangle: a disc 0.785, a square ~1
_FIELD_FILL = 0.85  # a bright region this large (of the frame) is the field, not a well
_FLOOR_PIECE = 0.15  # a piece of dry floor this large (of the largest piece) is floor too
_FLOOR_REACH = 8  # small pixels the floor may grow back over the edge filters' reach
_FLOOR_HOLES = 0.08  # a part of the well holding this much in holes (of its outline) is no floor
_FLOOR_TOL = 0.04  # ... onto pixels at most this much (of the bright level) below the floor nearby


def well_region(smooth: U8, ref: float) -> WellRegion | None:
    """The well's bright inside (round or square, whole or clipped by the frame) or None when the
    bright field is no well (it fills the frame, or nothing is bright and large)."""
    h, w = smooth.shape
    short = min(h, w)
    if ref < 8:
        return None
    _, bright = cv2.threshold(smooth, 0.55 * ref, 1, cv2.THRESH_BINARY)
    bright = np.asarray(
        cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)), dtype=np.uint8
    )
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    best = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(best))
    x, y, bw, bh = cv2.boundingRect(best)
    if max(bw, bh) < 0.4 * short or area > _FIELD_FILL * h * w:
        return None
    mask = np.zeros((h, w), np.uint8)
    # the convex hull: a well's inside is convex, and dark things that touch the wall (a drop's
    # meniscus band meeting it, crystals along it) would otherwise cut bays out of the region
    cv2.drawContours(mask, [cv2.convexHull(best)], -1, 1, -1)
    clipped = x <= 0 or y <= 0 or x + bw >= w or y + bh >= h
    (_, _), (rw, rh), _ = cv2.minAreaRect(best)
    fill = area / max(rw * rh, 1.0)
    if fill >= _SQUARE_FILL:
        circle = (x + bw / 2.0, y + bh / 2.0, max(bw, bh) / 2.0)
        return WellRegion("square", clipped, mask, circle, (x, y, bw, bh))
    pts = best.reshape(-1, 2).astype(np.float64)
    inside = (pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 0] < w - 1) & (pts[:, 1] < h - 1)
    if int(inside.sum()) < 12:
        return None
    cx, cy, r = fit_circle(pts[inside, 0], pts[inside, 1])
    resid = np.abs(np.hypot(pts[inside, 0] - cx, pts[inside, 1] - cy) - r)
    if not (0.2 * short < r < 1.5 * max(h, w)) or float(np.median(resid)) > 0.04 * r:
        return None  # neither a circle nor a rectangle: the bright field, no well
    return WellRegion("round", clipped, mask, (cx, cy, r), (x, y, bw, bh))


def _holds_things(labels: npt.NDArray[Any], stats: npt.NDArray[Any], k: int) -> bool:
    """Whether component ``k`` of ``labels`` holds many small things: its holes smaller than a
    tenth of its filled outline (a drop's crystals, precipitate, bubbles; not the one large hole
    a ring of floor has round a drop) sum to more than :data:`_FLOOR_HOLES` of that outline."""
    x, y, w, h = (int(v) for v in stats[k, :4])
    comp = (labels[y : y + h, x : x + w] == k).astype(np.uint8)
    outlines, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, outlines, -1, 1, -1)
    n_filled = int(cv2.countNonZero(filled))
    if n_filled == 0:
        return False
    n_holes, _, hstats, _ = cv2.connectedComponentsWithStats(filled - comp, connectivity=8)
    areas = hstats[1:n_holes, cv2.CC_STAT_AREA]
    return int(areas[areas < 0.1 * n_filled].sum()) > _FLOOR_HOLES * n_filled


def drop_in_region(
    small: U8, smooth: U8, region: U8, ref: float, edge_frac: float = 0.2
) -> tuple[U8, npt.NDArray[np.int32]] | None:
    """The drop inside ``region`` (0/1 over ``small``) as (filled mask over its bounding box, outer
    contour) in ``small``'s pixels, or None.

    Edges are thin dark lines (3x3 black-hat of ``small`` above 0.08 ``ref``) and broad shaded
    bands (3x3 Sobel gradient of ``smooth`` above ``edge_frac`` x ``ref``). The dry well floor is
    the largest edge-free part of the region that reaches its border (the wall or the frame); the
    drop is the largest part of the rest, opened and filled. A drop meeting the wall keeps the
    wall as its outline there. None when the floor is missing (the drop, or nothing, fills the
    region) or the rest is too small.
    """
    k3 = np.ones((3, 3), np.uint8)
    reg = np.asarray(cv2.erode(region, k3, iterations=2), dtype=np.uint8)
    region_area = float(cv2.countNonZero(reg))
    if region_area < 64:
        return None
    hat = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, k3)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    grad = cv2.magnitude(gx, gy)
    thin = np.asarray(cv2.dilate((hat > 0.08 * ref).astype(np.uint8), k3), np.uint8)
    edges = (thin | (grad > edge_frac * ref)).astype(np.uint8)
    edges = np.asarray(cv2.dilate(edges, k3), dtype=np.uint8)
    free = reg & (1 - edges)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(free, connectivity=4)
    if n <= 1:
        return None
    # components reaching the region's border ring (the wall, or the frame edge)
    ring = reg & (1 - np.asarray(cv2.erode(reg, k3, iterations=3), dtype=np.uint8))
    border = reg.copy()
    border[1:-1, 1:-1] = 0
    touching = np.unique(labels[((ring > 0) | (border > 0)) & (free > 0)])
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    # the floor is the largest of them that holds nothing: a part that encloses many edges (a
    # drop's crystals, precipitate, bubbles) is a drop reaching the frame edge, as in zoomed views
    by_area = touching[np.argsort(-stats[touching, cv2.CC_STAT_AREA], kind="stable")]
    floor = next((int(k) for k in by_area if not _holds_things(labels, stats, int(k))), 0)
    if floor == 0 or stats[floor, cv2.CC_STAT_AREA] < 0.08 * region_area:
        return None  # no dry floor to speak of: the drop (or nothing) fills the region
    # thin channels of free floor along the wall reach round a drop that meets it: cut them
    ell7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    floor_m = np.asarray(
        cv2.morphologyEx((labels == floor).astype(np.uint8), cv2.MORPH_OPEN, ell7), np.uint8
    )
    nf, flab, fstats, _ = cv2.connectedComponentsWithStats(floor_m, connectivity=4)
    if nf > 2:
        # the opening may also cut a ring of floor round a drop where it narrows: every sizeable
        # piece stays floor, only slivers go
        areas = fstats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.nonzero(areas >= _FLOOR_PIECE * areas.max())[0]
        floor_m = np.isin(flab, keep).astype(np.uint8)
    # the opening also rounds the floor off where it meets the drop's edge: give back the floor
    # within its reach of what is kept (the slivers it cut stay cut beyond that)
    floor_m = (labels == floor).astype(np.uint8) & np.asarray(cv2.dilate(floor_m, ell7), np.uint8)
    # the edge filters reach past the drop's edge onto the floor: floor-bright pixels next to the
    # floor, on no thin dark line, are floor (a few steps only, so a gap in the edge cannot let
    # the floor flood the drop, and never across the outlines of crystals along the meniscus)
    if floor_m.any():
        # the floor's level nearby (its mean over 9x9 floor pixels, spread 9x9 more beyond it)
        fm = floor_m.astype(np.float32)
        num = cv2.blur(small.astype(np.float32) * fm, (9, 9))
        den = cv2.blur(fm, (9, 9))
        near = np.where(den > 0.05, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
        near = np.asarray(cv2.dilate(near, np.ones((9, 9), np.uint8)), np.float32)
        level = near - _FLOOR_TOL * ref
        grow = (reg & (small >= level) & (thin == 0)).astype(np.uint8)
        for _ in range(_FLOOR_REACH):
            floor_m = floor_m | (np.asarray(cv2.dilate(floor_m, k3), np.uint8) & grow)
    rest = (reg & (1 - floor_m)).astype(np.uint8)
    rest = np.asarray(
        cv2.morphologyEx(
            rest, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        ),
        dtype=np.uint8,
    )
    contours, _ = cv2.findContours(rest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    best = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(best)
    if area < 0.03 * region_area or area > 0.97 * region_area:
        return None
    bx, by, bw, bh = cv2.boundingRect(best)
    mask = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(mask, [best], -1, 1, -1, offset=(-bx, -by))
    return mask, np.asarray(best, dtype=np.int32)
