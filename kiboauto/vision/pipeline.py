"""`inspect`: one drop image in, an :class:`Inspection` out (well, drop, class, crystals)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from .calibration import calibrate, curve_scenes, geometry_group
from .classify import decide
from .crystals import Blob, find_blobs, plausible_body, straightness
from .drop import find_drop
from .geometry import drop_in_region, well_region
from .illumination import background_grid, fit_background, flatten, follow_local_light
from .io import check_image
from .models import CRYSTAL_MLP, mlp_positive
from .pixel_maps import crystal_maps
from .prep import build_pyramid, double, halve
from .types import CrystalMeasure, DropInfo, Inspection, InspectParams, WellInfo
from .well import find_well, well_reference

__all__ = ["inspect"]

_DEFAULTS = InspectParams()
# the drop mask found on the small copy takes in the (3x3 widened) meniscus line, which is about
# 2 coarse pixels wider there than a line found on the coarse copy: the edge band grows by that
_MENISCUS_C = 2
# a drop outline this small (of the well's inside) is likely a bubble: look for a broad edge too
_SMALL_DROP = 0.12
# an area enclosed by an object on the search border larger than this (of the searched area) is
# drop, not a crystal facet (see find_blobs)
_MAX_ENCLOSED = 0.02
# a crystal grown into the meniscus crust or cut by the search border is found by its outline of
# 3x3 gradients above this (relative to the background), up to this share of the searched area
_LOOP_EDGE = 0.2
_MAX_BODY = 0.12
_PAD_C = 3  # coarse pixels around the inner mask searched at working resolution (see below)


def _assumed_drop(
    ch: int, cw: int, well_c: tuple[float, float, float, float] | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    """When no drop edge is found: the well's inside (else the frame less a 2 px border) as
    (mask over its bounding box, outline), like :func:`find_drop`'s result."""
    mask_c = np.zeros((ch, cw), np.uint8)
    if well_c is not None:
        cx, cy, _, r_in = well_c
        cv2.circle(mask_c, (round(cx), round(cy)), max(round(r_in - 2), 2), 1, -1)
    else:
        mask_c[2:-2, 2:-2] = 1
    cnts, _ = cv2.findContours(mask_c, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = np.asarray(cnts[0], dtype=np.int32)
    x0, y0, bw, bh = cv2.boundingRect(contour)
    return mask_c[y0 : y0 + bh, x0 : x0 + bw], contour


def _region_drop(
    field_s: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]] | None:
    """When no drop edge is found in a square or clipped well (or the whole field): that region
    less a 2 px border, as (mask over its bounding box, outline) in the small copy's pixels."""
    inner = np.asarray(cv2.erode(field_s, np.ones((5, 5), np.uint8)), dtype=np.uint8)
    cnts, _ = cv2.findContours(inner, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not cnts:
        return None
    best = max(cnts, key=cv2.contourArea)
    bx, by, bw, bh = cv2.boundingRect(best)
    mask = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(mask, [best], -1, 1, -1, offset=(-bx, -by))
    return mask, np.asarray(best, dtype=np.int32)


def _geometry_reasons(well: WellInfo | None, drop_found: bool, area_frac: float) -> list[str]:
    """What was found of the well and the drop, and what was inspected instead, in words."""
    out: list[str] = []
    if well is None:
        out.append("no well found: inspected the whole field")
    else:
        clipped = ", clipped by the frame" if well.clipped else ""
        out.append(f"{well.shape} well found{clipped}")
    pct = f"{100 * area_frac:.0f} % of the frame"
    if drop_found:
        out.append(f"drop edge found: the drop covers {pct}")
    else:
        where = "the whole field" if well is None else "the well's inside"
        out.append(f"no drop edge found: inspected {where} ({pct})")
    return out


def inspect(
    image: npt.NDArray[np.generic], *, um_per_px: float = 1.0, params: InspectParams | None = None
) -> Inspection:
    return analyse(image, um_per_px=um_per_px, params=params)[0]


def analyse(
    image: npt.NDArray[np.generic], *, um_per_px: float = 1.0, params: InspectParams | None = None
) -> tuple[Inspection, list[tuple[Blob, tuple[float, float]]]]:
    """:func:`inspect` plus every candidate object (not touching the drop edge) with its centroid
    in full-resolution pixels: what the crystal and drop classifiers were tuned on."""
    """Inspect one image of a growth cell: find the well and the drop, flatten the light, find and
    measure the crystals and classify the drop (``crystals``, ``precipitate``, ``clear``,
    ``other``).

    ``image``: grey or BGR(A), uint8 or uint16 (see :func:`kiboauto.vision.load_image`).
    ``um_per_px``: the optical scale, for lengths and areas in µm. All pixel positions in the
    result are full-resolution pixels of ``image``.
    """
    if not um_per_px > 0:
        raise ValueError("um_per_px must be > 0")
    p = params or _DEFAULTS
    img = check_image(image)
    pyr = build_pyramid(img, p.work_short_px, p.coarse_short_px)
    cs, ws = pyr.coarse_scale, pyr.work_scale
    f = cs // ws  # working pixels per coarse pixel
    ch, cw = pyr.coarse.shape

    # the well and the drop on a copy half the coarse size, back in coarse pixels
    small = np.asarray(halve(pyr.coarse), dtype=np.uint8)
    smooth, ref = well_reference(small)
    well_s = find_well(smooth, ref)
    region = well_region(smooth, ref)
    assumed_s: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]] | None = None
    if well_s is not None and (region is None or region.shape == "round"):
        # a round, whole well: the path the rendered scenes (and the models) know
        region = None
        found = find_drop(small, well_s, ref)
        r_disc = max(well_s[3] - 1.5, 3.0)
        if found is None or float(found[0].sum()) < _SMALL_DROP * math.pi * r_disc * r_disc:
            # no edge line, or only a small outline (a bubble): a broad shaded drop edge?
            disc = np.zeros_like(small)
            cv2.circle(disc, (round(well_s[0]), round(well_s[1])), round(r_disc), 1, -1)
            broad = drop_in_region(small, smooth, disc, ref)
            if broad is not None and (
                found is None or float(broad[0].sum()) > float(found[0].sum())
            ):
                found = broad
    else:
        # a square or clipped well, or none (then the whole field is the well)
        well_s = None
        if region is not None:
            field_s = region.mask
        else:
            field_s = np.zeros_like(small)
            field_s[2:-2, 2:-2] = 1
        found = drop_in_region(small, smooth, field_s, ref)
        if found is None:
            assumed_s = _region_drop(field_s)
    # a real imager's frame (square, clipped or no well: a drop meeting the wall, its crust, the
    # lens band inside its meniscus) gets the light-following background and the crystals freed
    # whole from the crust; a round whole well, the renderer's case, keeps the plain path (and
    # its time: both cost about 2-3 ms a frame); a dark field neither (its glow round crystals is
    # no lens band, and its amplified noise closes loops everywhere)
    real_frame = well_s is None and not pyr.dark_field
    well_c = None
    if well_s is not None:
        tx, ty, tr, tri = well_s
        well_c = ((tx + 0.5) * 2 - 0.5, (ty + 0.5) * 2 - 0.5, tr * 2, tri * 2)
    features: dict[str, float] = {
        "well_found": 0.0 if well_c is None and region is None else 1.0,
        "drop_found": 0.0 if found is None else 1.0,
    }
    if found is not None or assumed_s is not None:
        mask_s, contour_s = found if found is not None else assumed_s  # type: ignore[misc]
        mroi_c = double(mask_s)
        xs0, ys0, bws, bhs = cv2.boundingRect(contour_s)
        x0, y0, bw, bh = 2 * xs0, 2 * ys0, 2 * bws, 2 * bhs
    else:
        mroi_c, contour_c = _assumed_drop(ch, cw, well_c)
        x0, y0, bw, bh = cv2.boundingRect(contour_c)
    # the drop ROI, in coarse and working pixels
    x1, y1 = min(x0 + bw, cw), min(y0 + bh, ch)
    mroi_c = mroi_c[: y1 - y0, : x1 - x0]
    roi_c = pyr.coarse[y0:y1, x0:x1]
    drop_area_c = float(cv2.countNonZero(mroi_c))  # the mask is 0/1
    eq_r_c = math.sqrt(max(drop_area_c, 1.0) / math.pi)
    margin_c = max(1, round(p.edge_margin_frac * eq_r_c)) + (
        _MENISCUS_C if found is not None else 0
    )
    k = np.ones((2 * margin_c + 1, 2 * margin_c + 1), np.uint8)
    inner_c = np.asarray(cv2.erode(mroi_c, k), dtype=np.uint8)
    bg_coef = fit_background(roi_c, inner_c)

    # the crystal search works at working resolution on the inner mask's box (plus a margin wider
    # than the reach of its filters, so the crop changes nothing inside the mask)
    ix, iy, iw, ih = cv2.boundingRect(inner_c)
    if iw == 0:  # (a drop too small to have an inside)
        ix, iy, iw, ih = 0, 0, x1 - x0, y1 - y0
    cx0, cy0 = max(ix - _PAD_C, 0), max(iy - _PAD_C, 0)
    cx1, cy1 = min(ix + iw + _PAD_C, x1 - x0), min(iy + ih + _PAD_C, y1 - y0)
    inner_c = inner_c[cy0:cy1, cx0:cx1]
    wx0, wy0 = (x0 + cx0) * f, (y0 + cy0) * f
    work_h, work_w = pyr.work_shape
    wx1, wy1 = min((x0 + cx1) * f, work_w), min((y0 + cy1) * f, work_h)
    roi_w = pyr.work_roi(wy0, wy1, wx0, wx1)
    rh, rw = roi_w.shape
    bg = background_grid(bg_coef, roi_c.shape, (cx0, cy0, cx1, cy1))
    if real_frame:
        win_h, win_w = inner_c.shape
        smooth_bg = np.asarray(
            cv2.resize(bg, (win_w, win_h), interpolation=cv2.INTER_LINEAR), dtype=np.float32
        )
        bg = follow_local_light(roi_c[cy0:cy1, cx0:cx1], inner_c, smooth_bg)
    flat = flatten(roi_w, bg)
    if (rw, rh) == (2 * inner_c.shape[1], 2 * inner_c.shape[0]):
        inner_w = double(inner_c)
    else:
        inner_w = np.asarray(
            cv2.resize(inner_c, (rw, rh), interpolation=cv2.INTER_NEAREST), dtype=np.uint8
        )

    min_area_w = p.min_crystal_px / (ws * ws)
    maps = crystal_maps(flat, inner_w, p.crystal_contrast, p.edge_contrast)
    blobs, counted = find_blobs(
        maps.objects,
        maps.border,
        flat,
        maps.gradient,
        maps.fine,
        min_area_w,
        small_area=4 * min_area_w,
        max_enclosed=_MAX_ENCLOSED * float(maps.n_mask),
        mask=inner_w,
        loop_edge=_LOOP_EDGE if real_frame else 0.0,
        max_body=_MAX_BODY * float(maps.n_mask),
    )
    blobs = [b for b in blobs if plausible_body(b)]
    # texture and thin lines are measured on the drop away from objects
    n_away = maps.n_away
    tex = maps.n_away_grainy / n_away if n_away else 0.0
    fine = maps.sum_away_fine / n_away / 128.0 if n_away else 0.0
    lines = maps.n_away_lines / n_away if n_away else 0.0

    crystals: list[CrystalMeasure] = []
    accepted: list[float] = []
    best_score = 0.0
    drop_area_w = max(drop_area_c * f * f, 1.0)
    n_round, n_thin = 0, counted.thin
    n_small, n_edge = counted.specks + counted.edge_small, counted.edge
    rejected_area = counted.area
    gran: list[float] = []
    candidates: list[tuple[Blob, tuple[float, float]]] = []
    inner_blobs = [b for b in blobs if b.measured]
    probs: list[float] = []
    if inner_blobs and CRYSTAL_MLP:  # (the model is empty only while it is being retrained)
        probs = mlp_positive(CRYSTAL_MLP, [b.vector() for b in inner_blobs]).tolist()
    else:
        probs = [0.0] * len(inner_blobs)
    scores = {id(b): float(q) for b, q in zip(inner_blobs, probs, strict=True)}
    sum_score = sum(scores.values())
    for b in sorted(blobs, key=lambda b: (b.centroid[1], b.centroid[0])):
        if b.measured:
            full = ((b.centroid[0] + wx0 + 0.5) * ws - 0.5, (b.centroid[1] + wy0 + 0.5) * ws - 0.5)
            candidates.append((b, full))
        if b.circularity > 0.8 and b.aspect < 1.35:
            n_round += 1
        elif b.solidity < 0.5 or b.aspect > 8:
            n_thin += 1
        if b.area < 4 * min_area_w:
            n_small += 1
        if scores.get(id(b), 0.0) < p.min_crystal_score:
            rejected_area += b.area
            continue
        best_score = max(best_score, scores[id(b)])
        accepted.append(scores[id(b)])
        gran.append(b.granularity)
        bx, by, bw_, bh_ = b.bbox
        area_px = b.area * ws * ws
        crystals.append(
            CrystalMeasure(
                id=len(crystals) + 1,
                centroid_px=(
                    (b.centroid[0] + wx0 + 0.5) * ws - 0.5,
                    (b.centroid[1] + wy0 + 0.5) * ws - 0.5,
                ),
                bbox_px=((bx + wx0) * ws, (by + wy0) * ws, bw_ * ws, bh_ * ws),
                area_px=area_px,
                area_um2=area_px * um_per_px * um_per_px,
                length_um=b.length * ws * um_per_px,
                aspect=b.aspect,
                straightness=straightness(b.contour, 2.0 * math.sqrt(b.area / math.pi)),
            )
        )
    inner_n = max(float(maps.n_mask), 1.0)
    dark = float(maps.n_dark_objects)
    features.update(
        {
            "n_crystals": float(len(crystals)),
            "n_blobs": float(len(blobs) + counted.specks + counted.edge),
            "n_round": float(n_round),
            "n_thin": float(n_thin),
            "n_small": float(n_small),
            "n_edge": float(n_edge),
            "best_crystal_score": max(scores.values(), default=0.0),
            "sum_crystal_score": sum_score,
            "crystal_granularity": max(gran, default=0.0),
            "crystal_area_frac": sum(b_.area_px for b_ in crystals) / (drop_area_w * ws * ws),
            "rejected_area_frac": rejected_area / drop_area_w,
            "object_frac": float(maps.n_objects) / inner_n,
            "dark_frac": dark / inner_n,
            "texture": tex,
            "fine_contrast": fine,
            "line_frac": lines,
            "drop_area_frac": drop_area_c / float(cw * ch),
            # frame pixels averaged per working pixel (log2: 0 at 640x480, 1 at 1280x960, 2 at
            # 2560x1920): the sensor noise left in the texture measures depends on it
            "binning_log2": math.log2(ws),
            # a dark field (UV) was inverted: its texture and contrasts are amplified sensor noise
            "dark_field": 1.0 if pyr.dark_field else 0.0,
        }
    )
    drop_class, confidence, class_reasons = decide(features, accepted, len(inner_blobs))

    well = None
    if well_c is not None:
        cx, cy, r, _ = well_c
        well = WellInfo(((cx + 0.5) * cs - 0.5, (cy + 0.5) * cs - 0.5), r * cs)
    elif region is not None:
        ss = 2 * cs  # full-resolution pixels per pixel of the small copy
        (gx, gy, gr), (bx_, by_, bw_s, bh_s) = region.circle, region.bbox
        well = WellInfo(
            ((gx + 0.5) * ss - 0.5, (gy + 0.5) * ss - 0.5),
            gr * ss,
            shape=region.shape,
            clipped=region.clipped,
            bbox_px=(bx_ * ss, by_ * ss, bw_s * ss, bh_s * ss),
        )
    drop = None
    if found is not None:
        ss = 2 * cs  # full-resolution pixels per pixel of the copy the drop was found on
        m = cv2.moments(contour_s)
        cen = (
            (m["m10"] / m["m00"], m["m01"] / m["m00"])
            if m["m00"] > 0
            else (xs0 + bws / 2, ys0 + bhs / 2)
        )
        pts = contour_s.reshape(-1, 2) * ss + ss // 2
        drop = DropInfo(
            bbox_px=(x0 * cs, y0 * cs, bw * cs, bh * cs),
            area_px=drop_area_c * cs * cs,
            centroid_px=((cen[0] + 0.5) * ss - 0.5, (cen[1] + 0.5) * ss - 0.5),
            contour_px=tuple(zip(*pts.T.tolist(), strict=True)),
        )
    area_frac = drop_area_c / float(cw * ch)
    # the confidence as a frequency: calibrated per geometry group on held-apart rendered scenes
    group = geometry_group(well, pyr.dark_field)
    features["raw_confidence"] = confidence
    calibrated = calibrate(confidence, group)
    if calibrated is not None:
        class_reasons.append(
            f"confidence {calibrated:.2f}: the raw {confidence:.2f} calibrated on "
            f"{curve_scenes(group)} held-apart rendered scenes ({group.replace('_', ' ')})"
        )
        confidence = calibrated
    reasons = class_reasons + _geometry_reasons(well, drop is not None, area_frac)
    if pyr.dark_field:
        reasons.append(
            "dark field (UV or fluorescence): levels inverted, so glowing crystals read as dark"
        )
    result = Inspection(
        drop_class=drop_class,
        confidence=confidence,
        crystals=crystals,
        well=well,
        drop=drop,
        features=features,
        image_size=pyr.full_size,
        um_per_px=float(um_per_px),
        well_found=well is not None,
        drop_found=drop is not None,
        drop_area_fraction=area_frac,
        reasons=reasons,
    )
    return result, candidates
