"""How each candidate object looks: level, spread, darkest level, rim sharpness and inner grain.

The candidates' filled outlines are drawn, each with its own label, into one label image (OpenCV
draws them); one compiled routine (numba) then measures every candidate inside its box. Made per
candidate with OpenCV this took seven calls each (about 70 per frame). The numbers are the same
as OpenCV's ``meanStdDev``, ``minMaxLoc`` and masked ``mean`` give (their formulas, not just their
values: mean = sum x (1 / n), standard deviation = sqrt(max(sum of squares x (1 / n) - mean^2,
0))), checked against them in the tests.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from .jit import compiled

__all__ = ["appearance"]

Contour = npt.NDArray[np.int32]
_FIELDS = 5  # polarity, rim sharpness, grain, spread, depth


def appearance(
    shapes: list[tuple[Contour, tuple[int, int, int, int]]],
    flat: npt.NDArray[np.uint8],
    grad: npt.NDArray[np.uint8],
    fine: npt.NDArray[np.uint8] | None,
) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """Per outline (with its bounding box), over its filled outline: polarity (mean level - 128),
    spread (standard deviation of the level) and depth (128 - darkest level); edge strength (mean
    3x3 gradient ``grad``) on its rim, and granularity (mean fine contrast ``fine``, 0 without it)
    inside the rim. The rim is what a 5x5 erosion of the filled outline removes. All / 128.

    The outlines must be the outer outlines of distinct objects of one object map (as
    ``cv2.findContours`` with ``RETR_EXTERNAL`` gives them): their filled shapes never overlap.
    """
    n = len(shapes)
    if n == 0:
        return [], [], [], [], []
    if n >= 65535:
        raise ValueError(f"too many outlines for 16-bit labels: {n}")
    h, w = flat.shape
    labels = np.zeros((h, w), np.uint16)
    boxes = np.empty((n, 4), np.int64)
    for k, (contour, box) in enumerate(shapes):
        cv2.drawContours(labels, [contour], -1, k + 1, -1)
        boxes[k] = box
    out = _measure(labels, boxes, flat, grad, flat if fine is None else fine)
    if fine is None:
        out[:, 2] = 0.0
    pol, edge, gran, spread, depth = out.T.tolist()
    return pol, edge, gran, spread, depth


@compiled
def _measure(
    labels: npt.NDArray[np.uint16],
    boxes: npt.NDArray[np.int64],
    flat: npt.NDArray[np.uint8],
    grad: npt.NDArray[np.uint8],
    fine: npt.NDArray[np.uint8],
) -> npt.NDArray[np.float64]:
    n = boxes.shape[0]
    out = np.zeros((n, _FIELDS), np.float64)
    for k in range(n):
        x0, y0, bw, bh = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        lab = np.uint16(k + 1)
        # members of the box, with a 2-pixel frame of non-members (outside the box no pixel of
        # this object lies), so the 5x5 erosion below needs no border rule
        mem = np.zeros((bh + 4, bw + 4), np.uint8)
        for y in range(bh):
            row = labels[y0 + y]
            m = mem[y + 2]
            for x in range(bw):
                m[x + 2] = np.uint8(row[x0 + x] == lab)
        # 5x5 erosion: a member is inner when its 5x5 neighbourhood is all members
        across = np.zeros((bh + 4, bw), np.uint8)
        for y in range(bh + 4):
            m = mem[y]
            a = across[y]
            for x in range(bw):
                a[x] = m[x] & m[x + 1] & m[x + 2] & m[x + 3] & m[x + 4]
        n_all = s_all = sq_all = 0
        low = 255
        n_in = s_in = n_rim = s_rim = 0
        for y in range(bh):
            m = mem[y + 2]
            a0, a1, a2 = across[y], across[y + 1], across[y + 2]
            a3, a4 = across[y + 3], across[y + 4]
            f = flat[y0 + y]
            g = grad[y0 + y]
            fi = fine[y0 + y]
            for x in range(bw):
                if m[x + 2] == 0:
                    continue
                v = int(f[x0 + x])
                n_all += 1
                s_all += v
                sq_all += v * v
                low = min(low, v)
                if a0[x] & a1[x] & a2[x] & a3[x] & a4[x]:
                    n_in += 1
                    s_in += int(fi[x0 + x])
                else:
                    n_rim += 1
                    s_rim += int(g[x0 + x])
        if n_all == 0:  # (an outline that draws no pixel: cannot come from findContours)
            continue
        scale = 1.0 / n_all
        mean = s_all * scale
        var = sq_all * scale - mean * mean
        out[k, 0] = (mean - 128.0) / 128.0
        out[k, 1] = (s_rim * (1.0 / n_rim) if n_rim else 0.0) / 128.0
        out[k, 2] = (s_in * (1.0 / n_in) if n_in else 0.0) / 128.0
        out[k, 3] = math.sqrt(max(var, 0.0)) / 128.0
        out[k, 4] = (128.0 - low) / 128.0
    return out
