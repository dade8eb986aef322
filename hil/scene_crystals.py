"""Crystals for the scene renderer: convex polyhedra, their projection, drawing and exact outline.

A crystal is built in 3-D (micrometres) as one convex polyhedron (plate, needle, cube) or, for a
cluster, several needles/plates radiating from one point. It is rotated, projected orthographically
onto the image plane and drawn face by face (only faces turned towards the camera; for a convex
body they tile its outline exactly). The outline in the truth is the convex hull of the projected
vertices (exact), or for a cluster the outer contour of the union of its members' hulls, traced on
a 4x supersampled raster (exact to a quarter pixel).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["HABITS", "Polyhedron", "build_crystal", "feret", "hull", "polygon_area_centroid"]

HABITS = ("plate", "needle", "cube", "cluster")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass
class Polyhedron:
    """Vertices (n, 3) in um, centred near the origin, and faces as vertex index cycles."""

    vertices: F64
    faces: list[list[int]]


def _prism(section: F64, z0: float, z1: float) -> Polyhedron:
    """Extrude a convex 2-D section (m, 2) from z0 to z1; faces: two caps and m sides."""
    m = len(section)
    bottom = np.column_stack([section, np.full(m, z0)])
    top = np.column_stack([section, np.full(m, z1)])
    faces = [list(range(m)), list(range(m, 2 * m))]
    faces += [[i, (i + 1) % m, m + (i + 1) % m, m + i] for i in range(m)]
    return Polyhedron(np.vstack([bottom, top]), faces)


def _needle(rng: np.random.Generator) -> Polyhedron:
    """A hexagonal (or square) prism along x with pyramidal tips."""
    sides = 6 if rng.uniform() < 0.7 else 4
    aspect = rng.uniform(4.0, 14.0)
    r = 1.0 / aspect
    ang = np.arange(sides) * 2 * math.pi / sides + rng.uniform(0, math.pi / sides)
    ring = np.column_stack([r * np.cos(ang), r * np.sin(ang) * rng.uniform(0.6, 1.0)])
    body = 0.5 - rng.uniform(0.5, 2.0) * r
    verts = [
        np.column_stack([np.full(sides, -body), ring]),
        np.column_stack([np.full(sides, body), ring]),
    ]
    tips = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    v = np.vstack([*verts, tips])
    a, b = 2 * sides, 2 * sides + 1
    faces = [[i, (i + 1) % sides, sides + (i + 1) % sides, sides + i] for i in range(sides)]
    faces += [[a, (i + 1) % sides, i] for i in range(sides)]
    faces += [[b, sides + i, sides + (i + 1) % sides] for i in range(sides)]
    return Polyhedron(v, faces)


def _plate(rng: np.random.Generator) -> Polyhedron:
    kind = rng.choice(["hexagon", "rectangle", "rhomb"])
    if kind == "hexagon":
        ang = np.arange(6) * math.pi / 3
        radii = np.where(np.arange(6) % 2 == 0, 1.0, rng.uniform(0.6, 1.0))
        stretch = rng.uniform(1.0, 1.8)
        section = np.column_stack([radii * np.cos(ang) * stretch, radii * np.sin(ang)])
    elif kind == "rectangle":
        a = rng.uniform(1.0, 2.5)
        section = np.array([[-a, -1.0], [a, -1.0], [a, 1.0], [-a, 1.0]])
    else:
        a, skew = rng.uniform(1.0, 2.0), rng.uniform(0.3, 0.8)
        section = np.array([[-a, -1.0], [a - skew, -1.0], [a, 1.0], [-a + skew, 1.0]])
    scale = float(np.max(np.linalg.norm(section, axis=1)))
    thick = rng.uniform(0.08, 0.25)
    return _prism(section / scale, -thick / 2, thick / 2)


def _cube(rng: np.random.Generator) -> Polyhedron:
    a, b, c = rng.uniform(0.8, 1.25, 3)
    section = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) / 2
    return _prism(section, -c / 2, c / 2)


def _rotation(rng: np.random.Generator, max_tilt_deg: float, full: bool) -> F64:
    """Uniform in-plane angle, tilt out of the image plane up to ``max_tilt_deg`` (or free)."""

    def rz(t: float) -> F64:
        c, s = math.cos(t), math.sin(t)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])

    def rx(t: float) -> F64:
        c, s = math.cos(t), math.sin(t)
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])

    if full:
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
    tilt = math.radians(rng.uniform(0, max_tilt_deg))
    spin = rng.uniform(0, 2 * math.pi)
    return rz(rng.uniform(0, 2 * math.pi)) @ rx(tilt) @ rz(spin)


def build_crystal(habit: str, rng: np.random.Generator) -> list[Polyhedron]:
    """Unit-sized members (largest 3-D extent 1) of one crystal, already rotated into view."""
    if habit == "plate":
        members = [(_plate(rng), _rotation(rng, 25, False))]
    elif habit == "needle":
        members = [(_needle(rng), _rotation(rng, 20, False))]
    elif habit == "cube":
        members = [(_cube(rng), _rotation(rng, 0, True))]
    elif habit == "cluster":
        members = []
        n = int(rng.integers(3, 8))
        base = rng.uniform(0, 2 * math.pi)
        kind = "needle" if rng.uniform() < 0.7 else "plate"
        for i in range(n):
            body = _needle(rng) if kind == "needle" else _plate(rng)
            length = rng.uniform(0.5, 1.0)
            v = body.vertices * length
            v[:, 0] += 0.5 * length * 0.9  # one end near the common origin
            direction = base + 2 * math.pi * i / n + rng.uniform(-0.35, 0.35)
            c, s = math.cos(direction), math.sin(direction)
            tilt = math.radians(rng.uniform(-15, 15))
            rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
                [
                    [math.cos(tilt), 0, -math.sin(tilt)],
                    [0, 1, 0],
                    [math.sin(tilt), 0, math.cos(tilt)],
                ]
            )
            members.append((Polyhedron(v, body.faces), rot))
    else:
        raise ValueError(f"unknown habit {habit!r}; known: {', '.join(HABITS)}")
    out = [Polyhedron(p.vertices @ r.T, p.faces) for p, r in members]
    allv = np.vstack([p.vertices for p in out])
    centre = 0.5 * (allv.min(axis=0) + allv.max(axis=0))
    d = allv[:, None, :] - allv[None, :, :]
    extent = float(np.sqrt((d**2).sum(axis=2)).max())
    return [Polyhedron((p.vertices - centre) / extent, p.faces) for p in out]


# -- polygon geometry --------------------------------------------------------------------------
def hull(points: F64) -> F64:
    """Convex hull (counter-clockwise in image coordinates) of 2-D points, monotone chain."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) <= 2:
        return np.array(pts, dtype=np.float64)

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def polygon_area_centroid(poly: F64) -> tuple[float, tuple[float, float]]:
    """Area (shoelace) and area centroid of a simple polygon."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    a = 0.5 * float(cross.sum())
    if abs(a) < 1e-12:
        return 0.0, (float(x.mean()), float(y.mean()))
    cx = float(((x + xn) * cross).sum()) / (6 * a)
    cy = float(((y + yn) * cross).sum()) / (6 * a)
    return abs(a), (cx, cy)


def feret(poly: F64) -> tuple[float, float, float]:
    """(max Feret diameter, min Feret width, angle of the max diameter in degrees [0, 180))."""
    h = hull(poly)
    if len(h) < 2:
        return 0.0, 0.0, 0.0
    d = h[:, None, :] - h[None, :, :]
    dist = np.sqrt((d**2).sum(axis=2))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    longest = float(dist[i, j])
    dx, dy = h[j] - h[i]
    angle = math.degrees(math.atan2(dy, dx)) % 180.0
    if len(h) < 3:
        return longest, 0.0, angle
    width = math.inf
    for k in range(len(h)):
        a, b = h[k], h[(k + 1) % len(h)]
        e = b - a
        n = float(np.hypot(*e))
        if n < 1e-12:
            continue
        dists = np.abs((h[:, 0] - a[0]) * e[1] - (h[:, 1] - a[1]) * e[0]) / n
        width = min(width, float(dists.max()))
    return longest, width, angle


def union_outline(polys: list[F64]) -> F64:
    """Outer outline of the union of convex polygons, traced at 4x (quarter-pixel) resolution."""
    allp = np.vstack(polys)
    x0, y0 = np.floor(allp.min(axis=0)) - 2
    x1, y1 = np.ceil(allp.max(axis=0)) + 2
    s = 4
    mask = np.zeros((int((y1 - y0) * s) + 1, int((x1 - x0) * s) + 1), np.uint8)
    for p in polys:
        q = np.round(((p - [x0, y0]) * s) * 16).astype(np.int32)
        cv2.fillConvexPoly(mask, q, 255, cv2.LINE_8, shift=4)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best = max(contours, key=cv2.contourArea)
    pts: F64 = np.asarray(best[:, 0, :], dtype=np.float64) / s + np.array([x0, y0])
    return pts


# -- drawing ----------------------------------------------------------------------------------
LIGHT = np.array([-0.45, -0.35, 0.82])
LIGHT = LIGHT / np.linalg.norm(LIGHT)


def draw_member(
    layer: F32,
    vertices_px: F64,
    faces: list[list[int]],
    body: float,
    line_px: int,
    ridge: tuple[int, float] | None = None,
    transparent: bool = False,
    bold: bool = False,
    shade: float = 1.0,
) -> None:
    """Draw one convex body into ``layer`` (a transmission factor): shaded faces, then ridges.

    ``vertices_px`` are (n, 3): x, y in image pixels, z in pixels towards the camera. The faces
    whose outward normal points towards the camera (z > 0) tile the body's projected outline.
    ``ridge``: (width px, gain) of the facet edges, by default (``line_px`` // 2, 1); a gain
    below 1 moves each edge's value that part of the way from its facet's value.
    ``transparent``: a large clear crystal (VMXi-like drops): faces near 1 (the face towards the
    camera a little brighter than the drop, tilted ones a little darker), facet edges faintly
    darker than their face. ``bold`` (with ``transparent``; protein crystals in VMXi-like drops,
    as in real VMXi frames): faces at or a little above the drop's level, facet edges strongly
    dark (a third of their face's value); ``shade`` scales how far a bold crystal's faces stray
    from the drop's level with their tilt and light (1: a little; 3: tilted faces far darker,
    lit ones brighter, as refraction shows them in some real frames).
    """
    centre = vertices_px.mean(axis=0)
    visible: list[tuple[list[int], float]] = []
    for face in faces:
        p = vertices_px[face]
        n = np.cross(p[1] - p[0], p[2] - p[0])
        norm = float(np.linalg.norm(n))
        if norm < 1e-9:
            continue
        n = n / norm
        if float(np.dot(n, p.mean(axis=0) - centre)) < 0:
            n = -n
        if n[2] <= 1e-6:
            continue
        lit = float(np.dot(n, LIGHT))
        if transparent and bold:
            tilt = 0.08 * float(n[2]) ** 2 + 0.06 * lit - 0.06
            value = min(max(1.0 + shade * tilt, 0.5), 1.25) * (0.96 + 0.04 * body)
        elif transparent:
            value = (0.72 + 0.28 * float(n[2]) ** 2 + 0.12 * lit) * (0.92 + 0.08 * body)
        else:
            value = body * (0.3 + 0.5 * float(n[2]) ** 2 + 0.3 * lit)
        visible.append((face, value))
        pts = np.round(p[:, :2] * 16).astype(np.int32)
        cv2.fillConvexPoly(layer, pts, float(value), cv2.LINE_AA, shift=4)
    # facet edges: a bright line where the facet is lit, a darker one where it is not
    width, gain = ridge if ridge is not None else (max(1, line_px // 2), 1.0)
    for face, value in visible:
        p = np.round(vertices_px[face][:, :2] * 16).astype(np.int32)
        if transparent and bold:
            edge = value * 0.33
        elif transparent:
            edge = value * 0.82
        else:
            edge = min(1.4, value * 1.3) if value > body * 0.8 else value * 0.7
        if gain != 1.0:
            edge = value + (edge - value) * gain
        cv2.polylines(layer, [p], True, float(edge), width, cv2.LINE_AA, shift=4)


@functools.cache
def aa_line_width(thickness: int) -> float:
    """How many pixels wide an anti-aliased OpenCV line of ``thickness`` is, as the sum of its
    coverage per unit of length (mean over four directions): 0.9 for 1, 2.9 for 2, 5.1 for 3
    and 4 (OpenCV's thick lines grow in steps)."""
    widths = []
    for angle in (0.0, 0.3, 0.785, 1.2):
        canvas = np.zeros((300, 300), np.float32)
        half = 100.0 * np.array([math.cos(angle), math.sin(angle)])
        ends = np.round(np.array([150.0 - half, 150.0 + half]) * 16).astype(np.int32)
        cv2.polylines(canvas, [ends], False, 1.0, thickness, cv2.LINE_AA, shift=4)
        widths.append(float(canvas.sum()) / 200.0)
    return sum(widths) / len(widths)


def line_in_um(ref_thickness: int, scale: float) -> tuple[int, float]:
    """(thickness, gain) for a line drawn ``ref_thickness`` px thick on a frame with a 960 px short
    side, on a frame ``scale`` times finer: the thinnest OpenCV line at least ``scale`` times as
    wide, and the part of the reference line's contrast that keeps the same width x contrast."""
    if scale == 1.0:
        return ref_thickness, 1.0
    want = aa_line_width(ref_thickness) * scale
    thickness = ref_thickness
    while aa_line_width(thickness) < want and thickness < 64:
        thickness += 1
    return thickness, min(1.0, want / aa_line_width(thickness))
