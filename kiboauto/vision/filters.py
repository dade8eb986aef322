"""Small-neighbourhood filters for the compiled routines (inlined into them).

Maximum and minimum filters treat pixels outside the image as absent (OpenCV's default for dilate
and erode): at the ends of a row the window simply has fewer pixels. Every index inside a loop is
the loop variable plus a constant >= 0 (numba adds a negative-index check otherwise, which stops
the vectoriser); the image's first and last columns are done outside the main loops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .jit import inlined

__all__ = [
    "cols_max3",
    "cols_min3",
    "cross_max",
    "cross_min",
    "reflect101",
    "rows_max3",
    "rows_min3",
    "rows_or5",
    "rows_sum5",
]

U8 = npt.NDArray[np.uint8]


@inlined
def _max(a: np.uint8, b: np.uint8) -> np.uint8:
    return max(a, b)


@inlined
def _min(a: np.uint8, b: np.uint8) -> np.uint8:
    return min(a, b)


Filter = Callable[[U8, U8], None]


def _along_rows3(pick: Callable[[np.uint8, np.uint8], np.uint8]) -> Filter:
    """A filter taking ``pick`` (maximum or minimum) over each pixel and its row neighbours."""

    @inlined
    def along_rows(src: U8, dst: U8) -> None:
        h, w = src.shape
        for y in range(h):
            s = src[y]
            d = dst[y]
            if w == 1:
                d[0] = s[0]
                continue
            for x in range(w - 2):
                d[x + 1] = pick(pick(s[x], s[x + 1]), s[x + 2])
            d[0] = pick(s[0], s[1])
            d[w - 1] = pick(s[w - 2], s[w - 1])

    return along_rows


def _across_rows3(pick: Callable[[np.uint8, np.uint8], np.uint8]) -> Filter:
    """A filter taking ``pick`` over each pixel and its neighbours above and below (a row
    repeated at the image's edge changes no maximum or minimum)."""

    @inlined
    def across_rows(src: U8, dst: U8) -> None:
        h, w = src.shape
        for y in range(h):
            a = src[max(y - 1, 0)]
            b = src[y]
            c = src[min(y + 1, h - 1)]
            d = dst[y]
            for x in range(w):
                d[x] = pick(pick(a[x], b[x]), c[x])

    return across_rows


def _cross3(pick: Callable[[np.uint8, np.uint8], np.uint8]) -> Filter:
    """A filter taking ``pick`` over each pixel and its 4 neighbours (a 3x3 cross)."""

    @inlined
    def cross(src: U8, dst: U8) -> None:
        h, w = src.shape
        for y in range(h):
            a = src[max(y - 1, 0)]
            b = src[y]
            c = src[min(y + 1, h - 1)]
            d = dst[y]
            for x in range(w - 2):
                d[x + 1] = pick(pick(pick(a[x + 1], c[x + 1]), pick(b[x], b[x + 2])), b[x + 1])
            for x in (0, w - 1):
                v = pick(pick(a[x], c[x]), b[x])
                if x > 0:
                    v = pick(v, b[x - 1])
                if x < w - 1:
                    v = pick(v, b[x + 1])
                d[x] = v

    return cross


rows_max3, rows_min3 = _along_rows3(_max), _along_rows3(_min)
cols_max3, cols_min3 = _across_rows3(_max), _across_rows3(_min)
cross_max, cross_min = _cross3(_max), _cross3(_min)


@inlined
def rows_or5(src: U8, dst: U8) -> None:
    h, w = src.shape
    for y in range(h):
        s = src[y]
        d = dst[y]
        for x in range(w - 4):
            d[x + 2] = s[x] | s[x + 1] | s[x + 2] | s[x + 3] | s[x + 4]
        for x in range(min(w, 2)):  # the two pixels at each end (they may overlap)
            for e in (x, w - 1 - x):
                v = np.uint8(0)
                for k in range(max(e - 2, 0), min(e + 3, w)):
                    v |= s[k]
                d[e] = v


@inlined
def reflect101(i: int, n: int) -> int:
    """OpenCV's BORDER_REFLECT_101 index (as for cv2.blur): -1 -> 1, n -> n - 2."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * n - 2 - i
    return i


@inlined
def rows_sum5(src: U8, dst: npt.NDArray[np.uint16]) -> None:
    h, w = src.shape
    for y in range(h):
        s = src[y]
        d = dst[y]
        for x in range(w - 4):
            d[x + 2] = (
                np.uint16(s[x])
                + np.uint16(s[x + 1])
                + np.uint16(s[x + 2])
                + np.uint16(s[x + 3])
                + np.uint16(s[x + 4])
            )
        for x in range(min(w, 2)):
            for e in (x, w - 1 - x):
                v = np.uint16(0)
                for k in range(e - 2, e + 3):
                    v += np.uint16(s[reflect101(k, w)])
                d[e] = v
