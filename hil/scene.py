"""Rendered images of crystallisation drops, with exact ground truth (docs/hil-camera.md).

:func:`render` turns a :class:`SceneSpec` into an image and a :class:`SceneTruth`. The image is a
bright-field view of one well: uneven illumination, the dark ring of the well wall, a drop with an
irregular edge and a dark meniscus, and what the drop holds: crystals (convex polyhedra drawn facet
by facet), precipitate (fine grain and amorphous clouds), a wrinkled skin, bubbles (dark rims,
bright centres), fibres (long thin curves), oil droplets (phase separation) or the cracks of a
dried drop. Then optical blur, sensor noise, quantisation to 8 or 16 bits and optional JPEG
artefacts. Everything is drawn from the seed through independent random streams, so the same spec
gives the same image bit for bit, and a growth cell can change crystal sizes without moving
anything else.

Coordinates: x to the right, y down, pixel centres at integers (OpenCV's drawing convention).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .scene_cells import render_cells
from .scene_crystals import (
    HABITS,
    build_crystal,
    draw_member,
    feret,
    hull,
    line_in_um,
    polygon_area_centroid,
    union_outline,
)
from .scene_imagers import (
    draw_channel_and_droplets,
    draw_wall_well_and_drop,
    droplet_habit,
    place_crystal,
    plan_droplets,
    plan_wall_drop,
    uv_image,
)
from .scene_layers import (
    Geometry,
    detail_scale,
    draw_bubbles,
    draw_cracks,
    draw_fibres,
    draw_oil,
    draw_precipitate,
    draw_skin,
    draw_well_and_drop,
    illumination_field,
    plan_geometry,
    stream,
)
from .scene_spec import (
    DROP_CLASSES,
    FIBRE_TANGLE,
    LIGHTS,
    OTHER_KINDS,
    WELL_SHAPES,
    CrystalTruth,
    DropClass,
    SceneSpec,
    SceneTruth,
)

__all__ = [
    "DROP_CLASSES",
    "HABITS",
    "LIGHTS",
    "OTHER_KINDS",
    "WELL_SHAPES",
    "CrystalTruth",
    "DropClass",
    "SceneSpec",
    "SceneTruth",
    "random_spec",
    "render",
    "render_cells",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


# -- resolving the spec ---------------------------------------------------------------------------
@dataclass
class _Content:
    n_crystals: int
    precipitate: float
    skin: bool
    bubbles: int
    fibres: int
    other: str | None


def _content(spec: SceneSpec) -> _Content:
    r = stream(spec.seed, 11)
    draws = r.uniform(0, 1, 8)
    counts = r.integers(0, 1000, 8)
    cls = spec.drop_class
    other = spec.other
    if cls == "other" and other is None:
        other = OTHER_KINDS[int(counts[0]) % len(OTHER_KINDS)]
    if cls == "crystals":
        n, p = 1 + int(counts[1]) % 6, (0.05 + 0.25 * draws[0]) if draws[1] < 0.3 else 0.0
        skin, bubbles, fibres = bool(draws[2] < 0.1), int(counts[2]) % 3, int(counts[3]) % 2
    elif cls == "precipitate":
        n, p = 0, 0.3 + 0.7 * draws[0]
        skin, bubbles, fibres = bool(draws[2] < 0.15), int(counts[2]) % 3, int(counts[3]) % 2
    elif cls == "clear":
        n, p, skin, bubbles, fibres = 0, 0.0, False, int(counts[2]) % 4, int(counts[3]) % 3
    else:
        n, p, bubbles = 0, 0.0, int(counts[2]) % 3
        skin = other == "skin"
        fibres = FIBRE_TANGLE + int(counts[3]) % 8 if other == "fibres" else int(counts[3]) % 2
    if cls == "crystals" and spec.drop_meets_wall:
        # VMXi-like drops: many crystals, a crust of them along the meniscus (own stream: 111)
        n = int(stream(spec.seed, 111).integers(VMXI_CRYSTALS[0], VMXI_CRYSTALS[1] + 1))
    if spec.crystal_sizes_um is not None:
        n = len(spec.crystal_sizes_um)
    elif spec.crystals is not None:
        n = int(spec.crystals)
    return _Content(
        n_crystals=max(0, n),
        precipitate=float(spec.precipitate if spec.precipitate is not None else p),
        skin=bool(spec.skin if spec.skin is not None else skin),
        bubbles=max(0, int(spec.bubbles if spec.bubbles is not None else bubbles)),
        fibres=max(0, int(spec.fibres if spec.fibres is not None else fibres)),
        other=other if other in ("dried", "phase", "skin", "fibres") else None,
    )


# -- crystals ----------------------------------------------------------------------------------
VMXI_CRYSTALS = (6, 25)
"""How many crystals a VMXi-like drop (``drop_meets_wall``) of class ``crystals`` holds."""
VMXI_SIZE_FRACTION = (0.03, 0.15)
"""Their lengths as fractions of the drop's width (log-uniform), unless ``crystal_sizes_um``."""


@dataclass
class _Crystal:
    index: int
    habit: str
    centre: tuple[float, float]
    place_r: float
    size_um: float
    members: list[Any] = field(default_factory=list)
    body: float = 0.9
    birefringence: float = 0.006
    phase: float = 0.0


def _plan_crystals(spec: SceneSpec, geo: Geometry, n: int) -> list[_Crystal]:
    """Positions, habits and shapes; fixed by the seed whatever the sizes (so growth is smooth)."""
    habits_given = spec.crystal_habits
    cap_px = 0.9 * geo.drop_rmin  # no crystal longer than this: it must fit in the drop
    out: list[_Crystal] = []
    taken: list[tuple[float, float, float]] = []
    drop_w = float(np.ptp(geo.drop_poly, axis=0).mean())
    gap = 0.8 if spec.drop_meets_wall else 1.05  # VMXi-like: crystals may touch and overlap
    for i in range(n):
        cr = stream(spec.seed, 101, i)
        habit = str(spec.habits[int(cr.integers(0, len(spec.habits)))])
        if spec.well_shape == "droplets":
            habit = droplet_habit(spec, i, habit)
        if spec.drop_meets_wall:
            habit = _vmxi_habit(spec, i, habit)
        if habits_given is not None and i < len(habits_given):
            habit = habits_given[i]
        drawn = float(cr.uniform(*spec.size_range_um))
        size = drawn
        if spec.drop_meets_wall:  # lengths scale with the drop, as in VMXi frames (stream 112)
            lo, hi = (math.log(f) for f in VMXI_SIZE_FRACTION)
            frac = math.exp(float(stream(spec.seed, 112, i).uniform(lo, hi)))
            size = frac * drop_w * spec.um_per_px
        if spec.crystal_sizes_um is not None:
            size = float(spec.crystal_sizes_um[i])
        room_um = size
        if spec.crystal_max_um is not None and i < len(spec.crystal_max_um):
            room_um = max(size, float(spec.crystal_max_um[i]))
        place_r = 0.72 * min(room_um / spec.um_per_px, cap_px)
        members = build_crystal(habit, cr)
        body = float(cr.uniform(0.82, 1.0))
        biref = float(cr.uniform(0.003, 0.012))
        phase = float(cr.uniform(0, math.pi))
        spot = _spot(spec, geo, cr, place_r, taken, members, gap)
        if spot is None:
            continue  # no room left in the drop: this crystal does not exist
        taken.append((spot[0], spot[1], place_r))
        out.append(_Crystal(i, habit, spot, place_r, size, members, body, biref, phase))
    return out


def _vmxi_habit(spec: SceneSpec, index: int, habit: str) -> str:
    """Crystals in VMXi-like drops are mostly blocks, as in real VMXi frames: a needle or cluster
    drawn from ``spec.habits`` becomes a plate or a cube seven times in ten (own stream: 113)."""
    if habit in ("plate", "cube"):
        return habit
    r = stream(spec.seed, 113, index)
    return ("plate", "cube")[int(r.integers(0, 2))] if r.uniform() < 0.7 else habit


def _spot(
    spec: SceneSpec, geo: Geometry, cr: np.random.Generator, place_r: float,
    taken: list[tuple[float, float, float]], members: list[Any], gap: float = 1.05,
) -> tuple[float, float] | None:  # fmt: skip
    """A free place for a crystal in the drop (60 tries), or None: its disc of ``place_r`` in the
    drop's disc, or (other geometries) its outline at the size of its room in the drop."""
    if geo.placement != "disc":
        unit = np.vstack([m.vertices[:, :2] for m in members])
        outline = hull(unit * (place_r / 0.72))
        return place_crystal(spec, geo, cr, place_r, outline, taken, gap, gap < 1.0)
    room = max(0.0, 0.97 * geo.drop_rmin - place_r)
    for _try in range(60):
        d = room * math.sqrt(cr.uniform(0, 1))
        a = cr.uniform(0, 2 * math.pi)
        x, y = geo.drop_c[0] + d * math.cos(a), geo.drop_c[1] + d * math.sin(a)
        if all(math.hypot(x - tx, y - ty) > 1.05 * (place_r + tr) for tx, ty, tr in taken):
            return x, y
    return None


def _plan_salt(spec: SceneSpec, geo: Geometry, crystals: list[_Crystal]) -> list[_Crystal]:
    """``spec.salt_crystals`` salt crystals (cubes and square plates, 20-80 um, own streams
    ``(seed, 102, i)``), clear of the protein crystals and of each other."""
    taken = [(c.centre[0], c.centre[1], c.place_r) for c in crystals]
    out: list[_Crystal] = []
    cap_px = 0.9 * geo.drop_rmin
    for i in range(spec.salt_crystals):
        sr = stream(spec.seed, 102, i)
        habit = "cube" if sr.uniform() < 0.7 else "plate"
        size = float(sr.uniform(20.0, 80.0))
        place_r = 0.72 * min(size / spec.um_per_px, cap_px)
        members = build_crystal(habit, sr)
        body = float(sr.uniform(0.82, 1.0))
        spot = _spot(spec, geo, sr, place_r, taken, members)
        if spot is None:
            continue
        taken.append((spot[0], spot[1], place_r))
        out.append(_Crystal(i, habit, spot, place_r, size, members, body, 0.0, 0.0))
    return out


def _interference_bgr(retardation_nm: float) -> tuple[float, float, float]:
    """A rough Michel-Levy colour: transmission of blue, green and red between crossed polars."""
    return tuple(  # type: ignore[return-value]
        float(math.sin(math.pi * retardation_nm / lam) ** 2) for lam in (450.0, 550.0, 650.0)
    )


def _draw_crystals(
    spec: SceneSpec,
    crystals: list[_Crystal],
    layer: F32,
    colour: F32 | None,
    min_length_px: float,
    transparent: bool = False,
    bold: bool = False,
) -> list[CrystalTruth]:
    """Draw the crystals into ``layer`` and return their truth. ``transparent`` (VMXi-like
    drops): clear crystals (``draw_member``) with a fainter outline, laid over what is under
    them (multiplied) instead of replacing it; ``bold`` (with it: protein crystals in VMXi-like
    drops): bright faces, a wide, strongly dark outline and dark facet edges, as in real VMXi
    frames."""
    truths: list[CrystalTruth] = []
    target = np.ones_like(layer) if transparent and crystals else layer
    soft, bold_dark, shade = 0.0, 0.1, 1.0
    if bold and crystals:
        # real VMXi crystals range from crisp to soft-edged (focus, refraction in the drop's
        # curved surface), their outlines wide and dark: each scene draws its crystals' softness
        # (stream 114); the outline widens with it, so its core stays as dark
        r114 = stream(spec.seed, 114)
        soft = float(r114.uniform(0.0, 2.0)) * detail_scale(min(spec.width, spec.height))
        # ... and their outlines from near black to about 0.45 of the drop's level
        bold_dark = float(r114.uniform(0.1, 0.35))
        # ... and their faces from nearly the drop's level to strongly shaded
        shade = float(r114.uniform(1.0, 3.5))
    for c in crystals:
        # the projected outline lies within 0.71 x length of the centre: place_r keeps it apart
        length_px = min(c.size_um / spec.um_per_px, c.place_r / 0.72)
        if length_px < min_length_px:
            continue  # a nucleus below two (final) pixels is not visible: not drawn, no truth
        # outline and facet edges keep their width x contrast in um on frames above 960 px
        # (short side), as fine details do
        scale = detail_scale(min(spec.width, spec.height))
        ref_px = max(1, round(length_px / scale / 60))
        if bold:
            ref_px = max(2, round(length_px / scale / 30))
        line_px, line_gain = line_in_um(ref_px, scale)
        if soft > 0.3:
            line_px += round(2.0 * soft)
        ridge = line_in_um(max(1, ref_px // 2), scale)
        hulls: list[F64] = []
        members = sorted(c.members, key=lambda m: float(m.vertices[:, 2].mean()))
        for m in members:
            v = m.vertices * length_px
            v = v + np.array([c.centre[0], c.centre[1], 0.0])
            draw_member(target, v, m.faces, c.body, line_px, ridge, transparent, bold, shade)
            hulls.append(hull(v[:, :2]))
        outline = hulls[0] if len(hulls) == 1 else union_outline(hulls)
        q = np.round(outline * 16).astype(np.int32)
        dark = 0.18 * c.body if not transparent else 0.3 + 0.2 * c.body
        if bold:
            dark = bold_dark + 0.1 * c.body
        if line_gain != 1.0:  # a wider line, as much darker in all than the reference line
            dark = 1.0 - (1.0 - dark) * line_gain
        cv2.polylines(target, [q], True, dark, line_px, cv2.LINE_AA, shift=4)
        if colour is not None:
            thickness_um = length_px * spec.um_per_px * (0.15 if c.habit == "plate" else 0.4)
            tint = _interference_bgr(thickness_um * c.birefringence * 1000.0)
            strength = 0.35 + 0.5 * math.sin(2 * c.phase) ** 2
            bgr = tuple(float(1.0 + strength * (2.2 * t - 0.8)) for t in tint)
            cv2.fillPoly(colour, [q], bgr, cv2.LINE_AA, shift=4)
        area, centroid = polygon_area_centroid(outline)
        longest, width, angle = feret(outline)
        x0, y0 = (math.floor(v) for v in outline.min(axis=0))
        x1, y1 = (math.ceil(v) for v in outline.max(axis=0))
        truths.append(
            CrystalTruth(
                id=c.index + 1,
                habit=c.habit,
                centroid_px=centroid,
                bbox_px=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
                area_px=area,
                longest_um=longest * spec.um_per_px,
                aspect=longest / width if width > 0 else float("inf"),
                angle_deg=angle,
                polygon_px=[(float(x), float(y)) for x, y in outline],
                size_um=length_px * spec.um_per_px,
            )
        )
    if target is not layer:
        if soft > 0.3:
            target = np.asarray(cv2.GaussianBlur(target, (0, 0), soft), dtype=np.float32)
        layer *= target
    return truths


# -- the renderer ----------------------------------------------------------------------------------
def render(spec: SceneSpec) -> tuple[npt.NDArray[Any], SceneTruth]:
    """The image (uint8/uint16, grey ``(H, W)`` or BGR ``(H, W, 3)``) and its exact truth.

    With ``spec.oversample`` k > 1 the optical image is drawn k times finer (k W x k H pixels of
    ``um_per_px / k``, blur ``k blur_px``) and each k x k block is averaged into one pixel, as a
    sensor with larger pixels integrates light behind the same optics; the sensor noise and the
    JPEG round trip then act on the final pixels. The truth is in final pixels.
    """
    k = spec.oversample
    if k == 1:
        optical, truth = _optics(spec, min_length_px=2.0)
    else:
        fine = replace(
            spec,
            width=spec.width * k,
            height=spec.height * k,
            um_per_px=spec.um_per_px / k,
            blur_px=spec.blur_px * k,
            oversample=1,
        )
        optical, truth = _optics(fine, min_length_px=2.0 * k)
        optical = np.asarray(
            cv2.resize(optical, (spec.width, spec.height), interpolation=cv2.INTER_AREA),
            dtype=np.float32,
        )
        truth = _coarser_truth(truth, k, spec.um_per_px)
    return _sensor(spec, optical), truth


def _optics(spec: SceneSpec, min_length_px: float) -> tuple[F32, SceneTruth]:
    """The light reaching the sensor (1.0 = the lamp's full level; grey, or BGR when ``colour``)
    and the truth, both in the pixels of ``spec``."""
    w, h = spec.width, spec.height
    short = min(w, h)
    key = _static_key(spec)
    cached = _STATIC.get(key) if key is not None else None
    if key is not None and cached is not None:
        # the same cell again (a growth camera): only the crystals differ from last time
        _STATIC.move_to_end(key)
        c_content, c_geo, c_light, c_trans, c_distractors, c_particles, c_clouds, c_uv = cached
        planned = _plan_crystals(spec, c_geo, c_content.n_crystals)
        return _finish(
            spec,
            c_geo,
            c_content,
            c_light,
            c_trans.copy(),
            planned,
            _plan_salt(spec, c_geo, planned),
            dict(c_distractors),
            c_particles,
            c_clouds,
            min_length_px,
            c_uv,
        )
    content = _content(spec)
    geo = plan_geometry(spec)
    if spec.drop_meets_wall:
        geo = plan_wall_drop(spec, geo)
    elif spec.well_shape == "droplets":
        geo = plan_droplets(spec, geo)
    light = illumination_field(spec, geo)
    if spec.drop_meets_wall:
        trans, mask = draw_wall_well_and_drop(spec, geo)
    elif spec.well_shape == "droplets":
        trans, mask = draw_channel_and_droplets(spec, geo)
    else:
        trans, mask = draw_well_and_drop(spec, geo, stream(spec.seed, 2))
    distractors: dict[str, int] = {
        "bubbles": 0, "fibres": 0, "skin": 0, "precipitate_particles": 0,
        "precipitate_clouds": 0, "oil_droplets": 0, "cracks": 0,
    }  # fmt: skip
    if content.other == "dried":
        distractors["cracks"] = draw_cracks(stream(spec.seed, 3), geo, mask, trans, short)
    if content.skin:
        draw_skin(spec, stream(spec.seed, 4), mask, trans)
        distractors["skin"] = 1
    before = trans.copy() if spec.light == "uv" else None
    particles, clouds = draw_precipitate(
        spec, stream(spec.seed, 5), mask, geo, content.precipitate, trans
    )
    uv: tuple[Any, F32] | None = None
    if before is not None:  # how much protein (precipitate) there is, for its faint UV glow
        protein = np.clip(1.0 - trans / np.maximum(before, 1e-6), 0.0, 1.0).astype(np.float32)
        uv = (mask, protein)
    distractors["precipitate_particles"], distractors["precipitate_clouds"] = particles, clouds
    if content.other == "phase":
        distractors["oil_droplets"] = draw_oil(stream(spec.seed, 6), geo, trans, short)
    draw_fibres(stream(spec.seed, 7), geo, content.fibres, trans, short)
    distractors["fibres"] = content.fibres
    planned = _plan_crystals(spec, geo, content.n_crystals)
    salt = _plan_salt(spec, geo, planned)
    avoid = [(c.centre[0], c.centre[1], c.place_r) for c in (*planned, *salt)]
    distractors["bubbles"] = draw_bubbles(
        stream(spec.seed, 8), geo, content.bubbles, avoid, trans, short
    )
    if spec.well_shape == "droplets":
        distractors["droplets"] = len(geo.droplets)
    if key is not None:
        _STATIC[key] = (content, geo, light, trans.copy(), dict(distractors), particles, clouds, uv)
        while len(_STATIC) > _STATIC_SIZE:
            _STATIC.popitem(last=False)
    return _finish(
        spec, geo, content, light, trans, planned, salt, distractors, particles, clouds,
        min_length_px, uv,
    )  # fmt: skip


def _static_key(spec: SceneSpec) -> SceneSpec | None:
    """What fixes everything but the crystals' sizes and the sensor noise: crystals keep their
    places whatever their size when ``crystal_max_um`` reserves their room (growth cells)."""
    if spec.crystal_max_um is None:
        return None
    return replace(spec, crystal_sizes_um=None, noise_seed=None)


_STATIC_SIZE = 8
_STATIC: OrderedDict[SceneSpec, tuple[Any, ...]] = OrderedDict()
"""The static layers of the last few scenes (a growth camera renders the same cells again)."""


def _finish(
    spec: SceneSpec,
    geo: Geometry,
    content: _Content,
    light: F32,
    trans: F32,
    planned: list[_Crystal],
    salt: list[_Crystal],
    distractors: dict[str, int],
    particles: int,
    clouds: int,
    min_length_px: float,
    uv: tuple[Any, F32] | None,
) -> tuple[F32, SceneTruth]:
    w, h = spec.width, spec.height
    colour = np.ones((h, w, 3), np.float32) if spec.colour else None
    # salt is isotropic (cubic): no interference colour between crossed polarisers
    salt_truths = _draw_crystals(spec, salt, trans, None, min_length_px, spec.drop_meets_wall)
    if spec.salt_crystals:
        distractors["salt_crystals"] = len(salt_truths)
    if uv is not None:  # crystals glow: drawn on black, not into the transmission
        emission = np.zeros_like(trans)
        truths = _draw_crystals(spec, planned, emission, None, min_length_px)
        img = uv_image(spec, light, trans, uv[0], uv[1], emission)
    else:
        wall = spec.drop_meets_wall
        truths = _draw_crystals(spec, planned, trans, colour, min_length_px, wall, wall)
        img = light * trans
    if spec.blur_px > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), spec.blur_px), dtype=np.float32)
    if colour is not None:
        if spec.blur_px > 0:
            colour = np.asarray(cv2.GaussianBlur(colour, (0, 0), spec.blur_px), np.float32)
        white = np.array([0.88, 0.97, 1.0], np.float32)  # a warm lamp, seen in BGR
        img = img[..., None] * white * colour

    drop_class: DropClass
    odd = content.skin or content.other in ("dried", "phase") or content.fibres >= FIBRE_TANGLE
    if truths:
        drop_class = "crystals"
    elif particles > 0 or clouds > 0:
        drop_class = "precipitate"
    elif odd or salt_truths:  # salt crystals alone: not protein, not precipitate, not clear
        drop_class = "other"
    else:
        drop_class = "clear"
    other = None
    if drop_class == "other":
        other = (content.other or ("skin" if content.skin else "fibres")) if odd else "salt"
    truth = SceneTruth(
        drop_class=drop_class,
        crystals=truths,
        um_per_px=spec.um_per_px,
        well_center_px=(float(geo.well_c[0]), float(geo.well_c[1])),
        well_radius_px=geo.well_r,
        drop_polygon_px=[(float(x), float(y)) for x, y in geo.drop_poly],
        distractors=distractors,
        other=other,
        salt_crystals=salt_truths,
        droplets_px=[[(float(x), float(y)) for x, y in p] for p in geo.droplets],
    )
    return img, truth


def _sensor(spec: SceneSpec, optical: F32) -> npt.NDArray[Any]:
    """Sensor noise (scaled with the square root of the signal), quantisation, JPEG."""
    full = 255.0 if spec.bit_depth == 8 else 65535.0
    img = optical * np.float32(full)
    if spec.noise > 0:
        nr = stream(spec.seed, 9, 0 if spec.noise_seed is None else int(spec.noise_seed) + 1)
        sigma = np.float32(spec.noise * full / 255.0)
        shot = np.sqrt(np.clip(img / np.float32(full), 0, None)) * np.float32(0.7) + np.float32(0.3)
        img = img + nr.standard_normal(img.shape, dtype=np.float32) * sigma * shot
    dtype = np.uint8 if spec.bit_depth == 8 else np.uint16
    out: npt.NDArray[Any] = np.clip(img + 0.5, 0, full).astype(dtype)
    if spec.jpeg_quality is not None and spec.bit_depth == 8:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
        if ok:
            out = np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), dtype=dtype)
    return out


def _coarser_truth(truth: SceneTruth, k: int, um_per_px: float) -> SceneTruth:
    """A truth drawn on a k times finer grid, in the pixels of the final image (pixel centres at
    integers on both grids: x -> (x + 0.5) / k - 0.5)."""

    def pt(x: float, y: float) -> tuple[float, float]:
        return ((x + 0.5) / k - 0.5, (y + 0.5) / k - 0.5)

    def crystal(c: CrystalTruth) -> CrystalTruth:
        poly = [pt(x, y) for x, y in c.polygon_px]
        arr = np.asarray(poly)
        x0, y0 = (math.floor(v) for v in arr.min(axis=0))
        x1, y1 = (math.ceil(v) for v in arr.max(axis=0))
        return replace(
            c,
            centroid_px=pt(*c.centroid_px),
            bbox_px=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
            area_px=c.area_px / (k * k),
            polygon_px=poly,
        )

    return replace(
        truth,
        crystals=[crystal(c) for c in truth.crystals],
        salt_crystals=[crystal(c) for c in truth.salt_crystals],
        droplets_px=[[pt(x, y) for x, y in p] for p in truth.droplets_px],
        um_per_px=um_per_px,
        well_center_px=pt(*truth.well_center_px),
        well_radius_px=truth.well_radius_px / k,
        drop_polygon_px=[pt(x, y) for x, y in truth.drop_polygon_px],
    )


_REFERENCE_SHORT = 960  # random_spec draws its optics for a frame this high (1280x960)


def random_spec(
    seed: int, *, drop_class: DropClass | None = None, width: int = 1280, height: int = 960
) -> SceneSpec:
    """A varied, realistic spec drawn from ``seed`` (classes cycle with the seed when None).

    Every frame size shows the same field of view, as cameras of different resolution behind the
    same well optics would: the scale and the optical blur are drawn for a frame with a short
    side of 960 px and converted to this size (um/px times 960 / short side, blur in pixels times
    short side / 960). Frames with a shorter side than that are oversampled (``oversample``), so
    their pixels integrate detail finer than themselves. At 1280x960 the spec is as drawn.
    """
    r = stream(seed, 0xE7A1)
    cls: DropClass = drop_class if drop_class is not None else DROP_CLASSES[int(seed) % 4]
    habits = tuple(h for h in HABITS if r.uniform() < 0.6) or (HABITS[int(r.integers(0, 4))],)
    lo = float(r.uniform(20, 80))
    spec = SceneSpec(
        width=width,
        height=height,
        um_per_px=float(r.uniform(1.5, 3.0)),
        seed=int(seed),
        drop_class=cls,
        habits=habits,
        size_range_um=(lo, lo + float(r.uniform(50, 250))),
        illumination=float(r.uniform(0.05, 0.45)),
        brightness=float(r.uniform(0.7, 0.9)),
        blur_px=float(r.uniform(0.5, 1.8)),
        noise=float(r.uniform(1.0, 4.0)),
        jpeg_quality=None if r.uniform() < 0.5 else int(r.integers(70, 96)),
        colour=bool(r.uniform() < 0.3),
    )
    short = min(width, height)
    if short != _REFERENCE_SHORT:
        scale = _REFERENCE_SHORT / short  # reference pixels per pixel of this frame
        spec = replace(
            spec,
            um_per_px=spec.um_per_px * scale,
            blur_px=spec.blur_px / scale,
            oversample=max(1, min(8, math.ceil(scale - 1e-9))),
        )
    return spec
