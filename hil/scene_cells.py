"""Phase-contrast fields of adherent cells (for confluence measurements), with exact coverage.

Cells are irregular, elongated blobs (an ellipse whose radius wobbles with a few harmonics) with a
nucleus, dark on a mid-grey background and surrounded by the bright halo typical of phase contrast.
Cells are added one by one until their union covers the asked fraction of the field; the fraction
returned is counted on the same mask the cells are drawn from, so it is exact for the image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["render_cells"]


def _cell_outline(
    r: np.random.Generator, cx: float, cy: float, size: float
) -> npt.NDArray[np.float64]:
    theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    elong = r.uniform(1.0, 3.0)
    a, b = size * math.sqrt(elong), size / math.sqrt(elong)
    radius = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    for k in (2, 3, 5):
        radius *= 1 + r.uniform(0, 0.12) * np.cos(k * theta + r.uniform(0, 2 * math.pi))
    rot = r.uniform(0, math.pi)
    x = cx + radius * np.cos(theta + rot)
    y = cy + radius * np.sin(theta + rot)
    return np.column_stack([x, y])


def render_cells(
    seed: int, confluence: float, *, width: int = 1280, height: int = 960
) -> tuple[npt.NDArray[np.uint8], float]:
    """A grey uint8 phase-contrast image of cells covering about ``confluence`` of the field,
    and the exact covered fraction of that image."""
    if not 0 <= confluence <= 1:
        raise ValueError("confluence must be in 0..1")
    if width < 64 or height < 64:
        raise ValueError("image must be at least 64x64")
    r = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCE11])
    short = min(width, height)
    mask = np.zeros((height, width), np.uint8)
    nuclei = np.zeros((height, width), np.float32)
    total = width * height
    target = confluence * total
    covered = 0
    size = short * r.uniform(0.025, 0.04)
    batch_check = 0
    while covered < target:
        cx, cy = r.uniform(-size, width + size), r.uniform(-size, height + size)
        s = size * r.uniform(0.6, 1.4)
        poly = _cell_outline(r, cx, cy, s)
        # near full coverage, place cells where the field is still empty
        if confluence > 0.6 and covered > 0.5 * total:
            empty = np.argwhere(mask[::4, ::4] == 0)
            if len(empty):
                y, x = empty[int(r.integers(0, len(empty)))] * 4
                poly = _cell_outline(r, float(x), float(y), s)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
        centre = tuple(int(v) for v in np.round(poly.mean(axis=0) * 16))
        axes = (int(s * 0.35 * 16), int(s * 0.25 * 16))
        cv2.ellipse(nuclei, centre, axes, r.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        batch_check += 1
        if batch_check % 8 == 0 or covered + s * s * 3 >= target:
            covered = int(np.count_nonzero(mask))
        if batch_check > 20000:
            break
    covered = int(np.count_nonzero(mask))
    body = (mask > 0).astype(np.float32)
    texture = cv2.GaussianBlur(r.standard_normal((height, width)).astype(np.float32), (0, 0), 2.0)
    soft = cv2.GaussianBlur(body, (0, 0), 1.2)
    halo = cv2.GaussianBlur(body, (0, 0), 3.5) - soft
    halo = np.clip(halo, 0, None) * 2.2 + np.clip(soft - body, 0, None) * 1.5
    img = 128.0 - 42.0 * soft + 30.0 * texture * soft - 18.0 * nuclei * soft + 110.0 * halo
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img *= 1.0 + 0.08 * ((xs / width) - 0.5) - 0.06 * ((ys / height) - 0.5)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7)
    img += r.standard_normal(img.shape).astype(np.float32) * 2.5
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out, covered / total
