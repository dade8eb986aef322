"""Turning any accepted image into the small 8-bit grey copies the analysis works on."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .colour import halve_bgr, halves_bgr, subtract_spread

__all__ = ["Grey", "Pyramid", "build_pyramid", "double", "halve", "to_grey"]

Grey = npt.NDArray[np.uint8]


def to_grey(image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]) -> npt.NDArray[np.generic]:
    """Grey (luminance) of a BGR/BGRA image; grey images pass through (no copy)."""
    if image.ndim == 2:
        return image
    code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
    return np.asarray(cv2.cvtColor(image, code))


def halve(
    img: npt.NDArray[np.generic], out: npt.NDArray[np.generic] | None = None
) -> npt.NDArray[np.generic]:
    """Half size by 2x2 averaging (OpenCV's fast path for INTER_AREA at exactly 1/2), into
    ``out`` when given (its shape and type must fit)."""
    h, w = img.shape[:2]
    if halves_bgr(img):  # 8-bit colour: the compiled routine (same result, about half the time)
        return halve_bgr(
            np.asarray(img, dtype=np.uint8), None if out is None else np.asarray(out, np.uint8)
        )
    src: Any = img  # any pixel type OpenCV resizes (uint8, uint16, float)
    if out is None:
        return np.asarray(cv2.resize(src, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    dst: Any = out
    cv2.resize(src, (w // 2, h // 2), dst=dst, interpolation=cv2.INTER_AREA)
    return out


def double(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A uint8 image enlarged exactly 2x, each pixel repeated 2x2 (nearest neighbour).

    Times 257 puts every byte twice into a 16-bit word (v * 257 = v << 8 | v), which read back
    as bytes doubles the columns; repeating rows does the rest. Several times cheaper than
    ``cv2.resize`` for this case.
    """
    h, w = img.shape
    pairs = np.multiply(img, 257, dtype=np.uint16)
    return np.repeat(pairs.view(np.uint8).reshape(h, 2 * w), 2, axis=0)


_POOL = threading.local()


def scratch(slot: str, like: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """A scratch buffer of this thread, reused from call to call while its shape stays the same.

    For frame-sized temporaries that never leave the function using them: a fresh buffer of a
    few megabytes costs more in page faults (the allocator hands such blocks back to the system
    when they are freed) than the filter that fills it.
    """
    pool: dict[str, npt.NDArray[Any]] = _POOL.__dict__
    buf = pool.get(slot)
    if buf is None or buf.shape != like or buf.dtype != dtype:
        buf = np.empty(like, dtype)
        pool[slot] = buf
    return buf


def _half_shape(img: npt.NDArray[np.generic]) -> tuple[int, ...]:
    return (img.shape[0] // 2, img.shape[1] // 2, *img.shape[2:])


def _halvings(short: int, target: int) -> int:
    """How many 2x2 reductions keep a short side of ``short`` pixels at least ``target``."""
    n = 0
    while short // 2 ** (n + 1) >= target:
        n += 1
    return n


def _reduce(
    img: npt.NDArray[np.generic], times: int, pool: str = "", last_to_scratch: bool = False
) -> npt.NDArray[np.generic]:
    """``img`` halved ``times`` times. With a ``pool`` name the intermediate results (and the
    last one too with ``last_to_scratch``) go to this thread's scratch buffers."""
    for k in range(times):
        to_scratch = bool(pool) and (k < times - 1 or last_to_scratch)
        out = scratch(f"{pool}{k}", _half_shape(img), img.dtype) if to_scratch else None
        img = halve(img, out)
    return img


def _grey_minus_spread(
    bgr: npt.NDArray[np.uint8],
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> Grey:
    """Grey level minus colour spread (max(B, G, R) - min(B, G, R)) per pixel, of ``bgr``'s
    rows ``rows`` and columns ``cols`` (all by default).

    The grey level is OpenCV's (``cv2.cvtColor``); the spread and the subtraction are one compiled
    pass (:func:`kiboauto.vision.colour.subtract_spread`).
    """
    h, w = bgr.shape[:2]
    y0, y1 = rows if rows is not None else (0, h)
    x0, x1 = cols if cols is not None else (0, w)
    whole = np.ascontiguousarray(bgr)
    grey = np.asarray(cv2.cvtColor(whole[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    subtract_spread(whole, y0, x0, grey)
    return grey


def _to_u8(img: npt.NDArray[np.generic]) -> Grey:
    if img.dtype == np.uint8:
        return np.asarray(img, dtype=np.uint8)
    # 16 bit: stretch so the bright end of the histogram lands near 230
    sample = img[:: max(1, img.shape[0] // 64), :: max(1, img.shape[1] // 64)]
    top = float(np.percentile(np.asarray(sample, dtype=np.float32), 99.5))
    scale = 230.0 / max(top, 1.0)
    return np.asarray(cv2.convertScaleAbs(img, alpha=scale), dtype=np.uint8)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pyramid:
    """The working-resolution copy of one image and a coarser grey copy (``coarse``).

    ``work_scale`` / ``coarse_scale``: full-resolution pixels per working / coarse pixel. The
    analysis needs the working resolution only inside the drop, so for colour images the grey
    working level is made on request (:meth:`work_roi`) from the colour copy at that scale. A
    pyramid is valid until the next :func:`build_pyramid` call in the same thread (its colour copy
    may live in a scratch buffer).
    """

    source: npt.NDArray[np.uint8]  # grey working copy, or colour (BGR) at the working scale
    coarse: Grey
    work_scale: int
    coarse_scale: int
    full_size: tuple[int, int]  # (width, height)
    dark_field: bool = False  # a dark field (UV, fluorescence): levels were inverted

    @property
    def work_shape(self) -> tuple[int, int]:
        """(height, width) of the working level."""
        return self.source.shape[0], self.source.shape[1]

    def work_roi(self, y0: int, y1: int, x0: int, x1: int) -> Grey:
        """The grey working level in rows y0:y1, columns x0:x1."""
        if self.source.ndim == 2:
            return self.source[y0:y1, x0:x1]
        return _grey_minus_spread(self.source, (y0, y1), (x0, x1))

    @property
    def work(self) -> Grey:
        """The whole grey working level."""
        return self.work_roi(0, self.source.shape[0], 0, self.source.shape[1])


def build_pyramid(
    image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], work_short: int, coarse_short: int
) -> Pyramid:
    """Working and coarse copies by repeated 2x2 averaging (cheap, anti-aliased).

    Colour (e.g. polarised light) is reduced in colour; grey levels are then "grey minus colour
    spread", so birefringent colour shows as dark objects like any other.
    """
    h, w = image.shape[:2]
    n_work = _halvings(min(h, w), work_short)
    n_coarse = max(_halvings(min(h, w), coarse_short) - n_work, 0)
    work_scale, coarse_scale = 2**n_work, 2 ** (n_work + n_coarse)
    source: npt.NDArray[np.uint8]
    if image.ndim == 3:
        src = _reduce(image[:, :, :3], n_work, "colour", last_to_scratch=True)
        # contiguous (a BGRA frame's BGR part is not), so the colour stages read it row by row
        source = np.ascontiguousarray(_to_u8(src), dtype=np.uint8)
        if n_coarse == 0:  # no coarser level: the grey working level is needed whole
            source = _grey_minus_spread(source)
            coarse = source
        else:
            coarse_src = np.asarray(_reduce(source, n_coarse), dtype=np.uint8)
            coarse = _grey_minus_spread(coarse_src)
    else:
        source = _to_u8(_reduce(image, n_work, "grey"))
        coarse = np.asarray(_reduce(source, n_coarse), dtype=np.uint8)
    lut = dark_field_lut(coarse)
    if lut is None:
        return Pyramid(source, coarse, work_scale, coarse_scale, (w, h))
    if source.ndim == 3:
        source = np.asarray(cv2.cvtColor(source, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    source = np.asarray(cv2.LUT(source, lut), dtype=np.uint8)
    coarse = np.asarray(cv2.LUT(coarse, lut), dtype=np.uint8)
    return Pyramid(source, coarse, work_scale, coarse_scale, (w, h), dark_field=True)


# a frame whose median grey level is below this is a dark field (UV or fluorescence imaging:
# measured 4-21 on rendered UV frames, 81-210 on bright-field and cross-polarised ones, 111-171
# on the real frames in devdata)
DARK_FIELD_MEDIAN = 48
_DARK_BACKGROUND = 205.0  # where the inverted background lands (a bright field's usual level)
_DARK_OBJECT = 25.0  # where the brightest objects (glowing crystals) land


def dark_field_lut(coarse: Grey) -> npt.NDArray[np.uint8] | None:
    """For a dark-field frame (median of ``coarse`` below :data:`DARK_FIELD_MEDIAN`), the look-up
    table that inverts and stretches it into a bright field: the median (the glow of the drop and
    plastic) to 205, the 99.9th percentile (glowing crystals) to 25, so bright objects read as
    dark ones, as every later stage expects. None for a bright field."""
    if coarse.size == 0:
        return None
    hist = cv2.calcHist([coarse], [0], None, [256], [0, 256]).ravel()
    cum = np.cumsum(hist)
    med = float(np.searchsorted(cum, 0.5 * cum[-1]))
    if med >= DARK_FIELD_MEDIAN:
        return None
    top = max(float(np.searchsorted(cum, 0.999 * cum[-1])), med + 8.0)
    gain = (_DARK_BACKGROUND - _DARK_OBJECT) / (top - med)
    levels = np.arange(256, dtype=np.float64)
    out = np.clip(_DARK_BACKGROUND - (levels - med) * gain, 0.0, 255.0)
    return np.asarray(np.round(out), dtype=np.uint8)
