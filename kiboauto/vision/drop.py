"""Finding the drop inside the well: its real (irregular) boundary, on a small copy.

The search runs on the same small copy as the well search (1/8 of a 1280x960 frame's side),
where the meniscus is still a line one or two pixels wide: 3x3 filters see it, and every step
costs a quarter of what it would on the coarse copy.

The drop edge (meniscus) is a dark, sharp line. Everything inside the well that can be reached
from the well wall without crossing an edge is outside the drop; what is left, filled, is the
drop. No shape is assumed, so elongated or lobed drops keep their real outline.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["find_drop"]

_K3 = np.ones((3, 3), np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))  # a 3x3 cross
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
    # the meniscus is a thin dark line: black-hat (closing minus image) picks thin dark lines and
    # ignores broad shading such as the well wall's soft inner edge
    blackhat = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, _CROSS)
    _, edge = cv2.threshold(blackhat, edge_frac * ref, 1, cv2.THRESH_BINARY)  # > (integers)
    edge = np.asarray(cv2.dilate(edge, _K3), dtype=np.uint8)

    region = np.zeros((ch, cw), np.uint8)
    if well is not None:
        cx, cy, _, r_in = well
        r_in = max(r_in - 1.5, 3.0)
        cv2.circle(region, (round(cx), round(cy)), round(r_in), 1, -1)
        # seed points just inside the wall, all round (the outside-the-drop part of the well)
        rr = r_in - _SEED_STEPS * max(1.0, 0.02 * r_in)
        sx = np.rint(cx + rr * _SEED_COS).astype(np.intp)
        sy = np.rint(cy + rr * _SEED_SIN).astype(np.intp)
        inside_all = min(cx, cy) - r_in >= 0.0 and cx + r_in <= cw - 1 and cy + r_in <= ch - 1
    else:
        region[:] = 1
        seeds: list[tuple[int, int]] = []
        for t in np.linspace(0, 1, 16, endpoint=False):
            seeds += [(round(t * (cw - 1)), 1), (round(t * (cw - 1)), ch - 2)]
            seeds += [(1, round(t * (ch - 1))), (cw - 2, round(t * (ch - 1)))]
        sx = np.asarray([p[0] for p in seeds], np.intp)
        sy = np.asarray([p[1] for p in seeds], np.intp)
        inside_all = True
    # free space = inside the region, not on an edge; flood it from every seed (value 2),
    # checking the remaining seeds in bulk after each fill (most fall in the first one)
    free = cv2.subtract(region, edge)
    if not inside_all:  # (the well reaches past the frame)
        inside = (sx >= 0) & (sx < cw) & (sy >= 0) & (sy < ch)
        sx, sy = sx[inside], sy[inside]
    while sx.size:
        todo = free[sy, sx] == 1
        if not todo.any():
            break
        sx, sy = sx[todo], sy[todo]
        cv2.floodFill(free, None, (int(sx[0]), int(sy[0])), 2, flags=4)
        sx, sy = sx[1:], sy[1:]
    _, outside = cv2.threshold(free, 1, 1, cv2.THRESH_BINARY)  # the flooded part (2)
    drop = cv2.subtract(region, outside)
    drop_u8 = cv2.morphologyEx(drop, cv2.MORPH_OPEN, _CROSS)
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
