"""The per-pixel maps of the crystal search, compiled (numba): one call per frame.

The crystal stage needs a dozen maps and counts over the flattened drop: the 3x3 gradient, fine
contrast, the object map, the mask's border, thin dark lines and the pixels away from objects.
Made with OpenCV they take about 25 calls, each a full pass over the ROI plus the call's own
cost; here they come from one compiled routine whose loops the compiler vectorises. The results
are the same, bit for bit, as the OpenCV formulation in ``tests/test_vision_kernels.py``, which
the tests compare with on rendered drops and on random images of every small size. How the loops
are kept vectorised: see :mod:`kiboauto.vision.filters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .filters import (
    cols_max3,
    cols_min3,
    rows_around5,
    rows_max3,
    rows_min3,
    rows_or5,
    rows_sum5,
)
from .jit import compiled

__all__ = ["CrystalMaps", "crystal_maps"]

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CrystalMaps:
    """The maps and counts the crystal search takes from the flattened drop (ROI pixels).

    ``objects``: 0/1, pixels brighter or darker than the background by the contrast, or on a sharp
    edge (see :func:`crystal_maps`), inside the mask, closed 3x3. ``border``: 0/1, mask pixels with
    a pixel outside the mask (or the ROI's edge) among their 3x3 neighbours. ``gradient``: 3x3
    max - min. ``fine``: |level - its 5x5 mean|. The counts are over the mask; "away" pixels are
    mask pixels more than two pixels (5x5) from any object.
    """

    objects: U8
    border: U8
    gradient: U8
    fine: U8
    n_mask: int
    n_objects: int
    n_dark_objects: int  # object pixels darker than the background (level < 128)
    n_away: int
    n_away_grainy: int  # away pixels with fine contrast > 14
    sum_away_fine: int  # fine contrast summed over the away pixels
    n_away_lines: int  # away pixels on a thin dark line (3x3 black-hat > 5)


def crystal_maps(flat: U8, mask: U8, contrast: float, edge: float) -> CrystalMaps:
    """The maps of the crystal search over ``flat`` (the flattened drop, background 128) inside
    ``mask`` (0/1, same shape).

    An object pixel differs from 128 by more than ``contrast`` x 128 grey levels, or has a 3x3
    gradient above ``edge`` x 256 (strong), or above ``edge`` x 128 (weak) next to (3x3) a pixel of
    either former kind. Soft skin folds and film ripples are only that weak and stay out, while a
    crystal's outline keeps its weak fringe.
    """
    if flat.shape != mask.shape or flat.ndim != 2 or flat.size == 0:
        raise ValueError(f"flat {flat.shape} and mask {mask.shape} must be the same 2-D shape")
    flat = np.ascontiguousarray(flat, dtype=np.uint8)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    # |level - 128| > t  <=>  level > 128 + t or level < 128 - t; all thresholds as uint8 (a
    # bound of 255 or 0 can never be passed), so the loops compare bytes, not wider integers
    t_off = math.floor(128.0 * contrast)
    obj, border, grad, fine, counts = _maps(
        flat,
        mask,
        _u8(128 + t_off),
        _u8(128 - t_off),
        _u8(math.floor(128.0 * edge)),
        _u8(math.floor(256.0 * edge)),
    )
    n = [int(v) for v in counts]
    return CrystalMaps(obj, border, grad, fine, *n)


def _u8(v: int) -> np.uint8:
    return np.uint8(min(max(v, 0), 255))


@compiled
def _maps(
    flat: U8, mask: U8, bright: np.uint8, dark: np.uint8, weak: np.uint8, strong: np.uint8
) -> tuple[U8, U8, U8, U8, npt.NDArray[np.int64]]:
    h, w = flat.shape
    tmp = np.empty((h, w), np.uint8)
    hi = np.empty((h, w), np.uint8)
    lo = np.empty((h, w), np.uint8)
    grad = np.empty((h, w), np.uint8)
    fine = np.empty((h, w), np.uint8)
    obj = np.empty((h, w), np.uint8)
    border = np.empty((h, w), np.uint8)
    sums = np.empty((h, w), np.uint16)

    # 3x3 max (hi) and min (lo): the gradient hi - lo
    rows_max3(flat, tmp)
    cols_max3(tmp, hi)
    rows_min3(flat, tmp)
    cols_min3(tmp, lo)
    for y in range(h):
        g, a, b = grad[y], hi[y], lo[y]
        for x in range(w):
            g[x] = a[x] - b[x]
    # 3x3 closing of the level (3x3 min of hi), into lo: the black-hat is closing - level
    rows_min3(hi, tmp)
    cols_min3(tmp, lo)

    # fine contrast |level - 5x5 mean|; the mean rounds to nearest as cv2.blur's does (a sum
    # of 25 levels never ends in .5 when divided by 25)
    rows_sum5(flat, sums)
    for y in range(h):
        a0, a1, a2, a3, a4 = rows_around5(sums, y)
        f, d = flat[y], fine[y]
        for x in range(w):
            # the 5x5 sum plus 12 is at most 6387, where t * 167773 >> 22 == t // 25 (a
            # multiplication the vectoriser takes; checked for every t in the tests)
            t = np.uint32(a0[x]) + a1[x] + a2[x] + a3[x] + a4[x] + np.uint32(12)
            m = np.uint8((t * np.uint32(167773)) >> np.uint32(22))
            v = f[x]
            d[x] = v - m if v > m else m - v

    # core: clearly brighter/darker or strongly sharp (0/1, into tmp)
    for y in range(h):
        f, g, c = flat[y], grad[y], tmp[y]
        for x in range(w):
            c[x] = np.uint8(f[x] > bright) | np.uint8(f[x] < dark) | np.uint8(g[x] > strong)
    # weak edges next to the core join it; inside the mask only (into border, used as scratch)
    rows_max3(tmp, hi)
    cols_max3(hi, obj)  # the core grown 3x3
    for y in range(h):
        c, g, near, m, o = tmp[y], grad[y], obj[y], mask[y], border[y]
        for x in range(w):
            o[x] = (c[x] | (np.uint8(g[x] > weak) & near[x])) & m[x]
    # closed 3x3 (grow, then shrink), into obj
    rows_max3(border, tmp)
    cols_max3(tmp, hi)
    rows_min3(hi, tmp)
    cols_min3(tmp, obj)

    # border of the mask: mask pixels whose 3x3 neighbourhood leaves the mask or the ROI
    for y in range(h):
        m, o = mask[y], border[y]
        if y == 0 or y == h - 1 or w < 3:
            for x in range(w):
                o[x] = m[x]
            continue
        a, c = mask[y - 1], mask[y + 1]
        for x in range(w - 2):
            inner = a[x] & a[x + 1] & a[x + 2] & m[x] & m[x + 2] & c[x] & c[x + 1] & c[x + 2]
            o[x + 1] = m[x + 1] & (1 - inner)
        o[0] = m[0]
        o[w - 1] = m[w - 1]

    # objects grown 5x5 (rows here, columns in the loop below) and the counts
    rows_or5(obj, tmp)
    # counts summed down the columns first (vector adds), then across once
    cols = np.zeros((7, w), np.uint32)
    c_mask, c_obj, c_dark, c_away, c_grainy, c_fine, c_lines = (
        cols[0],
        cols[1],
        cols[2],
        cols[3],
        cols[4],
        cols[5],
        cols[6],
    )
    one = np.uint8(1)
    for y in range(h):
        a0 = tmp[max(y - 2, 0)]
        a1 = tmp[max(y - 1, 0)]
        a2 = tmp[y]
        a3 = tmp[min(y + 1, h - 1)]
        a4 = tmp[min(y + 2, h - 1)]
        m, f, d, cl, o = mask[y], flat[y], fine[y], lo[y], obj[y]
        for x in range(w):
            aw = m[x] & ((a0[x] | a1[x] | a2[x] | a3[x] | a4[x]) ^ one)
            c_mask[x] += m[x]
            c_obj[x] += o[x]
            c_dark[x] += o[x] & np.uint8(f[x] < 128)
            c_away[x] += aw
            c_fine[x] += d[x] * aw
            c_grainy[x] += np.uint8(d[x] > 14) & aw
            # the closing is never below the level: the black-hat is closing - level >= 0
            c_lines[x] += np.uint8(cl[x] - f[x] > 5) & aw
    totals = np.zeros(7, np.int64)
    for k in range(7):
        for x in range(w):
            totals[k] += cols[k, x]
    n_mask, n_obj, n_dark, n_away, n_grainy, sum_fine, n_lines = totals
    counts = np.array([n_mask, n_obj, n_dark, n_away, n_grainy, sum_fine, n_lines], np.int64)
    return obj, border, grad, fine, counts
