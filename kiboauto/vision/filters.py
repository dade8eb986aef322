"""Small-neighbourhood filters for the compiled routines (inlined into them).

Maximum and minimum filters treat pixels outside the image as absent (OpenCV's default for dilate
and erode): at the ends of a row the window simply has fewer pixels. Every index inside a loop is
the loop variable plus a constant >= 0 (numba adds a negative-index check otherwise, which stops
the vectoriser); the image's first and last columns are done outside the main loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .jit import inlined

__all__ = [
    "cols_max3",
    "cols_min3",
    "cross_max",
    "cross_min",
    "reflect101",
    "rows_around3",
    "rows_around5",
    "rows_gauss5",
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


@inlined
def rows_around3(img: npt.NDArray[Any], y: int) -> tuple[Any, Any, Any]:
    """Rows y - 1, y, y + 1 of ``img``, an edge row standing in for the missing one (which
    changes no maximum or minimum)."""
    h = img.shape[0]
    return img[max(y - 1, 0)], img[y], img[min(y + 1, h - 1)]


@inlined
def rows_around5(img: npt.NDArray[Any], y: int) -> tuple[Any, Any, Any, Any, Any]:
    """Rows y - 2 .. y + 2 of ``img``, mirrored at its edges as OpenCV's BORDER_REFLECT_101."""
    h = img.shape[0]
    return (
        img[reflect101(y - 2, h)],
        img[reflect101(y - 1, h)],
        img[y],
        img[reflect101(y + 1, h)],
        img[reflect101(y + 2, h)],
    )


def _across_rows3(pick: Callable[[np.uint8, np.uint8], np.uint8]) -> Filter:
    """A filter taking ``pick`` over each pixel and its neighbours above and below (a row
    repeated at the image's edge changes no maximum or minimum)."""

    @inlined
    def across_rows(src: U8, dst: U8) -> None:
        h, w = src.shape
        for y in range(h):
            a, b, c = rows_around3(src, y)
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
            a, b, c = rows_around3(src, y)
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


def _rows_taps5(k0: int, k1: int, k2: int) -> Callable[[U8, npt.NDArray[np.uint16]], None]:
    """A filter summing each pixel's row window of 5 with the weights k0 k1 k2 k1 k0 (16-bit:
    the weights' sum times 255 must fit), mirrored at the row's ends as BORDER_REFLECT_101."""
    w0, w1, w2 = np.uint16(k0), np.uint16(k1), np.uint16(k2)

    @inlined
    def taps(src: U8, dst: npt.NDArray[np.uint16]) -> None:
        h, w = src.shape
        for y in range(h):
            s = src[y]
            d = dst[y]
            for x in range(w - 4):
                d[x + 2] = (
                    w0 * (np.uint16(s[x]) + np.uint16(s[x + 4]))
                    + w1 * (np.uint16(s[x + 1]) + np.uint16(s[x + 3]))
                    + w2 * np.uint16(s[x + 2])
                )
            for x in range(min(w, 2)):  # the two pixels at each end (they may overlap)
                for e in (x, w - 1 - x):
                    outer = np.uint16(s[reflect101(e - 2, w)]) + np.uint16(s[reflect101(e + 2, w)])
                    inner = np.uint16(s[reflect101(e - 1, w)]) + np.uint16(s[reflect101(e + 1, w)])
                    d[e] = w0 * outer + w1 * inner + w2 * np.uint16(s[e])

    return taps


#: the 5-pixel row sum (of a 5x5 box mean) and the row pass of OpenCV's 5x5 Gaussian (1 4 6 4 1)
rows_sum5 = _rows_taps5(1, 1, 1)
rows_gauss5 = _rows_taps5(1, 4, 6)
