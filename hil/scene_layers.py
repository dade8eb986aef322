"""The drawing layers of a rendered drop scene: the well and drop geometry, illumination, and
what a drop can hold besides crystals (skin, precipitate, fibres, oil, cracks, bubbles).

Each layer draws into a float32 transmission layer of the frame (1.0 = clear) from its own random
stream, so layers never shift each other's draws. Used by :func:`hil.scene.render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .scene import SceneSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def detail_scale(short: int) -> float:
    """How many drawn pixels a fine detail sized for a frame with a 960 px short side spans in a
    larger frame (1.0 up to 960 px: smaller frames keep pixel-sized details, and random_spec
    oversamples them), so grain, rims and textures keep their size in um at every frame size."""
    return max(1.0, short / 960.0)


def stream(seed: int, *stream: int) -> np.random.Generator:
    """The random stream ``stream`` of a scene seed: independent of every other stream."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


# -- helpers ---------------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> F32:
    """Zero-mean, unit-sigma noise varying over about ``cell_px`` pixels."""
    gh, gw = max(2, int(h / cell_px) + 3), max(2, int(w / cell_px) + 3)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big -= big.mean()
    return cast(F32, big / max(float(big.std()), 1e-6))


def draw_polyline(layer: F32, pts: F64, value: float, thickness: int, closed: bool = False) -> None:
    """An anti-aliased polyline through float points (1/16 px precision) into ``layer``."""
    q = np.round(pts * 16).astype(np.int32)
    cv2.polylines(layer, [q], closed, float(value), thickness, cv2.LINE_AA, shift=4)


@dataclass
class Geometry:
    """Where the well and the drop lie in the frame, and where the light comes from."""

    well_c: tuple[float, float]
    well_r: float
    drop_c: tuple[float, float]
    drop_poly: F64
    drop_rmin: float
    light_angle: float
    # real-imager geometry (hil/scene_imagers.py); the defaults are the round drop in its well.
    # placement: "disc" (crystals in the disc of drop_rmin around drop_c), "polygon" (anywhere
    # in drop_poly), "meniscus" (mostly along ``free_edge``, the drop's edge away from the walls)
    placement: str = "disc"
    free_edge: F64 | None = None
    meniscus_px: float = 0.0  # width of the shaded meniscus band along ``free_edge``
    droplets: list[F64] = field(default_factory=list)  # every droplet of a chip, the drop first
    channel_angle: float = 0.0  # a chip's channel direction (radians from +x towards +y)


def plan_geometry(spec: SceneSpec) -> Geometry:
    """The well (centre, radius) and an irregular drop outline inside it, from the seed."""
    g = stream(spec.seed, 1)
    w, h = spec.width, spec.height
    short = min(w, h)
    well_c = (w / 2 + g.uniform(-0.03, 0.03) * short, h / 2 + g.uniform(-0.03, 0.03) * short)
    well_r = short * g.uniform(0.44, 0.48) * spec.well_zoom
    r0 = well_r * g.uniform(0.58, 0.72)
    off, off_a = g.uniform(0, 0.1) * well_r, g.uniform(0, 2 * math.pi)
    drop_c = (well_c[0] + off * math.cos(off_a), well_c[1] + off * math.sin(off_a))
    theta = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    radius = np.full_like(theta, r0)
    for k in range(2, 10):
        radius += r0 * g.uniform(0, 0.045) / k**0.8 * np.cos(k * theta + g.uniform(0, 2 * math.pi))
    radius *= min(1.0, (well_r * 0.93 - off) / float(radius.max()))
    poly = np.column_stack([drop_c[0] + radius * np.cos(theta), drop_c[1] + radius * np.sin(theta)])
    angle = g.uniform(0, 2 * math.pi)
    if spec.light_angle_deg is not None:
        angle = math.radians(spec.light_angle_deg)
    return Geometry(well_c, float(well_r), drop_c, poly, float(radius.min()), angle)


# -- layers ------------------------------------------------------------------------------------
def illumination_field(spec: SceneSpec, geo: Geometry) -> F32:
    """Lamp brightness over the frame: a gradient from the light's side and a vignette."""
    w, h = spec.width, spec.height
    sw, sh = max(8, w // 8), max(8, h // 8)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    xs = (xs + 0.5) * (w / sw)
    ys = (ys + 0.5) * (h / sh)
    span = float(max(w, h))
    ux, uy = math.cos(geo.light_angle), math.sin(geo.light_angle)
    s = spec.illumination
    linear = 1.0 + 0.6 * s * (((xs - w / 2) * ux + (ys - h / 2) * uy) / span)
    rho = np.hypot(xs - geo.well_c[0], ys - geo.well_c[1]) / (0.7 * span)
    vignette = 1.0 - 0.9 * s * rho**2
    small = (spec.brightness * linear * vignette).astype(np.float32)
    return cast(F32, cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def draw_well_and_drop(spec: SceneSpec, geo: Geometry, r: np.random.Generator) -> tuple[F32, Any]:
    """Transmission of well and drop (1 = clear) and the drop mask (uint8)."""
    w, h = spec.width, spec.height
    short = min(w, h)
    yy, xx = np.ogrid[0:h, 0:w]
    dx, dy = (xx - geo.well_c[0]).astype(np.float32), (yy - geo.well_c[1]).astype(np.float32)
    if spec.well_shape == "square":  # a square sub-well with rounded corners (half side well_r)
        corner = 0.12 * geo.well_r
        qx = np.maximum(np.abs(dx) - (geo.well_r - corner), 0)
        qy = np.maximum(np.abs(dy) - (geo.well_r - corner), 0)
        inner = np.minimum(np.maximum(np.abs(dx), np.abs(dy)) - (geo.well_r - corner), 0)
        rr = (np.hypot(qx, qy) + inner + (geo.well_r - corner)).astype(np.float32)
    else:
        rr = np.hypot(dx, dy)
    wr, ww = geo.well_r, max(2.0, 0.028 * short)
    knots_x = [0, wr - 2.6 * ww, wr - 2.0 * ww, wr - 1.6 * ww, wr - 0.8 * ww, wr, wr + 0.7 * ww]
    knots_x += [wr + 1.4 * ww, 1e9]
    knots_y = [1.0, 1.0, 1.12, 0.92, 0.45, 0.16, 0.30, 0.52, 0.55]
    if spec.well_shape == "none":  # no well in view (a zoomed drop, a microfluidic chamber)
        knots_y = [1.0] * len(knots_x)
    trans = np.interp(rr, knots_x, knots_y).astype(np.float32)
    outside = rr > wr if spec.well_shape != "none" else np.zeros_like(rr, dtype=bool)
    plastic = smooth_noise(r, h, w, short / 20)
    trans = np.where(outside, trans * (1.0 + 0.06 * plastic), trans).astype(np.float32)

    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(geo.drop_poly * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    dist_in = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    dist_out = cv2.distanceTransform(255 - mask, cv2.DIST_L2, 5)
    m = max(3.0, 0.13 * geo.drop_rmin)
    if spec.drop_edge_soft > 0:  # a broad shaded edge, no sharp line (a real imager's drop)
        m = max(3.0, spec.drop_edge_soft * geo.drop_rmin)
        inside = np.interp(dist_in, [0, 0.3 * m, m, 1e9], [0.55, 0.7, 0.93, 0.94])
    else:
        inside = np.interp(dist_in, [0, 0.12 * m, 0.45 * m, m, 1e9], [0.28, 0.5, 0.82, 0.95, 0.96])
    rim = 1.0 + 0.10 * np.exp(-((dist_out / (1.5 * detail_scale(short))) ** 2))
    factor = np.where(mask > 0, inside, rim).astype(np.float32)
    return cast(F32, trans * factor), mask


def draw_skin(spec: SceneSpec, r: np.random.Generator, mask: Any, layer: F32) -> None:
    """A wrinkled protein skin over the drop: soft folds and a mottled texture."""
    h, w = mask.shape
    short = min(w, h)
    n = smooth_noise(r, h, w, short / 10)
    warp = smooth_noise(r, h, w, short / 40)
    wr = np.cos(2 * math.pi * 2.8 * n + 1.5 * warp)
    lines = np.exp(-(1.0 - wr) / 0.12) * (0.6 + 0.4 * np.tanh(smooth_noise(r, h, w, short / 15)))
    texture = smooth_noise(r, h, w, 3.0 * detail_scale(short))
    soft = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), max(1.0, short / 150))
    layer *= (1.0 - soft * (0.06 + 0.22 * lines + 0.025 * texture)).astype(np.float32)


def draw_precipitate(
    spec: SceneSpec, r: np.random.Generator, mask: Any, geo: Geometry, amount: float, layer: F32
) -> tuple[int, int]:
    """Fine grain and amorphous clouds inside the drop; returns (particles, clouds).

    The clouds come from their own stream (``stream(spec.seed, 5, 1)``): how many grains a drop
    gets depends on its area in pixels, which rounds differently at each frame size, and must not
    move the clouds of the same scene at another resolution."""
    if amount <= 0:
        return 0, 0
    h, w = mask.shape
    short = min(w, h)
    density = smooth_noise(r, h, w, short / 8)
    area = float((mask > 0).sum())
    px = detail_scale(short)
    want = int(amount * area / (30 * px * px))
    xs = r.uniform(0, w - 1, want * 3)
    ys = r.uniform(0, h - 1, want * 3)
    xi, yi = xs.astype(np.int64), ys.astype(np.int64)
    keep = (mask[yi, xi] > 0) & (r.uniform(0, 1, len(xs)) < 0.5 + 0.3 * density[yi, xi])
    xi, yi = xi[keep][:want], yi[keep][:want]
    grains = np.zeros((h, w), np.float32)
    # a grain spread over px^2 times more pixels keeps its peak darkness
    np.add.at(grains, (yi, xi), (r.uniform(0.6, 1.6, len(xi)) * (px * px)).astype(np.float32))
    grains = cv2.GaussianBlur(grains, (0, 0), 0.7 * px)
    layer *= np.exp(-1.8 * grains).astype(np.float32)
    # amorphous clouds: soft brown-grey patches where a slow noise field is high
    r = stream(spec.seed, 5, 1)
    cloud = smooth_noise(r, h, w, short / 12)
    level = np.clip((cloud - (1.3 - 1.1 * amount)) / 0.8, 0, 1) * (mask > 0)
    clouds = 0
    if level.max() > 0:
        fine = smooth_noise(r, h, w, 2.5 * px)
        layer *= (1.0 - level * (0.35 + 0.12 * fine)).astype(np.float32)
        small = cv2.resize((level > 0.3).astype(np.uint8), (max(1, w // 4), max(1, h // 4)))
        clouds = int(cv2.connectedComponents(small)[0]) - 1
    return len(xi), clouds


def draw_fibres(r: np.random.Generator, geo: Geometry, count: int, layer: F32, short: int) -> None:
    """``count`` long thin dark curves (dust, lint) across the well."""
    for _ in range(count):
        a = r.uniform(0, 2 * math.pi)
        d = geo.well_r * math.sqrt(r.uniform(0, 0.8))
        start = np.array([geo.well_c[0] + d * math.cos(a), geo.well_c[1] + d * math.sin(a)])
        length = geo.well_r * r.uniform(0.3, 0.9)
        heading = r.uniform(0, 2 * math.pi)
        bend = r.uniform(-1.5, 1.5)
        t = np.linspace(0, 1, 80)[:, None]
        angle = heading + bend * t + 0.3 * np.sin(6 * t * r.uniform(0.5, 2) + r.uniform(0, 6))
        steps = np.column_stack([np.cos(angle[:, 0]), np.sin(angle[:, 0])]) * (length / 80)
        pts = start + np.cumsum(steps, axis=0)
        thick = 1 if short < 1500 else 2
        draw_polyline(layer, pts, r.uniform(0.35, 0.6), thick)


def draw_oil(r: np.random.Generator, geo: Geometry, layer: F32, short: int) -> int:
    """Round oil droplets of a phase-separated drop; returns how many were drawn."""
    n = int(r.integers(15, 60))
    for _ in range(n):
        rad = max(1.5, short * r.uniform(0.004, 0.035))
        d = (geo.drop_rmin - rad) * math.sqrt(r.uniform(0, 0.95))
        a = r.uniform(0, 2 * math.pi)
        c = np.array([geo.drop_c[0] + d * math.cos(a), geo.drop_c[1] + d * math.sin(a)])
        q = tuple(int(v) for v in np.round(c * 16))
        cv2.circle(layer, q, int(rad * 16), 1.12, -1, cv2.LINE_AA, shift=4)
        cv2.circle(layer, q, int(rad * 16), 0.5, max(1, int(rad / 8)), cv2.LINE_AA, shift=4)
    return n


def draw_cracks(r: np.random.Generator, geo: Geometry, mask: Any, layer: F32, short: int) -> int:
    """The crack lines of a dried drop; returns how many were drawn."""
    h, w = mask.shape
    mottle = smooth_noise(r, h, w, short / 25)
    layer *= np.where(mask > 0, 0.82 + 0.06 * mottle, 1.0).astype(np.float32)
    n = int(r.integers(12, 30))
    for _ in range(n):
        d = geo.drop_rmin * math.sqrt(r.uniform(0, 0.9))
        a = r.uniform(0, 2 * math.pi)
        p = np.array([geo.drop_c[0] + d * math.cos(a), geo.drop_c[1] + d * math.sin(a)])
        heading = r.uniform(0, 2 * math.pi)
        pts = [p.copy()]
        for _ in range(int(r.integers(4, 12))):
            heading += r.uniform(-0.6, 0.6)
            step = geo.drop_rmin * r.uniform(0.03, 0.09)
            p = p + step * np.array([math.cos(heading), math.sin(heading)])
            pts.append(p.copy())
        draw_polyline(layer, np.array(pts), 0.3, round(detail_scale(short)))
    return n


def draw_bubbles(
    r: np.random.Generator, geo: Geometry, count: int, avoid: list[tuple[float, float, float]],
    layer: F32, short: int,
) -> int:  # fmt: skip
    """Up to ``count`` air bubbles in the drop, clear of ``avoid`` (x, y, r): a dark rim, a
    bright centre and a faint halo outside; returns how many were placed."""
    h, w = layer.shape
    placed = 0
    for _ in range(count):
        rad = max(4.0, short * r.uniform(0.02, 0.065))
        for _try in range(40):
            d = max(0.0, geo.drop_rmin - rad) * math.sqrt(r.uniform(0, 1))
            a = r.uniform(0, 2 * math.pi)
            cx, cy = geo.drop_c[0] + d * math.cos(a), geo.drop_c[1] + d * math.sin(a)
            if all(math.hypot(cx - x, cy - y) > rad + rr + 2 for x, y, rr in avoid):
                break
        else:
            continue
        avoid.append((cx, cy, rad))
        x0, x1 = max(0, int(cx - rad - 3)), min(w, int(cx + rad + 4))
        y0, y1 = max(0, int(cy - rad - 3)), min(h, int(cy + rad + 4))
        if x1 <= x0 or y1 <= y0:
            continue  # (a drop whose centre lies off the frame) out of sight
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dist = np.hypot(xx - cx, yy - cy)
        hx, hy = cx - 0.25 * rad, cy - 0.25 * rad
        inside = dist <= rad
        rim = np.exp(-(((rad - dist) / (0.2 * rad)) ** 2))
        spot = np.exp(-((np.hypot(xx - hx, yy - hy) / (0.16 * rad)) ** 2))
        halo = np.exp(-(((dist - rad) / (1.2 * detail_scale(short))) ** 2))
        f = np.where(inside, 1.04 - 0.85 * rim + 0.45 * spot, 1.0 + 0.15 * halo)
        layer[y0:y1, x0:x1] *= f.astype(np.float32)
        placed += 1
    return placed
