"""Finding the drop inside the well: its real (irregular) boundary, on a small copy.

The search runs on the same small copy as the well search (1/8 of a 1280x960 frame's side),
where the meniscus is still a line one or two pixels wide: 3x3 filters see it, and every step
costs a quarter of what it would on the coarse copy.

The drop edge (meniscus) is a dark, sharp line. Everything inside the well that can be reached
from the well wall without crossing an edge is outside the drop; what is left, filled, is the
drop. No shape is assumed, so elongated or lobed drops keep their real outline.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from .filters import cols_max3, cross_max, cross_min, rows_max3
from .jit import compiled

__all__ = ["find_drop"]

_ANG = np.linspace(0, 2 * np.pi, 24, endpoint=False)
# seed points: 24 directions at 2, 3 and 4 steps inside the wall
_SEED_STEPS = np.repeat(np.arange(2.0, 5.0), 24)
_SEED_COS, _SEED_SIN = np.tile(np.cos(_ANG), 3), np.tile(np.sin(_ANG), 3)


def find_drop(
    small: npt.NDArray[np.uint8],
    well: tuple[float, float, float, float] | None,
    ref: float,
    edge_frac: float = 0.08,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]] | None:
    """The drop as (filled mask over the contour's bounding box, outer contour), in ``small``'s
    pixels, or None if there is none.

    ``well``: (cx, cy, r_ring, r_inner) from :func:`kiboauto.vision.well.find_well`, or None;
    ``ref``: the frame's bright level (see :func:`kiboauto.vision.well.well_reference`). A dark
    line counts as an edge when it is ``edge_frac`` x ``ref`` darker than its surroundings.
    """
    h, w = small.shape
    ox = oy = 0
    if ref < 8:
        return None
    if well is not None:
        # only the well's inside matters: work on its bounding box plus a margin wider than the
        # reach of the filters below (so the crop changes nothing inside the well)
        cx, cy, _, r_in = well
        pad = max(r_in - 1.5, 3.0) + 8.0
        ox, oy = max(int(cx - pad), 0), max(int(cy - pad), 0)
        small = small[oy : min(int(cy + pad) + 2, h), ox : min(int(cx + pad) + 2, w)]
        well = (cx - ox, cy - oy, 0.0, r_in)
    ch, cw = small.shape
    region = np.zeros((ch, cw), np.uint8)
    if well is not None:
        cx, cy, _, r_in = well
        r_in = max(r_in - 1.5, 3.0)
        cv2.circle(region, (round(cx), round(cy)), round(r_in), 1, -1)
        # seed points just inside the wall, all round (the outside-the-drop part of the well)
        rr = r_in - _SEED_STEPS * max(1.0, 0.02 * r_in)
        sx = np.rint(cx + rr * _SEED_COS).astype(np.int64)
        sy = np.rint(cy + rr * _SEED_SIN).astype(np.int64)
    else:
        region[:] = 1
        seeds: list[tuple[int, int]] = []
        for t in np.linspace(0, 1, 16, endpoint=False):
            seeds += [(round(t * (cw - 1)), 1), (round(t * (cw - 1)), ch - 2)]
            seeds += [(1, round(t * (ch - 1))), (cw - 2, round(t * (ch - 1)))]
        sx = np.asarray([p[0] for p in seeds], np.int64)
        sy = np.asarray([p[1] for p in seeds], np.int64)
    # a dark line counts as an edge when its black-hat exceeds edge_frac x ref (integer levels:
    # > the threshold is > its floor)
    drop_u8 = _drop_mask(np.ascontiguousarray(small), region, sx, sy, math.floor(edge_frac * ref))
    contours, _ = cv2.findContours(drop_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    best = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(best)
    region_area = float(cv2.countNonZero(region))
    if area < 0.01 * region_area or area > 0.97 * region_area:
        return None
    bx, by, bw, bh = cv2.boundingRect(best)
    mask = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(mask, [best], -1, 1, -1, offset=(-bx, -by))
    return mask, np.asarray(best + np.asarray([ox, oy], np.int32), dtype=np.int32)


@compiled
def _drop_mask(
    small: npt.NDArray[np.uint8],
    region: npt.NDArray[np.uint8],
    seed_x: npt.NDArray[np.int64],
    seed_y: npt.NDArray[np.int64],
    edge_level: int,
) -> npt.NDArray[np.uint8]:
    """The drop (0/1): the part of ``region`` (0/1) that cannot be reached from the seeds
    without crossing an edge, opened by a 3x3 cross.

    Edges: a 3x3-cross black-hat (closing minus level: thin dark lines, not broad shading) above
    ``edge_level``, grown 3x3. Reaching is 4-connected, through region pixels off the edges.
    Filters treat pixels outside the image as absent, as OpenCV's dilate and erode do.
    """
    h, w = small.shape
    a = np.empty((h, w), np.uint8)
    b = np.empty((h, w), np.uint8)
    free = np.empty((h, w), np.uint8)
    # closing by the cross (its maximum, then the minimum of that) minus the level: thin dark
    # lines; those above edge_level are edges, grown 3x3 (into a)
    cross_max(small, a)
    cross_min(a, b)
    level = np.int16(min(max(edge_level, -1), 255))
    for y in range(h):
        cl, s, e = b[y], small[y], a[y]
        for x in range(w):
            e[x] = np.uint8(np.int16(cl[x]) - np.int16(s[x]) > level)
    rows_max3(a, b)
    cols_max3(b, a)
    # free space: in the region, off the edges (0 blocked, 1 free, 2 reached below)
    for y in range(h):
        r, e, f = region[y], a[y], free[y]
        for x in range(w):
            f[x] = r[x] & (e[x] ^ np.uint8(1))
    # flood from every seed that lies on free space (4-connected)
    stack = np.empty(h * w, np.int64)
    for k in range(seed_x.size):
        x0, y0 = seed_x[k], seed_y[k]
        if x0 < 0 or x0 >= w or y0 < 0 or y0 >= h or free[y0, x0] != 1:
            continue
        free[y0, x0] = 2
        top = 0
        stack[top] = y0 * w + x0
        top += 1
        while top > 0:
            top -= 1
            i = stack[top]
            y, x = i // w, i % w
            if x > 0 and free[y, x - 1] == 1:
                free[y, x - 1] = 2
                stack[top] = i - 1
                top += 1
            if x < w - 1 and free[y, x + 1] == 1:
                free[y, x + 1] = 2
                stack[top] = i + 1
                top += 1
            if y > 0 and free[y - 1, x] == 1:
                free[y - 1, x] = 2
                stack[top] = i - w
                top += 1
            if y < h - 1 and free[y + 1, x] == 1:
                free[y + 1, x] = 2
                stack[top] = i + w
                top += 1
    # the drop: region pixels not reached; then opened by the cross (minimum, then maximum)
    for y in range(h):
        r, f, d = region[y], free[y], a[y]
        for x in range(w):
            d[x] = r[x] & np.uint8(f[x] != 2)
    cross_min(a, b)
    cross_max(b, a)
    return a
