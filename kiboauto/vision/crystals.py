"""Crystal candidates in the flattened drop, their shape measures and the distractor filter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["Blob", "find_blobs", "fine_contrast", "straightness", "texture_density"]

_K3 = np.ones((3, 3), np.uint8)
_K5 = np.ones((5, 5), np.uint8)


@dataclass(frozen=True)
class Blob:
    """A connected object in working pixels (ROI coordinates) with its shape measures."""

    contour: npt.NDArray[np.int32]
    area: float
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    length: float  # longest dimension (max Feret diameter)
    width: float  # extent across the longest dimension
    solidity: float
    circularity: float
    straightness: float  # measured only for accepted crystals (see :func:`straightness`)
    touches_edge: bool  # reaches the border of the searched area (meniscus, skin at the edge)
    granularity: float = 0.0  # mean fine (5x5) contrast inside, / 128: high for grainy clouds
    edge_strength: float = 0.0  # mean 3x3 gradient on the outline, / 128: crystals are sharp
    polarity: float = 0.0  # mean (flattened - 128) / 128 inside: dark (< 0) or bright (> 0)
    measured: bool = True  # outline/texture measures taken (False: a speck or a ragged shape)

    def vector(self) -> list[float]:
        """The shape/appearance features :func:`crystal_score` weighs."""
        return [
            math.log(max(self.area, 1.0)),
            self.solidity,
            self.circularity,
            self.granularity,
            math.log(max(self.aspect, 1.0)),
            self.edge_strength,
            self.polarity,
        ]

    @property
    def aspect(self) -> float:
        return self.length / max(self.width, 1.0)


_ANGLES = np.linspace(0.0, np.pi, 32, endpoint=False)
_DIRS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, 32): unit vectors every 5.6 degrees


def _feret(hull: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(max Feret diameter, min Feret width) of a convex hull (N x 2), in pixels.

    Calipers in 32 directions (error below 0.5 %). Contour points are pixel centres (+1 px), but
    the 3x3 edge band and the optics blur widen every object by about 2.5 px (measured against
    rendered truth), hence the net -1.5 px.
    """
    if len(hull) < 2:
        return 1.0, 1.0
    proj = hull @ _DIRS
    extent = proj.max(axis=0) - proj.min(axis=0)
    return max(float(extent.max()) - 1.5, 1.0), max(float(extent.min()) - 1.5, 1.0)


def straightness(contour: npt.NDArray[np.int32], equiv_diam: float) -> float:
    """How well a few straight segments explain the outline: 1 = polygon, ~0 = round/ragged."""
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) < 6:
        return 1.0
    perim = cv2.arcLength(contour, True)
    poly = cv2.approxPolyDP(contour, max(1.0, 0.035 * perim), True).reshape(-1, 2)
    poly = poly.astype(np.float64)
    if len(poly) < 3:
        return 1.0
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=1), 1e-9)
    # distance of every outline point to its nearest polygon segment
    ap = pts[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab[None]).sum(-1) / denom[None], 0.0, 1.0)
    proj = a[None] + t[..., None] * ab[None]
    dist = np.sqrt(((pts[:, None, :] - proj) ** 2).sum(-1)).min(axis=1)
    dev = float(dist.mean())
    many = max(0, len(poly) - 8) * 0.08  # a polygon needing many corners is round
    score = 1.0 - max(dev - 0.35, 0.0) / max(0.035 * equiv_diam, 0.5) - many
    return float(min(1.0, max(0.0, score)))


def find_blobs(
    flat: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    contrast: float,
    min_area: float,
    fine: npt.NDArray[np.uint8] | None = None,
    edge: float = 0.15,
    detail_area: float = 32.0,
) -> tuple[list[Blob], npt.NDArray[np.uint8]]:
    """Objects whose flattened contrast exceeds ``contrast`` inside ``mask`` (ROI working pixels).

    Returns the measured blobs (area >= ``min_area``) and the binary object map used. The costly
    outline and texture measures are taken only for blobs of at least ``detail_area`` pixels that
    do not touch the border (others cannot be crystals).
    """
    hi = 128.0 * (1.0 + contrast)
    lo = 128.0 * (1.0 - contrast)
    # object pixels: clearly brighter or darker than the flattened background, or on a sharp edge
    # (crystal faces can match the background; their outlines still are sharp)
    grad = np.asarray(cv2.morphologyEx(flat, cv2.MORPH_GRADIENT, _K3), dtype=np.uint8)
    obj = ((flat > hi) | (flat < lo) | (grad > 128.0 * edge)).astype(np.uint8)
    obj &= mask
    obj = np.asarray(cv2.morphologyEx(obj, cv2.MORPH_CLOSE, _K3), dtype=np.uint8)
    border = mask - cv2.erode(mask, _K3, borderValue=0)
    blobs: list[Blob] = []
    shapes: list[tuple[npt.NDArray[np.int32], float, tuple[int, int, int, int], bool, float, float,
                       tuple[float, float], float, float]] = []  # fmt: skip
    found, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = [np.asarray(c, dtype=np.int32) for c in found]
    # an outline of n points encloses at most ~n^2/(4 pi) pixels: skip specks without measuring
    min_pts = max(4, int(math.sqrt(4.0 * math.pi * min_area)))
    for c in contours:
        if len(c) < min_pts:
            continue
        perim0 = cv2.arcLength(c, True)
        area = float(cv2.contourArea(c)) + 0.5 * perim0  # include the rim pixels
        if area < min_area:
            continue
        x, y, w, h = cv2.boundingRect(c)
        if area < detail_area:  # a speck: counted, not measured
            blobs.append(
                Blob(c, area, (x + w / 2.0, y + h / 2.0), (x, y, w, h), float(max(w, h)),
                     float(min(w, h)), 1.0, 0.0, 0.0, False, measured=False)
            )  # fmt: skip
            continue
        pts = c[:, 0, :]
        touches = bool(border[pts[:, 1], pts[:, 0]].any())
        hull = cv2.convexHull(c)
        hull_area = float(cv2.contourArea(hull)) + 0.5 * cv2.arcLength(hull, True)
        solidity = area / max(hull_area, 1.0)
        perim = perim0 + math.pi  # a pixel-centre outline is short by about pi
        circularity = min(1.0, 4.0 * math.pi * area / max(perim * perim, 1.0))
        length, width = _feret(hull.reshape(-1, 2).astype(np.float64))
        m = cv2.moments(c)
        cen = (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] > 0 else (x + w / 2, y + h / 2)
        shapes.append((c, area, (x, y, w, h), touches, solidity, circularity, cen, length, width))

    # appearance of every blob that can still be a crystal, all at once from a label image:
    # granularity inside the outline (outline excluded), edge strength on the rim, polarity
    worth = [not t[3] and t[4] >= 0.5 for t in shapes]
    n_worth = sum(worth)
    gran = edge_s = pol = np.zeros(n_worth + 1)
    if n_worth:
        lab = np.zeros(flat.shape, np.int32)
        k = 0
        for t, ok in zip(shapes, worth, strict=True):
            if ok:
                k += 1
                cv2.drawContours(lab, [t[0]], -1, k, -1)
        filled = lab > 0
        interior = cv2.erode(filled.view(np.uint8), _K5).view(bool)
        rim = filled & ~interior

        def per_label(
            where: npt.NDArray[np.bool_], values: npt.NDArray[np.uint8]
        ) -> npt.NDArray[np.float64]:
            ids = lab[where]
            total = np.bincount(ids, weights=values[where], minlength=n_worth + 1)
            count = np.bincount(ids, minlength=n_worth + 1)
            return np.asarray(total / np.maximum(count, 1), dtype=np.float64)

        pol = (per_label(filled, flat) - 128.0) / 128.0
        edge_s = per_label(rim, grad) / 128.0
        gran = per_label(interior, fine) / 128.0 if fine is not None else np.zeros(n_worth + 1)
    k = 0
    for t, ok in zip(shapes, worth, strict=True):
        c, area, bbox, touches, solidity, circularity, cen, length, width = t
        if ok:
            k += 1
        blobs.append(
            Blob(
                contour=c,
                area=area,
                centroid=(float(cen[0]), float(cen[1])),
                bbox=bbox,
                length=length,
                width=width,
                solidity=solidity,
                circularity=circularity,
                straightness=0.0,
                touches_edge=touches,
                granularity=float(gran[k]) if ok else 0.0,
                edge_strength=float(edge_s[k]) if ok else 0.0,
                polarity=float(pol[k]) if ok else 0.0,
                measured=ok,
            )
        )
    return blobs, obj


def fine_contrast(flat: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """|flat - its 5x5 local mean|: fine granular contrast."""
    return np.asarray(cv2.absdiff(flat, cv2.blur(flat, (5, 5))), dtype=np.uint8)


def texture_density(
    diff: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], exclude: npt.NDArray[np.uint8]
) -> tuple[float, float]:
    """(fraction of drop pixels with fine granular contrast, mean fine contrast / 128).

    Fine contrast is the difference to a 5x5 local mean; precipitate makes a lot of it, a clear
    drop only sensor noise.
    """
    use = (mask > 0) & (exclude == 0)
    n = int(use.sum())
    if n == 0:
        return 0.0, 0.0
    vals = diff[use]
    return float((vals > 14).sum()) / n, float(vals.mean()) / 128.0
