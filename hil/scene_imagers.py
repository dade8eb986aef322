"""Real imagers the round plate well does not cover (docs/hil-camera.md, "Other imagers").

- A microfluidic droplet chip (``well_shape="droplets"``): a straight channel of oil between dark
  walls, one or several aqueous droplets in it, each with a thick dark ring; the crystals lie in
  one droplet, the drop.
- A VMXi-like square sub-well whose drop sits in a corner and meets two walls
  (``drop_meets_wall=True``): a dark, streaked wall, a broad shaded meniscus band along the drop's
  free edge, crystals mostly along that band.
- UV (tryptophan) fluorescence (``light="uv"``): a dark field where protein glows, crystals
  brightly, the drop and protein precipitate faintly, and salt, dust and bubbles not at all.

Each option draws from random streams of its own (21: the wall drop, 22: the droplets, 23: the
crystal habits in droplets), so it never shifts the draws of the scenes that do not use it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
import numpy.typing as npt

from .scene_layers import Geometry, detail_scale, smooth_noise, stream

if TYPE_CHECKING:
    from .scene import SceneSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: habits of crystals grown in droplets (small volumes nucleate needles and small prisms)
DROPLET_HABITS = ("needle", "needle", "cube")


# -- helpers ---------------------------------------------------------------------------------------
def _mask_of(poly: F64, h: int, w: int) -> Any:
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    return mask


def _inscribed(poly: F64, h: int, w: int) -> tuple[tuple[float, float], float]:
    """Centre and radius of the largest disc in the polygon's part of the frame."""
    dist = cv2.distanceTransform(_mask_of(poly, h, w), cv2.DIST_L2, 5)
    _, rmax, _, (x, y) = cv2.minMaxLoc(dist)
    return (float(x), float(y)), float(rmax)


def _rounded_box_radius(spec: SceneSpec, geo: Geometry) -> F32:
    """The square sub-well's "radius" (well_r on its wall), as ``draw_well_and_drop`` draws it."""
    yy, xx = np.ogrid[0 : spec.height, 0 : spec.width]
    dx = np.abs((xx - geo.well_c[0]).astype(np.float32))
    dy = np.abs((yy - geo.well_c[1]).astype(np.float32))
    corner = 0.12 * geo.well_r
    qx = np.maximum(dx - (geo.well_r - corner), 0)
    qy = np.maximum(dy - (geo.well_r - corner), 0)
    inner = np.minimum(np.maximum(dx, dy) - (geo.well_r - corner), 0)
    return cast(F32, (np.hypot(qx, qy) + inner + (geo.well_r - corner)).astype(np.float32))


def _streaks(r: np.random.Generator, h: int, w: int, along_y: bool, px: float) -> F32:
    """Unit-sigma noise in streaks: fine across (``px`` pixels), slow along (a quarter frame)."""
    fine, slow = max(2, int((w if along_y else h) / px)), 6
    small = r.standard_normal((slow, fine) if along_y else (fine, slow)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big -= big.mean()
    return cast(F32, big / max(float(big.std()), 1e-6))


# -- VMXi-like: a drop in a corner of a square sub-well ------------------------------------------
def plan_wall_drop(spec: SceneSpec, geo: Geometry) -> Geometry:
    """The drop in one corner of the square sub-well (``geo``'s well): it fills the corner up to
    both walls, and its free edge runs from one wall to the other as a bulging curve."""
    g = stream(spec.seed, 21)
    wr = geo.well_r
    rc = 0.12 * wr  # the sub-well's rounded corner (as drawn by the well)
    k = int(g.integers(0, 4))
    sx, sy = (-1.0, 1.0)[k & 1], (-1.0, 1.0)[k >> 1]
    corner = np.array([geo.well_c[0] + sx * wr, geo.well_c[1] + sy * wr])
    ex, ey = np.array([-sx, 0.0]), np.array([0.0, -sy])  # along the walls, into the well
    a, b = wr * g.uniform(0.8, 1.45), wr * g.uniform(0.9, 1.5)  # reach along each wall
    p = g.uniform(1.7, 2.6)  # superellipse exponent of the free edge (2: a quarter ellipse)
    t = np.linspace(0.0, math.pi / 2, 181)
    wobble = np.ones_like(t)
    for j in range(1, 6):  # zero at both walls: the edge meets each wall where it should
        wobble += g.uniform(-0.03, 0.03) / j * np.sin(2 * j * t)
    u = a * np.cos(t) ** (2 / p) * wobble
    v = b * np.sin(t) ** (2 / p) * wobble
    free = corner + np.outer(u, ex) + np.outer(v, ey)
    phi = np.linspace(0.0, math.pi / 2, 24)
    arc = np.column_stack([rc * (1 - np.cos(phi)), rc * (1 - np.sin(phi))])  # (0, rc) -> (rc, 0)
    walls = corner + np.outer(arc[:, 0], ex) + np.outer(arc[:, 1], ey)
    poly = np.vstack([free, walls])  # free edge (wall 1 -> wall 2), then back round the corner
    centre, rmin = _inscribed(poly, spec.height, spec.width)
    meniscus = wr * g.uniform(0.07, 0.13)
    return replace(
        geo,
        drop_c=centre,
        drop_poly=poly,
        drop_rmin=rmin,
        placement="meniscus",
        free_edge=free,
        meniscus_px=float(meniscus),
    )


def draw_wall_well_and_drop(spec: SceneSpec, geo: Geometry) -> tuple[F32, Any]:
    """Transmission of the sub-well (bright floor, dark streaked wall) and of the drop (a broad
    shaded meniscus band along its free edge), and the drop mask."""
    w, h = spec.width, spec.height
    short = min(w, h)
    ds = detail_scale(short)
    r = stream(spec.seed, 21, 1)
    rr = _rounded_box_radius(spec, geo)
    wr, face = geo.well_r, 0.035 * short
    trans = np.interp(
        rr,
        [0, 0.9 * wr, wr - 1.5 * ds, wr, wr + 0.3 * face, wr + face, 1e9],
        [1.0, 0.98, 0.9, 0.45, 0.3, 0.13, 0.12],
    ).astype(np.float32)
    dx = np.abs(np.arange(w, dtype=np.float32) - geo.well_c[0])[None, :]
    dy = np.abs(np.arange(h, dtype=np.float32) - geo.well_c[1])[:, None]
    side = dx >= dy  # left/right walls: vertical streaks; top/bottom: horizontal
    streak = np.where(side, _streaks(r, h, w, True, 3 * ds), _streaks(r, h, w, False, 3 * ds))
    mottle = smooth_noise(r, h, w, short / 30)
    texture = 1.0 + 0.25 * streak + 0.2 * mottle
    trans = np.where(rr > wr, trans * np.clip(texture, 0.3, 2.0), trans).astype(np.float32)

    mask = _mask_of(geo.drop_poly, h, w)
    assert geo.free_edge is not None
    edge = np.zeros((h, w), np.uint8)
    cv2.polylines(edge, [np.round(geo.free_edge * 16).astype(np.int32)], False, 255, 1,
                  cv2.LINE_8, shift=4)  # fmt: skip
    d_free = cv2.distanceTransform(255 - edge, cv2.DIST_L2, 5)
    m = max(4.0, geo.meniscus_px)
    band = np.interp(
        d_free, [0, 1.2 * ds, 0.15 * m, 0.5 * m, m, 1.6 * m, 1e9],
        [0.3, 0.5, 0.62, 0.8, 0.92, 0.97, 0.97],
    )  # fmt: skip
    shade = smooth_noise(r, h, w, short / 12)
    band = 1.0 - (1.0 - band) * (1.0 + 0.25 * shade)
    rim = 1.0 + 0.06 * np.exp(-((d_free / (1.5 * ds)) ** 2))
    factor = np.where(mask > 0, band, rim).astype(np.float32)
    return cast(F32, trans * factor), mask


# -- a microfluidic droplet chip -------------------------------------------------------------------
def plan_droplets(spec: SceneSpec, geo: Geometry) -> Geometry:
    """A straight channel across the frame and droplets along its axis; the first one (near the
    middle of the frame, whole) is the drop. ``well_c`` is a point on the channel's axis and
    ``well_r`` its half width (axis to inner wall)."""
    g = stream(spec.seed, 22)
    w, h = spec.width, spec.height
    short = min(w, h)
    angle = g.uniform(-0.2, 0.2)
    ax = np.array([math.cos(angle), math.sin(angle)])
    ay = np.array([-math.sin(angle), math.cos(angle)])
    half = short * g.uniform(0.2, 0.3) * min(spec.well_zoom, 1.5)
    centre = np.array([w / 2, h / 2]) + g.uniform(-0.04, 0.04, 2) * short
    n = int(spec.droplets) if spec.droplets is not None else 1 + int(g.integers(0, 4))
    b0 = half * g.uniform(0.6, 0.85)
    elong = g.uniform(1.0, 2.0)  # the chip makes droplets of one size
    polys: list[F64] = []
    ends = [0.0, 0.0]  # how far along the axis the droplets reach on each side
    for i in range(n):
        b = b0 * g.uniform(0.95, 1.05)
        a = max(b, b * elong * g.uniform(0.9, 1.1))
        p = 2.0 if a < 1.15 * b else g.uniform(2.5, 4.0)  # plugs are squarer
        if i == 0:
            s = g.uniform(-0.08, 0.08) * w
            ends = [s - a, s + a]
        else:
            gap = b * g.uniform(0.25, 0.9)
            if i % 2:
                s = ends[1] + gap + a
                ends[1] = s + a
            else:
                s = ends[0] - gap - a
                ends[0] = s - a
        c = centre + s * ax + g.uniform(-0.06, 0.06) * (half - b) * ay
        t = np.linspace(0.0, 2 * math.pi, 360, endpoint=False)
        cs, sn = np.cos(t), np.sin(t)
        rad = np.ones_like(t)
        for j in range(2, 6):
            rad += g.uniform(0, 0.01) * np.cos(j * t + g.uniform(0, 2 * math.pi))
        x = a * np.sign(cs) * np.abs(cs) ** (2 / p) * rad
        y = b * np.sign(sn) * np.abs(sn) ** (2 / p) * rad
        polys.append(c + np.outer(x, ax) + np.outer(y, ay))
    drop = polys[0]
    dc = drop.mean(axis=0)
    rmin = float(np.min(np.hypot(*(drop - dc).T)))
    return replace(
        geo,
        well_c=(float(centre[0]), float(centre[1])),
        well_r=float(half),
        drop_c=(float(dc[0]), float(dc[1])),
        drop_poly=drop,
        drop_rmin=rmin,
        placement="polygon",
        meniscus_px=float(rmin * g.uniform(0.1, 0.17)),  # the droplet's dark ring
        droplets=polys,
        channel_angle=float(angle),
    )


def draw_channel_and_droplets(spec: SceneSpec, geo: Geometry) -> tuple[F32, Any]:
    """Transmission of the chip (oil in the channel, dark walls, textured chip outside) and of
    the droplets (thick dark rings), and the mask of the drop (the first droplet)."""
    w, h = spec.width, spec.height
    short = min(w, h)
    ds = detail_scale(short)
    r = stream(spec.seed, 22, 1)
    c = np.asarray(geo.well_c)
    normal = np.array([-math.sin(geo.channel_angle), math.cos(geo.channel_angle)])
    yy, xx = np.ogrid[0:h, 0:w]
    d = np.abs((xx - c[0]) * normal[0] + (yy - c[1]) * normal[1]).astype(np.float32) - geo.well_r
    ww = short * float(r.uniform(0.025, 0.05))
    trans = np.interp(
        d, [-1e9, -1.5 * ds, 0, 0.25 * ww, 0.8 * ww, ww, ww + 1.5 * ds, 1e9],
        [0.93, 0.96, 0.35, 0.16, 0.17, 0.3, 0.7, 0.7],
    ).astype(np.float32)  # fmt: skip
    chip = smooth_noise(r, h, w, short / 40)
    trans = np.where(d > ww, trans * (1.0 + 0.035 * chip), trans).astype(np.float32)
    t = max(2.0, geo.meniscus_px)
    drop_mask = None
    for poly in geo.droplets:
        mask = _mask_of(poly, h, w)
        if drop_mask is None:
            drop_mask = mask
        if not mask.any():
            continue
        dist_in = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        dist_out = cv2.distanceTransform(255 - mask, cv2.DIST_L2, 5)
        inside = np.interp(dist_in, [0, 0.35 * t, t, 1.6 * t, 1e9], [0.22, 0.3, 0.72, 0.99, 1.01])
        halo = 1.0 + 0.08 * np.exp(-((dist_out / (1.5 * ds)) ** 2))
        trans *= np.where(mask > 0, inside, halo).astype(np.float32)
    assert drop_mask is not None
    return trans, drop_mask


# -- crystals in the new geometries ----------------------------------------------------------------
def droplet_habit(spec: SceneSpec, index: int, habit: str) -> str:
    """Crystals in droplets are mostly needles and small prisms: a plate or cluster drawn from
    ``spec.habits`` becomes one of those seven times in ten (own stream: 23)."""
    if habit in ("needle", "cube"):
        return habit
    r = stream(spec.seed, 23, index)
    if r.uniform() < 0.7:
        return DROPLET_HABITS[int(r.integers(0, len(DROPLET_HABITS)))]
    return habit


def place_crystal(
    spec: SceneSpec, geo: Geometry, rng: np.random.Generator, place_r: float, outline: F64,
    taken: list[tuple[float, float, float]], gap: float = 1.05, crust: bool = False,
) -> tuple[float, float] | None:  # fmt: skip
    """A centre where the crystal's ``outline`` (its projected hull at the size of its room,
    relative to its centre) lies in the drop polygon and in the frame, and its disc of
    ``place_r`` keeps ``gap`` x the sum of the radii from every other crystal's disc (60 tries; a
    gap below 1 lets crystals touch and overlap), or None.

    "meniscus" placement puts three crystals in four across the meniscus band along the free
    edge (their outline reaching into it; ``crust``: hugging the free edge, as the crust of
    crystals lining the meniscus in VMXi frames); "polygon" keeps outlines out of the inner 30 %
    of a droplet's dark ring."""
    contour = geo.drop_poly.astype(np.float32).reshape(-1, 1, 2)
    lo = np.maximum(geo.drop_poly.min(axis=0), place_r)
    hi = np.minimum(geo.drop_poly.max(axis=0), np.array([spec.width, spec.height]) - 1 - place_r)
    margin = 0.5 + (0.3 * geo.meniscus_px if geo.placement == "polygon" else 0.0)
    o_lo, o_hi = outline.min(axis=0), outline.max(axis=0)
    edge = geo.free_edge
    for _try in range(60):
        if geo.placement == "meniscus" and edge is not None and rng.uniform() < 0.75:
            j = int(rng.integers(1, len(edge) - 1))
            tangent = edge[j + 1] - edge[j - 1]
            normal = np.array([-tangent[1], tangent[0]]) / max(float(np.hypot(*tangent)), 1e-9)
            probe = edge[j] + 2.0 * normal
            if cv2.pointPolygonTest(contour, (float(probe[0]), float(probe[1])), False) < 0:
                normal = -normal
            depth = rng.uniform(0.1, 0.9) * place_r + rng.uniform(0.0, 0.6) * geo.meniscus_px
            if crust:  # just clear of the edge: most tries fail until the outline fits
                depth = rng.uniform(0.3, 1.05) * place_r + rng.uniform(0.0, 0.15) * geo.meniscus_px
            x, y = (float(v) for v in edge[j] + depth * normal)
        else:
            x, y = float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[1], hi[1]))
        if min(x + o_lo[0], y + o_lo[1]) < 0:
            continue
        if x + o_hi[0] > spec.width - 1 or y + o_hi[1] > spec.height - 1:
            continue
        if any(
            cv2.pointPolygonTest(contour, (x + float(px), y + float(py)), True) < margin
            for px, py in outline
        ):
            continue
        if all(math.hypot(x - tx, y - ty) > gap * (place_r + tr) for tx, ty, tr in taken):
            return x, y
    return None


# -- UV fluorescence ----------------------------------------------------------------------------
def uv_image(
    spec: SceneSpec, light: F32, trans: F32, mask: Any, protein: F32, emission: F32
) -> F32:  # fmt: skip
    """The light a UV (tryptophan fluorescence) imager sees: a dark field, a faint glow of the
    plastic and a fainter one more of the drop, seen through everything that absorbs or scatters
    (wall, dust, salt crystals, bubbles: ``trans``, capped at 1, so none of them is bright);
    protein precipitate (``protein``: 0..1, how much it darkened the bright-field layer) glows
    faintly, crystals (``emission``: their faces drawn on black) glow brightly with a soft halo."""
    short = min(spec.width, spec.height)
    ds = detail_scale(short)
    excite = light / np.float32(spec.brightness)  # the UV lamp is as uneven as the white one
    level = np.float32(spec.brightness / 0.82)
    drop = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 1.5 * ds)
    base = 0.035 + 0.05 * drop
    halo = cv2.GaussianBlur(emission, (0, 0), 4.0 * ds)
    glow = base * np.clip(trans, 0.0, 1.0) + 0.45 * protein * drop + 0.8 * emission + 0.1 * halo
    return cast(F32, (excite * level * glow).astype(np.float32))
