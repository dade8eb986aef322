"""Crystal candidates in the flattened drop, their shape measures and the distractor filter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from .appearance import appearance

__all__ = ["Blob", "Unmeasured", "find_blobs", "plausible_body", "straightness"]

_RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _with_enclosed(
    obj: npt.NDArray[np.uint8],
    border: npt.NDArray[np.uint8],
    min_pts: int,
    detail_area: float,
    max_area: float,
    bodies: list[Contour] | None = None,
) -> tuple[list[Contour], int]:
    """The outer outlines of ``obj`` (as ``RETR_EXTERNAL`` traces them) plus, for every object
    touching ``border``, the areas it encloses (holes of ``detail_area`` .. ``max_area`` pixels
    holding no other object) with a 2 px ring of their outline: a transparent crystal glued to
    the meniscus or to a cluster is an enclosed facet of the merged object. Every object pixel
    within the ring's reach belongs to that same merged object (which is not measured), so the
    freed outlines overlap no other candidate. ``bodies`` (see :func:`_closed_bodies`): whole
    crystals freed from the objects on the border, returned after the outer outlines; a facet
    inside one is left to it. Returns (outlines, how many of them, at the end, are freed
    facets)."""
    found, hier = cv2.findContours(obj, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    bodies = bodies or []
    if hier is None:
        return list(bodies), 0
    links = hier[0]  # per contour: next, previous, first child, parent
    parents = links[:, 3]
    out = [cast(Contour, found[i]) for i in np.flatnonzero(parents < 0).tolist()] + bodies
    in_body = np.zeros_like(obj)
    if bodies:
        cv2.drawContours(in_body, bodies, -1, 1, -1)
    # holes in a top-level object, with nothing inside them
    maybe = np.flatnonzero((parents >= 0) & (links[:, 2] < 0))
    maybe = maybe[parents[parents[maybe]] < 0]
    on_border: dict[int, bool] = {}
    holes: list[Contour] = []
    for i in maybe.tolist():
        c = found[i]
        if len(c) < min_pts:
            continue
        parent = int(parents[i])
        touches = on_border.get(parent)
        if touches is None:
            pc = found[parent]
            touches = on_border[parent] = bool(border[pc[:, 0, 1], pc[:, 0, 0]].any())
        if touches and detail_area <= cv2.contourArea(c) <= max_area:
            holes.append(cast(Contour, c))
    if not holes:
        return out, 0
    # the facets and their rings, worked on in the holes' box grown by the ring (3 px)
    pts = np.concatenate(holes).reshape(-1, 2)
    h, w = obj.shape
    x0, y0 = (int(v) for v in np.maximum(pts.min(axis=0) - 3, 0))
    x1, y1 = int(min(pts[:, 0].max() + 4, w)), int(min(pts[:, 1].max() + 4, h))
    facets = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.drawContours(facets, holes, -1, 1, -1, offset=(-x0, -y0))
    box_obj, box_border = obj[y0:y1, x0:x1], border[y0:y1, x0:x1]
    freed = np.asarray(cv2.dilate(facets, _RING), np.uint8) & (box_obj | facets) & (1 - box_border)
    if bodies:  # a facet of a crystal freed whole is left to it
        n_freed, parts = cv2.connectedComponents(freed, connectivity=8)
        overlaps = np.zeros(n_freed, np.bool_)
        overlaps[parts[in_body[y0:y1, x0:x1] > 0]] = True
        overlaps[0] = False
        freed[overlaps[parts]] = 0
    more, _ = cv2.findContours(freed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
    return out + cast(list[Contour], list(more)), len(more)


Contour = npt.NDArray[np.int32]
_EPS32 = float(np.finfo(np.float32).eps)
_DISC5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_MAX_BORDER_SHARE = 0.25  # of a body's outline next to the border: more is a strip of drop
_MAX_RIM_ON_BORDER = 0.4  # of an enclosed area's rim on the border: more is a strip, not merged
_SQUARE3 = np.ones((3, 3), np.uint8)


def _lookup(table: npt.NDArray[np.uint8], labels: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """``table[labels]`` for a label image: by OpenCV's table lookup when the labels fit in a
    byte (several times faster than numpy's gather), else by numpy."""
    if len(table) <= 256:
        full = np.zeros(256, np.uint8)
        full[: len(table)] = table
        return np.asarray(cv2.LUT(labels.astype(np.uint8), full), np.uint8)
    return np.asarray(table[labels], np.uint8)


def _closed_bodies(
    obj: npt.NDArray[np.uint8],
    border: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    sharp: npt.NDArray[np.uint8],
    detail_area: float,
    max_area: float,
) -> list[Contour]:
    """Crystals grown into the meniscus crust or cut by the search border, as outlines.

    A large transparent crystal on the meniscus is one object with the crust, so it touches the
    border and is never measured; its outline, though, is a loop of sharp edges, closed by other
    crystals' outlines or by the border where the crystal meets them. The areas such loops
    enclose inside objects on the border (``sharp``: 0/1 sharp-edge pixels), merged across the
    thin facet lines inside one crystal (a 5x5 closing) and given back a 2 px ring of their
    outline, are the crystals' bodies. Areas of ``detail_area`` .. ``max_area`` pixels are kept;
    one holding a free object (measured anyway) is not a body, nor one whose outline runs along
    the border for over a quarter of its length (a strip of drop between crust and border).
    """
    n, lab = cv2.connectedComponents(obj, connectivity=8)
    if n < 2:
        return []
    on_border = np.zeros(n, np.uint8)
    on_border[lab[border > 0]] = 1  # (label 0, the background, is no object)
    on_border[0] = 0
    onb = _lookup(on_border, np.asarray(lab, np.int32)).view(np.bool_)
    free_obj = (obj > 0) & ~onb
    # the sharp edges of the objects on the border, closed 3x3: the two edges of a thick dark
    # outline leave no channel between them that would join the areas on either side
    edges = np.asarray(sharp & onb.view(np.uint8), np.uint8)
    walls = np.asarray(cv2.morphologyEx(edges, cv2.MORPH_CLOSE, _SQUARE3), np.bool_) & onb
    walls |= (border > 0) | (mask == 0)
    k, traced = cv2.connectedComponents(np.asarray(~walls, np.uint8), connectivity=4)
    if k < 2:
        return []
    holes = np.asarray(traced, np.int32)
    area = np.bincount(holes.ravel(), minlength=k)
    ok = (area >= 4) & (area <= max_area)
    # (an area reaching the ROI's edge is not enclosed)
    ok[holes[0]] = ok[holes[-1]] = ok[holes[:, 0]] = ok[holes[:, -1]] = False
    ok[0] = False
    if free_obj.any():
        ok &= np.bincount(holes[free_obj], minlength=k) == 0
    # a strip of drop (or of a flat crust) between the crust and the border is no crystal's
    # inside, and must not be merged into one: much of its edge is the border
    near_border = np.asarray(cv2.dilate(border, _SQUARE3), np.bool_)
    rim = np.asarray(cv2.dilate(walls.view(np.uint8), _SQUARE3), np.bool_)
    # (walls, the border among them, are label 0 in ``holes``)
    on_rim = np.bincount(holes[rim], minlength=k)
    on_border_rim = np.bincount(holes[near_border], minlength=k)
    ok &= on_border_rim <= _MAX_RIM_ON_BORDER * np.maximum(on_rim, 1)
    if not ok.any():
        return []
    # slivers (channels left between the two edges of a thick outline) out, then the facets of
    # one crystal merged across the thin lines between them
    body = np.asarray(
        cv2.morphologyEx(_lookup(ok.view(np.uint8), holes), cv2.MORPH_OPEN, _SQUARE3),
        np.uint8,
    )
    body = np.asarray(cv2.morphologyEx(body, cv2.MORPH_CLOSE, _DISC5), np.uint8)
    ring = np.asarray(cv2.dilate(body, _DISC5), np.uint8)
    body = ring & (obj | body) & mask & (1 - border)
    # drop pieces too small to be a crystal's body, or (merged) too large, and strips of drop
    # between the crust and the border (much of their outline runs along the border)
    outlines, _ = cv2.findContours(body, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    keep: list[Contour] = []
    for c in outlines:
        filled = cv2.contourArea(c) + 0.5 * cv2.arcLength(c, True)
        if not detail_area <= filled <= max_area:
            continue
        pts = c.reshape(-1, 2)
        if float(near_border[pts[:, 1], pts[:, 0]].mean()) <= _MAX_BORDER_SHARE:
            keep.append(cast(Contour, c))
    if keep and free_obj.any():  # an area around a free object: that object is measured anyway
        which = np.zeros(obj.shape, np.int32)
        for i, c in enumerate(keep):
            cv2.drawContours(which, [c], -1, i + 1, -1)
        holding = set(np.unique(which[free_obj]).tolist())
        keep = [c for i, c in enumerate(keep) if i + 1 not in holding]
    return keep


@dataclass(slots=True)
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
    granularity: float = 0.0  # mean fine (5x5) contrast inside, / 128: high for grainy clouds
    edge_strength: float = 0.0  # mean 3x3 gradient on the outline, / 128: crystals are sharp
    polarity: float = 0.0  # mean (flattened - 128) / 128 inside: dark (< 0) or bright (> 0)
    spread: float = 0.0  # standard deviation of the flattened level inside, / 128
    depth: float = 0.0  # (128 - darkest flattened level inside) / 128: a crystal's outline is
    # drawn far darker than the background (> 0.3), a skin fold or ripple stays shallow (< 0.3)
    measured: bool = True  # outline/texture measures taken (False: a speck or a ragged shape)
    enclosed: bool = False  # freed from an object on the border: an area it encloses (a facet)
    body: bool = False  # freed from objects on the border: a whole area closed by sharp edges
    # (scored as a free object, see :func:`plausible_body`)

    def vector(self) -> list[float]:
        """The shape/appearance features the crystal model (``CRYSTAL_MLP``) weighs."""
        return [
            math.log(max(self.area, 1.0)),
            self.solidity,
            self.circularity,
            self.granularity,
            math.log(max(self.aspect, 1.0)),
            self.edge_strength,
            self.polarity,
            self.spread,
            self.depth,
            float(self.enclosed),
        ]

    @property
    def aspect(self) -> float:
        return self.length / max(self.width, 1.0)


# what a crystal's body must show to be scored at all (measured on rendered scenes, seeds
# 5000..5029 of every imager and light, apart from training and evaluation: of 7223 bodies 63 lay
# on a true crystal, and the crystal model, which knows free objects only, accepted 310 in bright
# field and cross-polarised light, 33 of them true; with these rules 7, 5 of them true)
_BODY_MIN_EDGE = 0.3  # a crystal's outline is sharp
_BODY_MIN_DEPTH = 0.55  # and far darker than the drop (mesh of a precipitate cloud: 0.4-0.5)
_BUBBLE = (0.7, 0.93, 150.0)  # round (circularity, solidity at least) and large: a bubble's inside


def plausible_body(b: Blob) -> bool:
    """Whether a body freed from the objects on the border (``b.body``) may be a crystal: its
    outline sharp and dark, and not the round inside of a bubble on the meniscus. Most bodies
    are the mesh of a precipitate cloud or a bubble; a real crystal grown into the crust shows a
    sharp, dark, polygonal outline. Any other blob passes."""
    if not b.body:
        return True
    circ, sol, area = _BUBBLE
    bubble = b.circularity >= circ and b.solidity >= sol and b.area >= area
    return b.edge_strength >= _BODY_MIN_EDGE and b.depth >= _BODY_MIN_DEPTH and not bubble


_ANGLES = np.linspace(0.0, np.pi, 32, endpoint=False)
_DIRS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, 32): unit vectors every 5.6 degrees


def straightness(contour: npt.NDArray[np.int32], equiv_diam: float) -> float:
    """How well a few straight segments explain the outline: 1 = polygon, ~0 = round/ragged."""
    n = len(contour)
    if n < 6:
        return 1.0
    perim = cv2.arcLength(contour, True)
    poly = cv2.approxPolyDP(contour, max(1.0, 0.035 * perim), True).reshape(-1, 2)
    m = len(poly)
    if m < 3:
        return 1.0
    # distance of every outline point (rows) to every polygon segment (columns); keep the nearest
    a = poly.astype(np.float64)
    ab = np.empty_like(a)
    np.subtract(a[1:], a[:-1], out=ab[:-1])
    np.subtract(a[0], a[-1], out=ab[-1])  # closing segment
    abx, aby = ab[:, 0], ab[:, 1]
    inv = 1.0 / np.maximum(abx * abx + aby * aby, 1e-9)
    pts = contour.reshape(-1, 2).astype(np.float64)
    px = pts[:, 0:1] - a[:, 0]
    py = pts[:, 1:2] - a[:, 1]
    t = (px * abx + py * aby) * inv  # position of the foot of the perpendicular on the segment
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    px -= t * abx
    py -= t * aby
    dev = float(np.sqrt((px * px + py * py).min(axis=1)).sum()) / n
    many = max(0, m - 8) * 0.08  # a polygon needing many corners is round
    score = 1.0 - max(dev - 0.35, 0.0) / max(0.035 * equiv_diam, 0.5) - many
    return float(min(1.0, max(0.0, score)))


class _Outlines:
    """Several closed outlines (OpenCV contours of integer points) measured together.

    Each measure equals what OpenCV's per-contour call returns (``arcLength`` adds float32
    segment lengths; areas and moments are sums of integer products, exact in float64), computed
    with a few array operations for all outlines instead of one call per outline.
    """

    def __init__(self, contours: Sequence[npt.NDArray[np.int32]], moments: bool = False) -> None:
        n = len(contours)
        counts = np.fromiter(map(len, contours), np.intp, n)
        pts = np.concatenate(contours).reshape(-1, 2)
        starts = np.zeros(n, np.intp)
        counts[:-1].cumsum(out=starts[1:])
        prev = np.empty_like(pts)
        prev[1:] = pts[:-1]
        prev[starts] = pts[starts + counts - 1]  # closed: the first point follows the last
        d = (pts - prev).astype(np.float32)
        p = pts.T.astype(np.float64)
        q = prev.T.astype(np.float64)
        # per point: segment length, cross product (twice the signed area), and for the
        # centroid the cross product times the summed x and y; summed per outline in one call
        cols = np.empty((4 if moments else 2, len(pts)), np.float64)
        cols[0] = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
        cross = np.multiply(q[0], p[1], out=cols[1])
        cross -= q[1] * p[0]
        if moments:
            np.multiply(cross, p[0] + q[0], out=cols[2])
            np.multiply(cross, p[1] + q[1], out=cols[3])
        self.pts, self.starts = pts, starts
        self._sums = np.add.reduceat(cols, starts, axis=1)

    def perimeters(self) -> npt.NDArray[np.float64]:
        return np.asarray(self._sums[0], dtype=np.float64)

    def areas(self) -> npt.NDArray[np.float64]:
        return np.asarray(np.abs(self._sums[1]) * 0.5, dtype=np.float64)

    def boxes(self) -> tuple[npt.NDArray[np.intp], ...]:
        lo = np.minimum.reduceat(self.pts, self.starts)
        hi = np.maximum.reduceat(self.pts, self.starts)
        return lo[:, 0], lo[:, 1], hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1

    def centroids(self, which: list[int]) -> tuple[list[float], list[float], list[float]]:
        """(cx, cy, m00) of outlines ``which``, as ``cv2.moments`` gives them (the outlines must
        have been measured with ``moments=True``)."""
        a00, a10, a01 = self._sums[1:4, which]
        sign = np.where(a00 > 0, 1.0, -1.0)
        m00 = a00 * (0.5 * sign)
        ok = np.abs(a00) > _EPS32
        m00 = np.where(ok, m00, 0.0)
        safe = np.where(ok, m00, 1.0)
        sixth = sign / 6.0
        return (a10 * sixth / safe).tolist(), (a01 * sixth / safe).tolist(), m00.tolist()


@dataclass(frozen=True)
class Unmeasured:
    """Objects that are counted but never measured, so never crystals: specks (below the detail
    area) and objects reaching the border of the searched area (the meniscus, skin at the edge)."""

    specks: int = 0
    thin: int = 0  # specks that are elongated (aspect > 8)
    edge: int = 0  # objects touching the border
    edge_small: int = 0  # of them, smaller than ``small_area``
    area: float = 0.0  # total area of all of them, in working pixels


def find_blobs(
    obj: npt.NDArray[np.uint8],
    border: npt.NDArray[np.uint8],
    flat: npt.NDArray[np.uint8],
    grad: npt.NDArray[np.uint8],
    fine: npt.NDArray[np.uint8] | None,
    min_area: float,
    detail_area: float = 32.0,
    small_area: float = 0.0,
    free_enclosed: bool = True,
    max_enclosed: float = 0.0,
    mask: npt.NDArray[np.uint8] | None = None,
    loop_edge: float = 0.0,
    max_body: float = 0.0,
) -> tuple[list[Blob], Unmeasured]:
    """The objects of the object map ``obj`` (0/1, ROI working pixels), measured.

    ``border``: the searched area's border (0/1; objects touching it are counted, not measured);
    ``flat``, ``grad``, ``fine``: the flattened drop, its 3x3 gradient and fine contrast (see
    :func:`kiboauto.vision.pixel_maps.crystal_maps`). Returns the blobs (at least
    ``detail_area`` pixels, not touching the border) and the summary of the objects only counted
    (specks of at least ``min_area``, objects on the border). With ``free_enclosed``, the areas
    that objects on the border enclose come back as candidates: holes (facets) of up to
    ``max_enclosed`` pixels, marked ``enclosed``, and, given ``mask`` (the searched area, 0/1)
    and ``loop_edge`` (a 3x3 gradient, relative to the background's 128), whole crystals of up
    to ``max_body`` pixels whose sharp outline closes on the crust or the border (see
    :func:`_closed_bodies`), measured like free objects. Outlines are measured all at once;
    the costly appearance measures are taken only for blobs that are not ragged (others cannot be
    crystals).
    """
    # an outline of n points encloses at most ~n^2/(4 pi) pixels: skip specks without measuring
    min_pts = max(4, int(math.sqrt(4.0 * math.pi * min_area)))
    found: list[Contour]
    body_ids: set[int] = set()
    if free_enclosed:
        bodies = None
        if mask is not None and loop_edge > 0.0:
            sharp = np.asarray(grad > min(round(128.0 * loop_edge), 255), np.uint8)
            bodies = _closed_bodies(obj, border, mask, sharp, detail_area, max_body)
        found, n_freed = _with_enclosed(obj, border, min_pts, detail_area, max_enclosed, bodies)
        body_ids = {id(c) for c in bodies or []}
    else:
        outlines, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        found, n_freed = cast(list[Contour], list(outlines)), 0
    first_freed = len(found) - n_freed
    picked = [i for i, c in enumerate(found) if len(c) >= min_pts]
    cand = cast(list[Contour], [found[i] for i in picked])  # int32 (x, y) points
    enclosed = [i >= first_freed for i in picked]
    is_body = [id(found[i]) in body_ids for i in picked]
    n_speck = n_thin = n_edge = n_edge_small = 0
    other_area = 0.0
    blobs: list[Blob] = []
    if not cand:
        return blobs, Unmeasured()
    # outline measures of all candidates at once (the same numbers OpenCV's per-contour calls give)
    ol = _Outlines(cand, moments=True)
    perims = ol.perimeters().tolist()
    areas = ol.areas().tolist()
    xs0, ys0, ws_, hs_ = (v.tolist() for v in ol.boxes())
    touch = np.maximum.reduceat(border[ol.pts[:, 1], ol.pts[:, 0]], ol.starts).tolist()
    keep: list[tuple[int, float, tuple[int, int, int, int], float]] = []
    for i, perim0 in enumerate(perims):
        area = areas[i] + 0.5 * perim0  # filled, rim pixels included
        if area < min_area:
            continue
        if area < detail_area:  # a speck: counted, not measured
            w, h = ws_[i], hs_[i]
            n_speck += 1
            n_thin += max(w, h) > 8 * min(w, h)
            other_area += area
        elif touch[i]:  # meniscus, skin at the edge: counted only
            n_edge += 1
            n_edge_small += area < small_area
            other_area += area
        else:
            keep.append((i, area, (xs0[i], ys0[i], ws_[i], hs_[i]), perim0))
    unmeasured = Unmeasured(n_speck, n_thin, n_edge, n_edge_small, other_area)
    if not keep:
        return blobs, unmeasured
    shapes = [cand[t[0]] for t in keep]
    cx_, cy_, m00_ = ol.centroids([t[0] for t in keep])
    # Feret diameters of all hulls at once: calipers in 32 directions (error below 0.5 %).
    # Contour points are pixel centres (+1 px), but the 3x3 edge band and the optics blur widen
    # every object by about 2.5 px (measured against rendered truth), hence the net -1.5 px.
    hull_ol = _Outlines(cast(list[Contour], [cv2.convexHull(c) for c in shapes]))  # int32
    hull_areas = (hull_ol.areas() + 0.5 * hull_ol.perimeters()).tolist()
    proj = hull_ol.pts.astype(np.float64) @ _DIRS
    starts = hull_ol.starts
    extent = np.maximum.reduceat(proj, starts, axis=0) - np.minimum.reduceat(proj, starts, axis=0)
    lengths = np.maximum(extent.max(axis=1) - 1.5, 1.0).tolist()
    widths = np.maximum(extent.min(axis=1) - 1.5, 1.0).tolist()
    solids = [area / max(hull_areas[k], 1.0) for k, (_i, area, _b, _p) in enumerate(keep)]
    pol_, edge_, gran_, spread_, depth_ = appearance(
        [(shapes[k], keep[k][2]) for k, sol in enumerate(solids) if sol >= 0.5], flat, grad, fine
    )
    j = 0
    for k, (i, area, bbox, perim0) in enumerate(keep):
        c = shapes[k]
        x, y, w, h = bbox
        solidity = solids[k]
        perim = perim0 + math.pi  # a pixel-centre outline is short by about pi
        cen = (cx_[k], cy_[k]) if m00_[k] > 0 else (x + w / 2, y + h / 2)
        ok = solidity >= 0.5
        gran = edge_s = pol = spread = depth = 0.0
        if ok:
            pol, edge_s, gran, spread, depth = pol_[j], edge_[j], gran_[j], spread_[j], depth_[j]
            j += 1
        blobs.append(
            Blob(
                contour=c,
                area=area,
                centroid=(float(cen[0]), float(cen[1])),
                bbox=bbox,
                length=lengths[k],
                width=widths[k],
                solidity=solidity,
                circularity=min(1.0, 4.0 * math.pi * area / max(perim * perim, 1.0)),
                straightness=0.0,
                granularity=gran,
                edge_strength=edge_s,
                polarity=pol,
                spread=spread,
                depth=depth,
                measured=ok,
                enclosed=enclosed[i],
                body=is_body[i],
            )
        )
    return blobs, unmeasured
