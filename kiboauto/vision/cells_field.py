"""The segmentation behind :func:`kiboauto.vision.cells.analyse_field` (phase-contrast cells).

Steps, on a copy reduced to about 480 pixels on the short side (float, the caller's frame is
never written to):

1. **Wall**: near-full-scale pixels, opened so thin bright halos drop out, kept where a region
   touches the image border and covers >= 0.5 % of the field; grown back over the saturated pixels
   and widened by its blurred edge. It is excluded from everything that follows and from the
   denominator of the confluence.
2. **Dark level** (16-bit): the lowest populated level of the field (0.1th percentile outside the
   wall) is subtracted; 8-bit frames are taken as already black-level corrected.
3. **Noise and background**: the noise from the median absolute fine residual; the background
   from the low-texture pixels only, and among those the bright mode (phase contrast draws cells
   darker than the medium): a smooth (quadratic) surface fitted to block medians of the
   low-texture pixels, refitted without the blocks that fall below it.
4. **Cells**: texture (smoothed gradient magnitude) above a noise-relative threshold, or darker
   than the background by a noise- and level-relative margin; bright halo pixels are not cells.
   Small gaps are closed, holes enclosed by cells are filled (whole cells, not only their edges)
   and specks smaller than a small cell are dropped (debris).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["FieldMaps", "segment_field"]

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FieldMaps:
    """What :func:`segment_field` found, at working resolution.

    ``cells`` and ``wall`` are boolean masks; ``pedestal`` is the dark level subtracted (raw
    counts, 0 for 8-bit); ``noise`` the noise level and ``level`` the median background level
    (after the dark level, working units); ``texture`` the fraction of the surface with more
    gradient than noise makes; ``sharpness`` the focus measure (peak fine gradient over peak
    coarse gradient: ~2.6-3 in focus, < 2 for a blur of 1.5 working pixels);
    ``saturated`` the fraction of near-full-scale pixels of the whole field.
    """

    cells: Mask
    wall: Mask
    pedestal: float
    noise: float
    level: float
    sharpness: float
    saturated: float
    texture: float


def _working_grey(image: npt.NDArray[np.generic], short_px: int) -> tuple[F32, float]:
    """Grey float copy with short side >= ``short_px`` (2x2 averaging) and its full scale."""
    img: npt.NDArray[np.generic] = np.asarray(image)
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = np.asarray(cv2.cvtColor(img, code))  # type: ignore[arg-type]
    full = 255.0 if img.dtype == np.uint8 else 65535.0
    h, w = img.shape[:2]
    n = 0
    while min(h, w) // 2 ** (n + 1) >= short_px:
        n += 1
    work: F32 = np.asarray(img, dtype=np.float32)
    for _ in range(n):
        hh, ww = work.shape[0] // 2, work.shape[1] // 2
        work = np.asarray(
            cv2.resize(work[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA),
            dtype=np.float32,
        )
    return work, full


def _find_wall(work: F32, full: float, sample: F32) -> tuple[Mask, float]:
    """Saturated border-touching regions (widened by their edge) and the saturated fraction."""
    top = float(sample.max())
    sat_level = 0.985 * full if top >= 0.985 * full else np.inf
    sat = (work >= sat_level).astype(np.uint8)
    saturated = float(sat.mean())
    wall = np.zeros(work.shape, bool)
    if saturated < 0.002:
        return wall, saturated
    core = cv2.morphologyEx(sat, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
    h, w = work.shape
    keep = []
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        border = x == 0 or y == 0 or x + bw >= w or y + bh >= h
        if border and area >= 0.005 * work.size:
            keep.append(k)
    if not keep:
        return wall, saturated
    core = np.isin(labels, keep).astype(np.uint8)
    # back over the saturated pixels next to it, then its blurred edge
    grown: npt.NDArray[np.uint8] = np.asarray(cv2.dilate(core, np.ones((5, 5), np.uint8)), np.uint8)
    core = np.bitwise_or(np.bitwise_and(grown, sat), core)
    wall = cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))) > 0
    return wall, saturated


def _fit_surface(values: F32, weights: F32, shape: tuple[int, int]) -> F32:
    """Quadratic surface (weighted least squares) over a grid of block values, at ``shape``."""
    gh, gw = values.shape
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64)
    ys, xs = (ys + 0.5) / gh - 0.5, (xs + 0.5) / gw - 0.5
    design = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], -1).reshape(-1, 6)
    wt = np.sqrt(weights.reshape(-1).astype(np.float64))
    coef, *_ = np.linalg.lstsq(design * wt[:, None], values.reshape(-1) * wt, rcond=None)
    h, w = shape
    yy = (np.arange(h, dtype=np.float64) + 0.5)[:, None] / h - 0.5
    xx = (np.arange(w, dtype=np.float64) + 0.5)[None, :] / w - 0.5
    c = coef
    surf = c[0] + c[1] * xx + c[2] * yy + c[3] * xx * xx + c[4] * xx * yy + c[5] * yy * yy
    return np.asarray(surf, dtype=np.float32)


def _block_medians(values: F32, keep: Mask, grid: tuple[int, int]) -> tuple[F32, F32]:
    """Per block of a ``grid`` (rows, cols): a high quantile of the kept values and their count."""
    gh, gw = grid
    h, w = values.shape
    bh, bw = h // gh, w // gw
    v = values[: gh * bh, : gw * bw].reshape(gh, bh, gw, bw).transpose(0, 2, 1, 3)
    k = keep[: gh * bh, : gw * bw].reshape(gh, bh, gw, bw).transpose(0, 2, 1, 3)
    v3 = v.reshape(gh, gw, -1)
    k3 = k.reshape(gh, gw, -1)
    masked = np.where(k3, v3, np.nan)
    count = k3.sum(axis=-1).astype(np.float32)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanpercentile(masked, 80, axis=-1)
    med = np.where(count > 0, med, 0.0).astype(np.float32)
    return med, count


def segment_field(
    image: npt.NDArray[np.generic],
    *,
    work_short_px: int = 480,
    texture_k: float = 4.0,
    dark_k: float = 6.0,
    dark_frac: float = 0.04,
    min_cell_frac: float = 1.5e-4,
) -> FieldMaps:
    """Segment one phase-contrast field (see the module docstring); thresholds: ``texture_k``
    (texture over noise), ``dark_k`` / ``dark_frac`` (darker than the background by this many
    noise levels and this fraction of its level), ``min_cell_frac`` (smallest object kept, of
    the field)."""
    work, full = _working_grey(image, work_short_px)
    sample = work[::4, ::4]
    wall, saturated = _find_wall(work, full, sample)
    valid = ~wall
    if not valid.any():
        empty = np.zeros(work.shape, bool)
        return FieldMaps(empty, wall, 0.0, 0.0, 0.0, 0.0, saturated, 0.0)
    pedestal = 0.0
    if full > 255.0:
        pedestal = float(np.percentile(sample[valid[::4, ::4]], 0.1))
    work = work - np.float32(pedestal)
    smooth: F32 = np.asarray(cv2.GaussianBlur(work, (0, 0), 1.5), np.float32)
    fine = work - cv2.blur(work, (3, 3))
    noise = max(float(np.median(np.abs(fine[::2, ::2][valid[::2, ::2]]))) * 1.4826, 1e-3)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    grad = cv2.GaussianBlur(cv2.magnitude(gx, gy), (0, 0), 2.0)
    # flat: no more gradient than noise alone makes (noise alone: median 0.8, p99 1.3 x noise)
    low_tex = valid & (grad <= 1.5 * noise)
    if np.count_nonzero(low_tex) < 0.01 * work.size:
        low_tex = valid & (grad <= np.percentile(grad[valid][::7], 10))
    # focus: fine over coarse peak gradient (a blurred edge loses its fine gradient first)
    fine_grad = cv2.GaussianBlur(work, (0, 0), 1.0)
    fine_grad = cv2.magnitude(
        cv2.Sobel(fine_grad, cv2.CV_32F, 1, 0), cv2.Sobel(fine_grad, cv2.CV_32F, 0, 1)
    )
    coarse = cv2.GaussianBlur(work, (0, 0), 2.5)
    coarse = cv2.magnitude(cv2.Sobel(coarse, cv2.CV_32F, 1, 0), cv2.Sobel(coarse, cv2.CV_32F, 0, 1))
    sharpness = float(np.percentile(fine_grad[::2, ::2][valid[::2, ::2]], 99.5)) / max(
        float(np.percentile(coarse[::2, ::2][valid[::2, ::2]], 99.5)), 1e-6
    )
    # background: bright mode of the low-texture pixels, as a smooth surface
    grid = (12, 16) if work.shape[1] >= work.shape[0] else (16, 12)
    blocks, count = _block_medians(smooth, low_tex, grid)
    weights = (count >= 8).astype(np.float32)
    surface = _fit_surface(blocks, weights, work.shape)
    for _ in range(2):
        gh, gw = grid
        h, w = work.shape
        at = surface[(np.arange(gh) * (h // gh) + h // gh // 2)][
            :, np.arange(gw) * (w // gw) + w // gw // 2
        ]
        resid = blocks - at
        weights = ((count >= 8) & (resid > -max(noise, 0.01 * float(np.median(at))))).astype(
            np.float32
        )
        if weights.sum() < 6:
            break
        surface = _fit_surface(blocks, weights, work.shape)
    # the background is the bright mode of the flat pixels (cells are darker in phase contrast)
    resid = (smooth - surface)[low_tex]
    top = float(np.percentile(resid[:: max(1, resid.size // 40000)], 99.5))
    surface = surface + np.float32(top - 2.6 * 0.19 * noise)
    level = float(np.median(surface))
    texture = 1.0 - float(np.count_nonzero(low_tex)) / max(float(np.count_nonzero(valid)), 1.0)
    tex_thr = texture_k * noise
    dark_thr = np.maximum(dark_k * noise / 3.0, dark_frac * surface)
    cells = (grad > tex_thr) | (smooth < surface - dark_thr)
    bright = smooth > surface + np.maximum(noise * 0.6, 0.015 * surface)
    cells &= ~bright & valid
    m: npt.NDArray[np.uint8] = cells.astype(np.uint8)
    ell5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    m = np.asarray(cv2.morphologyEx(m, cv2.MORPH_CLOSE, ell5), np.uint8)
    m &= valid.astype(np.uint8)
    min_area = min_cell_frac * work.size
    # holes enclosed by cells (not touching the wall or border) are cell interiors
    holes = (1 - m).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    # a hole is filled when small (a rounded cell's bright body) or darker than the background
    below = (surface - smooth) / np.maximum(dark_thr, 1e-3)
    sums = np.bincount(labels.ravel(), weights=below.ravel(), minlength=n)
    depth = sums[1:] / np.maximum(stats[1:, cv2.CC_STAT_AREA], 1)
    area = stats[1:, cv2.CC_STAT_AREA]
    fill = np.nonzero((area < 3 * min_area) | ((depth > 0.5) & (area < 60 * min_area)))[0] + 1
    if fill.size:
        m[np.isin(labels, fill) & valid] = 1
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] < min_area)[0] + 1
    if small.size:
        m[np.isin(labels, small)] = 0
    # the texture measure reaches about a pixel past the outline: take it back
    m = np.asarray(cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))), np.uint8)
    return FieldMaps(m > 0, wall, pedestal, noise, level, sharpness, saturated, texture)
