"""The segmentation behind :func:`kiboauto.vision.cells.analyse_field` (phase-contrast cells).

Steps, on a copy reduced to 480 pixels on the short side (float, the caller's frame is never
written to):

1. **Wall**: near-full-scale pixels, opened so thin bright halos drop out, kept where a region
   touches the image border and covers >= 0.5 % of the field; grown back over the saturated pixels
   and widened by its blurred edge. It is excluded from everything that follows (its pixels are
   replaced by the field's median so no filter sees it) and from the confluence's denominator.
2. **Dark level** (16-bit): the lowest populated level of the field (0.1th percentile outside the
   wall) is subtracted; 8-bit frames are taken as already black-level corrected.
3. **Noise**: from the full-resolution frame (second differences, the quietest fifth of small
   blocks), so cells, halos and texture do not inflate it. Every measure below is relative to it:
   gain, pedestal and exposure do not matter.
4. **Cells, per pixel** (at half the working resolution, 240 x 320 for a 4:3 frame): a small
   learned model (:mod:`kiboauto.vision.confluence_model`, trained by tools/train_confluence.py on
   rendered fields with known coverage) in three stages. Stage 1 sees local contrasts against the
   neighbourhood mean, maximum and minimum at three scales, contrasts against field quantiles and
   band-pass texture energies (cell interiors carry texture and nuclei, bare substrate only noise),
   so a dense sheet is seen as cells even where no substrate is left to compare with. Stages 2
   and 3 add the contrast against a background surface fitted where the previous stage sees no
   cells (never from a wall, debris or the histogram mode) and that stage's answer smoothed at
   three scales (whole cells: a bright rounded body inside its dark rim, a flat spread interior
   between its edges). The probability is interpolated to working resolution and cut at 0.5;
   specks smaller than a small cell are dropped (debris).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "STAGE1_FEATURES",
    "STAGE2_FEATURES",
    "FieldMaps",
    "Prepared",
    "cell_probability",
    "mlp_map",
    "prepare_field",
    "segment_field",
    "stage1_features",
    "stage2_features",
]

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


def _working_grey(
    image: npt.NDArray[np.generic], short_px: int
) -> tuple[F32, float, npt.NDArray[np.generic], float]:
    """Grey float copy whose short side is ``short_px`` (area averaging; smaller frames are kept
    as they are), its full scale, the full-resolution grey frame and the linear reduction factor
    (white noise is divided by it)."""
    img: npt.NDArray[np.generic] = np.asarray(image)
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = np.asarray(cv2.cvtColor(img, code))  # type: ignore[arg-type]
    full = 255.0 if img.dtype == np.uint8 else 65535.0
    h, w = img.shape[:2]
    work: F32 = np.asarray(img, dtype=np.float32)
    while min(work.shape) >= 2 * short_px:  # exact 2x2 averaging first (fast)
        hh, ww = work.shape[0] // 2, work.shape[1] // 2
        work = np.asarray(
            cv2.resize(work[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA),
            dtype=np.float32,
        )
    if min(work.shape) > short_px:
        f = short_px / min(work.shape)
        size = (max(1, round(work.shape[1] * f)), max(1, round(work.shape[0] * f)))
        work = np.asarray(cv2.resize(work, size, interpolation=cv2.INTER_AREA), np.float32)
    return work, full, img, min(h, w) / min(work.shape)


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


@dataclass(frozen=True)
class Prepared:
    """A field made ready for the per-pixel model (working resolution unless said otherwise).

    ``work``: grey, dark level subtracted, wall pixels replaced by the median of the surface;
    ``q``: the smoothed field at half the working resolution (where the model classifies);
    ``valid``: not wall; ``grad``: smoothed gradient magnitude; other fields as in
    :class:`FieldMaps`.
    """

    work: F32
    q: F32
    valid: Mask
    wall: Mask
    grad: F32
    pedestal: float
    noise: float
    sharpness: float
    saturated: float
    texture: float


def _noise(grey: npt.NDArray[np.generic], full: float, reduction: float) -> float:
    """Sensor noise at working resolution, from the full-resolution frame: the second difference
    along every fourth row, its mean absolute value in blocks of 4 x 32, and of those the 20th
    percentile (edges, halos and cell texture are smooth at full resolution and sparse; saturated
    or black blocks are left out); averaging f x f pixels divides white noise by f."""
    x = np.asarray(grey[::4], np.float32)
    d = np.abs(x[:, :-2] - 2 * x[:, 1:-1] + x[:, 2:])
    h, w = d.shape
    gh, gw = max(h // 4, 1), max(w // 32, 1)
    bh, bw = min(4, h), min(32, w)
    mean = d[: gh * bh, : gw * bw].reshape(gh, bh, gw, bw).mean(axis=(1, 3)).ravel()
    top = x[: gh * bh, 1 : gw * bw + 1].reshape(gh, bh, gw, bw).max(axis=(1, 3)).ravel()
    low = x[: gh * bh, 1 : gw * bw + 1].reshape(gh, bh, gw, bw).min(axis=(1, 3)).ravel()
    ok = (top < 0.985 * full) & (low > 0) & (mean > 0)
    if ok.any():
        mean = mean[ok]
    # mean |N(0, 6 s^2)| = s * sqrt(6) * sqrt(2 / pi)
    sigma = float(np.percentile(mean, 20)) * math.sqrt(math.pi / 2) / math.sqrt(6.0)
    # never below the quantisation noise of one level (1 / sqrt(12))
    return max(sigma, 0.29) / reduction


def prepare_field(image: npt.NDArray[np.generic], work_short_px: int = 480) -> Prepared | None:
    """Working copy, wall, dark level, noise, focus and texture measures; None when the whole
    field is wall."""
    work, full, grey, reduction = _working_grey(image, work_short_px)
    h, w = work.shape
    work = work[: h - h % 2, : w - w % 2]  # even, so the half-resolution grid lines up
    sample = work[::4, ::4]
    wall, saturated = _find_wall(work, full, sample)
    valid = ~wall
    if not valid.any():
        return None
    pedestal = 0.0
    if full > 255.0:
        pedestal = float(np.percentile(sample[valid[::4, ::4]], 0.1))
    work = work - np.float32(pedestal)
    if wall.any():  # the wall must not leak into the neighbourhood filters
        work[wall] = np.float32(np.median(work[::3, ::3][valid[::3, ::3]]))
    smooth: F32 = np.asarray(cv2.GaussianBlur(work, (0, 0), 1.0), np.float32)
    noise = _noise(grey, full, reduction)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    grad: F32 = np.asarray(cv2.GaussianBlur(cv2.magnitude(gx, gy), (0, 0), 1.5), np.float32)
    # focus: fine over coarse peak gradient (a blurred edge loses its fine gradient first)
    fine_grad = cv2.magnitude(gx, gy)
    coarse = cv2.GaussianBlur(work, (0, 0), 2.5)
    coarse = cv2.magnitude(cv2.Sobel(coarse, cv2.CV_32F, 1, 0), cv2.Sobel(coarse, cv2.CV_32F, 0, 1))
    sharpness = float(np.percentile(fine_grad[::2, ::2][valid[::2, ::2]], 99.5)) / max(
        float(np.percentile(coarse[::2, ::2][valid[::2, ::2]], 99.5)), 1e-6
    )
    # texture: more gradient than noise makes (noise alone: median 1.5, p99.9 2.9 x noise)
    texture = float(np.count_nonzero((grad > 3.2 * noise) & valid)) / max(
        float(np.count_nonzero(valid)), 1.0
    )
    q = np.asarray(cv2.resize(smooth, (w // 2, h // 2), interpolation=cv2.INTER_AREA), np.float32)
    return Prepared(work, q, valid, wall, grad, pedestal, noise, sharpness, saturated, texture)


def _half(a: F32) -> F32:
    h, w = a.shape
    return np.asarray(cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA), np.float32)


def _squash(x: F32, scale: float) -> F32:
    """Compress a noise-relative contrast (asinh): linear near 0, logarithmic far out."""
    return np.asarray(np.arcsinh(x * np.float32(1.0 / scale)), np.float32)


#: names of the first-stage features (one per pixel of the half-resolution grid)
STAGE1_FEATURES = (
    "box5", "box15", "box41", "max5", "min5", "max15", "min15", "p50", "p20", "p80",
    "g3_box41", "band", "band_wide", "grad", "grad_wide", "fine", "spread_q", "texture",
)  # fmt: skip
#: extra features of the second stage (context of the first stage's answer)
STAGE2_FEATURES = ("bg", "p", "p_s2", "p_s6", "p_s16", "p_mean", "bg_fit")


def stage1_features(prep: Prepared) -> F32:
    """First-stage features, (len(STAGE1_FEATURES), h/2, w/2): local contrasts against the
    neighbourhood mean, max and min at three scales, contrasts against field quantiles, and
    band-pass texture energies at two scales; all relative to the noise (gain-free)."""
    q, n = prep.q, np.float32(prep.noise)
    qv = q[prep.valid[::2, ::2]]
    p20, p50, p80 = (float(v) for v in np.percentile(qv[:: max(1, qv.size // 20000)], (20, 50, 80)))
    feats: list[F32] = []
    for k in (5, 15, 41):
        feats.append(_squash((q - cv2.blur(q, (k, k))) / n, 3.0))
    for k in (5, 15):
        ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        feats.append(_squash((q - cv2.dilate(q, ker)) / n, 3.0))
        feats.append(_squash((q - cv2.erode(q, ker)) / n, 3.0))
    for p in (p50, p20, p80):
        feats.append(_squash((q - np.float32(p)) / n, 3.0))
    g3 = cv2.GaussianBlur(q, (0, 0), 3.0)
    feats.append(_squash((g3 - cv2.blur(q, (41, 41))) / n, 3.0))
    work = prep.work
    s1 = cv2.GaussianBlur(work, (0, 0), 1.0)
    band = _half(np.square(s1 - cv2.GaussianBlur(work, (0, 0), 2.0)))
    band = np.asarray(cv2.blur(band, (5, 5)), np.float32)
    n2 = n * n
    feats.append(np.log(band / n2 + np.float32(0.05)))
    feats.append(np.log(cv2.blur(band, (11, 11)) / n2 + np.float32(0.05)))
    g = _half(prep.grad)
    feats.append(np.log(g / n + np.float32(0.1)))
    feats.append(np.log(cv2.blur(g, (11, 11)) / n + np.float32(0.1)))
    fine = cv2.blur(_half(np.square(work - s1)), (7, 7))
    feats.append(np.log(fine / n2 + np.float32(0.05)))
    const = np.ones_like(q)
    feats.append(const * np.float32(np.log((p80 - p20) / n + 0.1)))
    feats.append(const * np.float32(prep.texture))
    return np.stack(feats)


def _background_fit(q: F32, keep: Mask, noise: float) -> F32 | None:
    """Quadratic surface through block medians of the ``keep`` pixels (None when too few)."""
    gh, gw = (6, 8) if q.shape[1] >= q.shape[0] else (8, 6)
    h, w = q.shape
    bh, bw = h // gh, w // gw
    v = q[: gh * bh, : gw * bw].reshape(gh, bh, gw, bw).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    k = keep[: gh * bh, : gw * bw].reshape(gh, bh, gw, bw).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    count = k.sum(axis=-1)
    med = np.zeros((gh, gw), np.float32)
    for i in range(gh):
        for j in range(gw):
            if count[i, j] >= 12:  # every third kept pixel is plenty for a median
                med[i, j] = np.median(v[i, j][k[i, j]][::3])
    weights = (count >= 12).astype(np.float32)
    if weights.sum() < 3:
        return None
    if weights.sum() < 8:  # too few blocks for a slope: a constant
        return np.full(q.shape, float(np.average(med, weights=weights)), np.float32)
    return _fit_surface(med, weights * np.sqrt(count.astype(np.float32)), q.shape)


def _wide_blur(a: F32, sigma: float) -> F32:
    """A wide Gaussian blur done at a quarter of the resolution (16x fewer pixels and a 4x
    shorter kernel), interpolated back."""
    h, w = a.shape
    small = cv2.resize(a, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / 4.0)
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)


def stage2_features(prep: Prepared, p1: F32) -> F32:
    """Second-stage extra features (STAGE2_FEATURES): the contrast against a background fitted
    to where the first stage sees no cells, and that stage's answer smoothed at two scales."""
    q, n = prep.q, prep.noise
    keep = (p1 < 0.2) & prep.valid[::2, ::2]
    surf = _background_fit(q, keep, n)
    found = 1.0 if surf is not None else 0.0
    if surf is None:
        surf = np.full(q.shape, float(np.percentile(q, 90)), np.float32)
    ones = np.ones_like(q)
    return np.stack(
        [
            _squash((q - surf) / np.float32(n), 3.0),
            p1,
            np.asarray(cv2.GaussianBlur(p1, (0, 0), 2.0), np.float32),
            _wide_blur(p1, 6.0),
            _wide_blur(p1, 16.0),
            ones * np.float32(p1[prep.valid[::2, ::2]].mean()),
            ones * np.float32(found),
        ]
    )


def mlp_map(model: dict[str, Any], feats: F32) -> F32:
    """Probability of a cell for every pixel of a (features, h, w) stack (one hidden tanh
    layer, logistic output; inputs standardised by the model's ``mu`` and ``sd``).

    Evaluated a few rows at a time: each product is then small enough for the BLAS library to
    run it on the calling thread (a multi-threaded product is 4x slower on a busy machine)."""
    k, h, w = feats.shape
    w1 = np.asarray(model["W1"], np.float32) / np.asarray(model["sd"], np.float32)[:, None]
    b1 = (np.asarray(model["b1"], np.float32) - np.asarray(model["mu"], np.float32) @ w1)[:, None]
    w1t = np.ascontiguousarray(w1.T)
    w2 = np.asarray(model["W2"], np.float32)[None, :]
    b2 = np.float32(model["b2"])
    hidden = w1t.shape[0]
    rows = max(1, 200_000 // max(1, hidden * k * w))  # OpenBLAS: one thread below 262144
    out = np.empty((h, w), np.float32)
    for r in range(0, h, rows):
        x = feats[:, r : r + rows].reshape(k, -1)
        hid = np.tanh(w1t @ x + b1)
        out[r : r + rows] = (w2 @ hid).reshape(-1, w)
    out += b2
    np.negative(out, out=out)
    np.exp(out, out=out)
    out += np.float32(1.0)
    np.reciprocal(out, out=out)
    return out


def cell_probability(prep: Prepared, stages: Sequence[dict[str, Any]]) -> F32:
    """Cell probability at half working resolution: the first model on the local features, every
    further one on those plus the context of the previous answer (auto-context)."""
    qv = prep.q[prep.valid[::2, ::2]]
    if float(qv.max() - qv.min()) < 3 * prep.noise:  # nothing but noise, if that: no cells
        return np.zeros_like(prep.q)
    f1 = stage1_features(prep)
    p = mlp_map(stages[0], f1)
    for model in stages[1:]:
        p = mlp_map(model, np.concatenate([f1, stage2_features(prep, p)]))
    return p


def segment_field(
    image: npt.NDArray[np.generic],
    *,
    work_short_px: int = 480,
    threshold: float = 0.5,
    min_cell_frac: float = 1.5e-4,
) -> FieldMaps:
    """Segment one phase-contrast field (see the module docstring): ``threshold`` on the
    model's cell probability, ``min_cell_frac`` the smallest object kept (of the field)."""
    from .confluence_model import STAGES

    prep = prepare_field(image, work_short_px)
    if prep is None:
        work, *_ = _working_grey(image, work_short_px)
        return FieldMaps(np.zeros(work.shape, bool), np.ones(work.shape, bool), 0.0, 0.0, 0.0,
                         0.0, 1.0, 0.0)  # fmt: skip
    p2 = cell_probability(prep, STAGES)
    h, w = prep.work.shape
    prob = np.asarray(cv2.resize(p2, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
    m: npt.NDArray[np.uint8] = ((prob > threshold) & prep.valid).astype(np.uint8)
    min_area = min_cell_frac * m.size
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] < min_area)[0] + 1
    if small.size:
        m[np.isin(labels, small)] = 0
    bare = (p2 < 0.5) & prep.valid[::2, ::2]
    level = float(np.median(prep.q[bare] if bare.any() else prep.q))  # of the bare substrate
    return FieldMaps(m > 0, prep.wall, prep.pedestal, prep.noise, level, prep.sharpness,
                     prep.saturated, prep.texture)  # fmt: skip
