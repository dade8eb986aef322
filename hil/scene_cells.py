"""Phase-contrast fields of adherent cells (for confluence measurements), with exact coverage.

Cells are irregular, elongated blobs (an ellipse whose radius wobbles with a few harmonics) with a
nucleus, dark on a mid-grey background and surrounded by the bright halo typical of phase contrast.
Cells are added one by one until their union covers the asked fraction of the field; the fraction
returned is counted on the same mask the cells are drawn from, so it is exact for the image.

:class:`CellFieldOptions` adds what real fields show (confluence tests, issue 13): other cell
kinds (``spread``: large flat cells with low-contrast interiors and faint edges; ``rounded``:
small bright cells with a strong halo; ``mixed``: all three), halo strength, a saturated channel
wall along one or two edges, dark debris specks, out-of-focus blur and 16-bit raw output with a
pedestal. The default options draw exactly the image :func:`render_cells` always drew.

**Coverage definition**: the returned fraction is cell pixels over the pixels *not* under the
channel wall (the visible growth surface). Without a wall that is the whole field. Cells never
lie under the wall; debris and the wall are not cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["FIELD_KINDS", "CellField", "CellFieldOptions", "render_cell_field", "render_cells"]

CellKind = Literal["normal", "spread", "rounded", "mixed"]


@dataclass(frozen=True)
class CellFieldOptions:
    """What a rendered cell field contains besides the cells (defaults: today's plain field).

    ``kind``: ``normal`` (dark textured cells with a nucleus), ``spread`` (large, flat, faint),
    ``rounded`` (small, bright, strong halo) or ``mixed`` (each cell one of the three).
    ``halo``: multiplier of the bright phase-contrast rim. ``wall``: fraction of the field taken by
    a saturated channel wall (0: none, else 0.05..0.25 is realistic) on ``wall_sides`` (1 or 2)
    edges. ``debris``: number of small dark specks (not cells). ``blur_sigma``: out-of-focus
    Gaussian blur (full-resolution pixels, 0: in focus). ``bit_depth`` 16 gives raw counts
    ``pedestal + gain * level`` (level on the 8-bit scale) with the wall at 65535. ``noise``:
    standard deviation of the white sensor noise (8-bit scale, before the gain).
    """

    kind: CellKind = "normal"
    halo: float = 1.0
    wall: float = 0.0
    wall_sides: int = 1
    debris: int = 0
    blur_sigma: float = 0.0
    bit_depth: Literal[8, 16] = 8
    pedestal: float = 20000.0
    gain: float = 48.0
    noise: float = 2.5


@dataclass(frozen=True)
class CellField:
    """A rendered field: the image, the exact coverage (see the module's definition), the cell
    mask and the wall mask (both boolean, full resolution)."""

    image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
    confluence: float
    cells: npt.NDArray[np.bool_]
    wall: npt.NDArray[np.bool_]


# the kinds of field the confluence is held against (tests/test_confluence.py and
# bench/confluence_bench.py): each cell kind, a strong halo, a saturated wall on two sides,
# debris, a 16-bit raw frame with its pedestal and an out-of-focus field
FIELD_KINDS: dict[str, CellFieldOptions] = {
    "normal": CellFieldOptions(),
    "spread": CellFieldOptions(kind="spread"),
    "rounded": CellFieldOptions(kind="rounded"),
    "mixed": CellFieldOptions(kind="mixed"),
    "halo": CellFieldOptions(halo=2.0),
    "wall": CellFieldOptions(wall=0.15, wall_sides=2),
    "debris": CellFieldOptions(debris=300),
    "raw16": CellFieldOptions(bit_depth=16),
    "blurred": CellFieldOptions(blur_sigma=3.0),
}


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


def _wall_mask(
    r: np.random.Generator, width: int, height: int, fraction: float, sides: int
) -> npt.NDArray[np.bool_]:
    """A band (slightly tilted inner edge) along ``sides`` random edges covering ``fraction``."""
    wall = np.zeros((height, width), np.uint8)
    if fraction <= 0:
        return wall.astype(bool)
    edges = r.permutation(4)[: max(1, min(2, sides))]
    share = fraction / len(edges)
    for e in edges:
        along, across = (width, height) if e in (0, 1) else (height, width)
        depth = share * across
        tilt = r.uniform(-0.05, 0.05) * across
        d0, d1 = depth - tilt, depth + tilt  # depth at both ends, mean = depth
        pts = np.array([[0, 0], [along, 0], [along, d1], [0, d0]], np.float64)
        if e == 1:  # bottom
            pts[:, 1] = height - pts[:, 1]
        elif e == 2:  # left: swap axes
            pts = pts[:, ::-1]
        elif e == 3:  # right
            pts = pts[:, ::-1].copy()
            pts[:, 0] = width - pts[:, 0]
        cv2.fillPoly(wall, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    return wall > 0


def _halo(body: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Soft body and bright rim of a body mask (today's phase-contrast model)."""
    soft = np.asarray(cv2.GaussianBlur(body, (0, 0), 1.2), np.float32)
    halo = np.asarray(cv2.GaussianBlur(body, (0, 0), 3.5), np.float32) - soft
    halo = np.clip(halo, 0, None) * 2.2 + np.clip(soft - body, 0, None) * 1.5
    return soft, np.asarray(halo, np.float32)


def render_cell_field(
    seed: int,
    confluence: float,
    options: CellFieldOptions | None = None,
    *,
    width: int = 1280,
    height: int = 960,
) -> CellField:
    """A phase-contrast field of cells covering about ``confluence`` of the growth surface, with
    its exact coverage and masks (see the module docstring for the definition)."""
    opt = options or CellFieldOptions()
    if not 0 <= confluence <= 1:
        raise ValueError("confluence must be in 0..1")
    if width < 64 or height < 64:
        raise ValueError("image must be at least 64x64")
    if not 0 <= opt.wall <= 0.5 or opt.bit_depth not in (8, 16):
        raise ValueError("wall must be in 0..0.5 and bit_depth 8 or 16")
    r = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCE11])
    extra = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCE12])  # options' own stream
    wall = _wall_mask(extra, width, height, opt.wall, opt.wall_sides)
    has_wall = bool(wall.any())
    short = min(width, height)
    mask = np.zeros((height, width), np.uint8)
    kinds = ("normal", "spread", "rounded")
    layers = {k: np.zeros((height, width), np.uint8) for k in kinds if opt.kind in (k, "mixed")}
    nuclei = np.zeros((height, width), np.float32)
    total = width * height - int(np.count_nonzero(wall))
    target = confluence * total
    covered = 0
    size = short * r.uniform(0.025, 0.04)
    scale = {"normal": 1.0, "spread": 2.2, "rounded": 0.45}
    batch_check = 0
    while covered < target:
        kind = opt.kind if opt.kind != "mixed" else kinds[int(extra.integers(0, 3))]
        k_size = size * scale[kind]
        cx, cy = r.uniform(-k_size, width + k_size), r.uniform(-k_size, height + k_size)
        s = k_size * r.uniform(0.6, 1.4)
        poly = _cell_outline(r, cx, cy, s)
        if kind == "rounded":  # nearly round: pull the radius towards its mean
            d = poly - poly.mean(axis=0)
            rad = np.hypot(d[:, 0], d[:, 1])[:, None]
            poly = poly.mean(axis=0) + d * (rad.mean() / np.maximum(rad, 1e-6)) ** 0.8
        # near full coverage, place cells where the field is still empty
        if confluence > 0.6 and covered > 0.5 * total:
            free = mask[::4, ::4] if not has_wall else (mask | wall)[::4, ::4]
            empty = np.argwhere(free == 0)
            if len(empty):
                y, x = empty[int(r.integers(0, len(empty)))] * 4
                poly = _cell_outline(r, float(x), float(y), s)
        pts = [np.round(poly * 16).astype(np.int32)]
        cv2.fillPoly(mask, pts, 255, cv2.LINE_8, shift=4)
        cv2.fillPoly(layers[kind], pts, 255, cv2.LINE_8, shift=4)
        if has_wall:
            mask[wall] = 0
        if kind != "rounded":
            centre = tuple(int(v) for v in np.round(poly.mean(axis=0) * 16))
            axes = (int(s * 0.35 * 16), int(s * 0.25 * 16))
            if kind == "spread":
                axes = (int(size * 0.35 * 16), int(size * 0.25 * 16))
            cv2.ellipse(nuclei, centre, axes, r.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        batch_check += 1
        if batch_check % 8 == 0 or covered + s * s * 3 >= target:
            covered = int(np.count_nonzero(mask))
        if batch_check > 20000:
            break
    covered = int(np.count_nonzero(mask))
    texture = cv2.GaussianBlur(r.standard_normal((height, width)).astype(np.float32), (0, 0), 2.0)
    img = np.full((height, width), 128.0, np.float32)
    for kind, layer in layers.items():
        body = (layer > 0).astype(np.float32)
        if has_wall:
            body[wall] = 0
        soft, halo = _halo(body)
        halo *= np.float32(opt.halo)
        if kind == "normal":
            img = img - 42.0 * soft + 30.0 * texture * soft - 18.0 * nuclei * soft + 110.0 * halo
        elif kind == "spread":  # flat: little texture, faint edge, dim nucleus
            img = img - 9.0 * soft + 6.0 * texture * soft - 14.0 * nuclei * soft + 30.0 * halo
        else:  # rounded: bright body, thin dark rim, strong halo
            rim = np.clip(soft - cv2.erode(soft, np.ones((5, 5), np.uint8)), 0, None)
            img += 30.0 * soft - 45.0 * rim + 10.0 * texture * soft + 120.0 * halo
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img *= 1.0 + 0.08 * ((xs / width) - 0.5) - 0.06 * ((ys / height) - 0.5)
    if opt.debris > 0:
        specks = np.zeros((height, width), np.float32)
        for _ in range(int(opt.debris)):
            c = (int(extra.uniform(0, width) * 16), int(extra.uniform(0, height) * 16))
            rad = int(extra.uniform(1.0, 3.5) * 16)
            cv2.circle(specks, c, rad, float(extra.uniform(50, 90)), -1, cv2.LINE_AA, 4)
        img -= specks
    if has_wall:
        img[wall] = 400.0  # far above full scale: saturated after blur and clipping
    img = np.asarray(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7), np.float32)
    if opt.blur_sigma > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), float(opt.blur_sigma)), np.float32)
    img += r.standard_normal(img.shape).astype(np.float32) * np.float32(opt.noise)
    frac = covered / total if total else 0.0
    cells = mask > 0
    if opt.bit_depth == 16:
        counts = opt.pedestal + opt.gain * np.clip(img, 0, None)
        counts[img >= 300.0] = 65535.0  # the wall (halos stay below full scale)
        out16 = np.clip(counts + 0.5, 0, 65535).astype(np.uint16)
        return CellField(out16, frac, cells, wall)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return CellField(out, frac, cells, wall)


@overload
def render_cells(
    seed: int, confluence: float, *, width: int = ..., height: int = ..., options: None = ...
) -> tuple[npt.NDArray[np.uint8], float]: ...


@overload
def render_cells(
    seed: int,
    confluence: float,
    *,
    width: int = ...,
    height: int = ...,
    options: CellFieldOptions,
) -> tuple[npt.NDArray[np.uint8] | npt.NDArray[np.uint16], float]: ...


def render_cells(
    seed: int,
    confluence: float,
    *,
    width: int = 1280,
    height: int = 960,
    options: CellFieldOptions | None = None,
) -> tuple[npt.NDArray[np.uint8] | npt.NDArray[np.uint16], float]:
    """A grey phase-contrast image of cells covering about ``confluence`` of the field, and the
    exact covered fraction of that image (uint8 unless ``options`` asks for 16 bit)."""
    field = render_cell_field(seed, confluence, options, width=width, height=height)
    return field.image, field.confluence
