"""Reading drop images from files, with clear errors for files that are not usable images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["SUPPORTED_SUFFIXES", "ImageError", "check_image", "load_image"]

#: file types :func:`load_image` reads
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

Image = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


class ImageError(ValueError):
    """An image could not be read or used: names the file (if any) and the reason."""

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")


def check_image(image: object, path: str | os.PathLike[str] | None = None) -> Image:
    """Return ``image`` as a usable array (2-D grey or 3-D BGR/BGRA, uint8 or uint16).

    Float images in [0, 1] are accepted and scaled to uint8; anything else raises
    :class:`ImageError`.
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
        scaled = np.clip(np.nan_to_num(arr.astype(np.float32)) * 255.0 + 0.5, 0, 255)
        out: npt.NDArray[np.uint8] = scaled.astype(np.uint8)
        return out
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    raise ImageError(f"unsupported pixel type {arr.dtype}", path)


def load_image(path: str | os.PathLike[str]) -> Image:
    """Read a PNG, JPEG or TIFF file (8 or 16 bit, grey or colour) as a numpy array.

    Colour comes back as BGR (OpenCV's order). Raises :class:`ImageError` naming the file for a
    missing, empty, corrupt or unsupported file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageError(
            f"unsupported file type {suffix or '(none)'!r}; use {', '.join(SUPPORTED_SUFFIXES)}",
            path,
        )
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError("no such file", path) from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", path) from None
    if not data:
        raise ImageError("empty file", path)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"corrupt or unreadable image data ({exc.msg or exc})", path) from None
    if image is None:
        raise ImageError(f"corrupt or unreadable {suffix[1:].upper()} data", path)
    return check_image(image, path)
