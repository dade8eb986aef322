"""Reading drop images from files, with clear errors for files that are not usable images.

Limits (see docs/vision.md, "Limits"): a file's width and height are read from its header
(:func:`image_dimensions`) and refused before decoding when they exceed ``max_pixels``; float
images must be finite and are scaled to 8 bit from a declared range (or from [0, 1]).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto.image_header import image_dimensions, image_format

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageError",
    "check_dimensions",
    "check_float_range",
    "check_image",
    "image_dimensions",
    "image_format",
    "load_image",
]

#: file types :func:`load_image` reads
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: default limit on width x height of a file :func:`load_image` decodes (50 megapixels)
DEFAULT_MAX_PIXELS = 50_000_000

#: the most bytes one pixel of a supported file can take uncompressed (4 channels x float32);
#: a file larger than ``max_pixels`` times this (plus room for metadata) is refused unread
_MAX_BYTES_PER_PIXEL = 16
_METADATA_ROOM = 16 * 2**20

Image = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


class ImageError(ValueError):
    """An image could not be read or used: names the file (if any) and the reason."""

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")


def check_dimensions(
    data: bytes, max_pixels: int, path: str | os.PathLike[str] | None = None
) -> tuple[int, int]:
    """Width and height from the header of ``data``; :class:`ImageError` if they cannot be read
    or if width x height exceeds ``max_pixels`` (checked before any decoding)."""
    size = image_dimensions(data)
    if size is None:
        fmt = image_format(data)
        what = f"{fmt.upper()} header" if fmt else "image format (not PNG, JPEG or TIFF data)"
        raise ImageError(f"corrupt or unreadable image data: unrecognised {what}", path)
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit "
            f"of {max_pixels / 1e6:g} megapixels (raise it with --max-megapixels / max_pixels)",
            path,
        )
    return size


# ---------------------------------------------------------------------------------------------
# pixel types
# ---------------------------------------------------------------------------------------------
def _float_to_uint8(
    arr: npt.NDArray[np.floating], path: str | os.PathLike[str] | None,
    float_range: tuple[float, float] | None,
) -> npt.NDArray[np.uint8]:  # fmt: skip
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ImageError(
            f"float image contains {bad} NaN or infinite value(s); refusing to classify it", path
        )
    lo_seen, hi_seen = float(arr.min()), float(arr.max())
    if float_range is None:
        lo, hi = 0.0, 1.0
        if lo_seen < lo or hi_seen > hi:
            raise ImageError(
                f"float image values span {lo_seen:g}..{hi_seen:g}, not 0..1: declare the range "
                "they come from (--float-range LO:HI, or float_range=(lo, hi))",
                path,
            )
    else:
        lo, hi = float_range
        if lo_seen < lo or hi_seen > hi:
            raise ImageError(
                f"float image values span {lo_seen:g}..{hi_seen:g}, outside the declared "
                f"range {lo:g}..{hi:g}",
                path,
            )
    scaled = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + 0.5
    out: npt.NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def check_float_range(float_range: tuple[float, float] | None) -> None:
    """Raise :class:`ValueError` unless ``float_range`` is ``None`` or a finite ``(lo, hi)``
    with ``lo < hi``."""
    if float_range is None:
        return
    lo, hi = float_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"float range must be two finite numbers LO < HI, got {lo!r}:{hi!r}")


def check_image(
    image: object,
    path: str | os.PathLike[str] | None = None,
    *,
    float_range: tuple[float, float] | None = None,
) -> Image:
    """Return ``image`` as a usable array (2-D grey or 3-D BGR/BGRA, uint8 or uint16).

    Float images must be finite (NaN or +/-inf raise :class:`ImageError`); they are scaled to
    uint8 from ``float_range`` ``(lo, hi)`` or, without one, accepted only if every value lies in
    [0, 1]. Values outside the range raise :class:`ImageError` (never clipped silently). Anything
    else unsupported raises :class:`ImageError` too.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}", path)
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported image shape {arr.shape}", path)
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise ImageError(f"image too small ({arr.shape[1]}x{arr.shape[0]})", path)
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind == "f":
        check_float_range(float_range)
        return _float_to_uint8(arr, path, float_range)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    raise ImageError(f"unsupported pixel type {arr.dtype}", path)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    float_range: tuple[float, float] | None = None,
) -> Image:
    """Read a PNG, JPEG or TIFF file (8 or 16 bit, grey or colour; float TIFF) as a numpy array.

    Colour comes back as BGR (OpenCV's order). The width and height are read from the file's
    header first, and a file over ``max_pixels`` (width x height) is refused before it is
    decoded. Float images: see :func:`check_image` (``float_range``). Raises
    :class:`ImageError` naming the file for a missing, empty, corrupt, oversized or unsupported
    file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageError(
            f"unsupported file type {suffix or '(none)'!r}; use {', '.join(SUPPORTED_SUFFIXES)}",
            path,
        )
    if not max_pixels > 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels!r}")
    check_float_range(float_range)
    max_bytes = int(max_pixels) * _MAX_BYTES_PER_PIXEL + _METADATA_ROOM
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ImageError(
                    f"file is {size} bytes, more than any image within the limit of "
                    f"{max_pixels / 1e6:g} megapixels can take ({max_bytes} bytes)",
                    path,
                )
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError("no such file", path) from None
    except IsADirectoryError:
        raise ImageError("is a directory", path) from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", path) from None
    if not data:
        raise ImageError("empty file", path)
    if len(data) > max_bytes:
        raise ImageError(f"file grew past {max_bytes} bytes while being read", path)
    if image_format(data) not in ("png", "jpeg", "tiff"):
        raise ImageError(
            f"corrupt or unreadable {suffix[1:].upper()} data (not PNG, JPEG or TIFF)", path
        )
    check_dimensions(data, max_pixels, path)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"corrupt or unreadable image data ({exc.msg or exc})", path) from None
    if image is None:
        raise ImageError(f"corrupt or unreadable {suffix[1:].upper()} data", path)
    return check_image(image, path, float_range=float_range)
