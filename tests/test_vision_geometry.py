"""Vision on real-imager geometry (issue 13): a class that follows its evidence, reasons, square
and clipped wells, no well, broad shaded drop edges; and the real frames in devdata."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiboauto.hil import scene as S
from kiboauto.vision import inspect, load_image
from kiboauto.vision.crystals import find_blobs, plausible_body
from kiboauto.vision.prep import build_pyramid, dark_field_lut
from kiboauto.vision.types import Inspection

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "devdata" / "real_drops"


def _truth_area_frac(img: Any, truth: S.SceneTruth) -> float:
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(np.array(truth.drop_polygon_px)).astype(np.int32)], 1)
    return float(m.sum()) / (h * w)


def _consistent(r: Inspection) -> None:
    assert r.reasons, "reasons must never be empty"
    if r.drop_class == "crystals" and not r.crystals:
        assert any("crystal" in s and "accepted" in s for s in r.reasons[1:]), r.reasons
    assert r.well_found == (r.well is not None)
    assert r.drop_found == (r.drop is not None)
    assert 0.0 < r.drop_area_fraction <= 1.0
    d = r.to_dict()
    for key in ("well_found", "drop_found", "drop_area_fraction", "reasons"):
        assert key in d


@pytest.mark.req("KA-VIS-009")
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 50_000),
    shape=st.sampled_from(S.WELL_SHAPES),
    zoom=st.sampled_from([1.0, 1.0, 1.4, 1.8]),
    soft=st.sampled_from([0.0, 0.0, 0.35]),
)
def test_class_follows_evidence_and_reasons_always(
    seed: int, shape: str, zoom: float, soft: float
) -> None:
    spec = replace(
        S.random_spec(seed, width=640, height=480),
        well_shape=shape,
        well_zoom=zoom,
        drop_edge_soft=soft,
    )
    img, _ = S.render(spec)
    r = inspect(img, um_per_px=spec.um_per_px)
    _consistent(r)
    if r.drop_class == "crystals":
        assert r.crystals  # the rules never report crystals without one
    if not r.well_found:
        assert "no well found: inspected the whole field" in r.reasons


@pytest.mark.req("KA-VIS-009")
def test_renderer_defaults_unchanged() -> None:
    spec = S.random_spec(3)
    a, _ = S.render(spec)
    b, _ = S.render(replace(spec, well_shape="round", well_zoom=1.0, drop_edge_soft=0.0))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        replace(spec, well_shape="hexagon")


@pytest.mark.req("KA-VIS-009")
@pytest.mark.parametrize("seed", range(4))
def test_square_well_found_and_drop_area(seed: int) -> None:
    spec = replace(S.random_spec(seed), well_shape="square")
    img, truth = S.render(spec)
    r = inspect(img, um_per_px=spec.um_per_px)
    _consistent(r)
    assert r.well is not None and r.well.shape == "square" and not r.well.clipped
    assert r.drop_found
    # measured: 1.08-1.13 x the truth on seeds 0..7 (1.25-1.86 before the floor grew back over
    # the edge filters' reach: the outline took in a ring of floor)
    ratio = r.drop_area_fraction / _truth_area_frac(img, truth)
    assert 0.95 <= ratio <= 1.25, ratio


@pytest.mark.req("KA-VIS-009")
@pytest.mark.parametrize("seed", [0, 1, 3, 4, 5, 7])
def test_a_drop_reaching_the_frame_edge_is_not_taken_for_the_floor(seed: int) -> None:
    """Zoomed views (no well found): the drop reaches the frame edge, so the edge-free part
    touching the frame that holds the drop's crystals, precipitate or skin is the drop, not the
    dry floor: the drop is found, or (no floor left to tell it by) the whole field is inspected.
    Measured 0.76-1.39 x the truth on these seeds (seed 0: the whole field); 0.24-0.38 on seeds 0
    and 5 when the largest such part was taken for the floor and a leftover piece for the drop.
    Clear drops (seeds 2 and 6) hold nothing to tell them by and are still found at 0.27-0.36."""
    spec = replace(S.random_spec(seed), well_zoom=1.7)
    img, truth = S.render(spec)
    assert truth.drop_class != "clear"
    r = inspect(img, um_per_px=spec.um_per_px)
    _consistent(r)
    if not r.drop_found:
        assert "no drop edge found: inspected the whole field" in " ".join(r.reasons), r.reasons
    ratio = r.drop_area_fraction / _truth_area_frac(img, truth)
    assert 0.7 <= ratio <= 1.5, ratio


@pytest.mark.req("KA-VIS-009")
@pytest.mark.parametrize("seed", range(4))
def test_no_well_inspects_whole_field(seed: int) -> None:
    spec = replace(S.random_spec(seed), well_shape="none", well_zoom=1.6)
    img, _ = S.render(spec)
    r = inspect(img, um_per_px=spec.um_per_px)
    _consistent(r)
    assert not r.well_found
    assert "no well found: inspected the whole field" in r.reasons
    assert r.drop_class != "other" or any("class model: other" in s for s in r.reasons)


@pytest.mark.req("KA-VIS-009")
def test_broad_shaded_drop_edge() -> None:
    ratios = []
    for seed in range(8):
        spec = replace(S.random_spec(seed), drop_edge_soft=0.35)
        img, truth = S.render(spec)
        r = inspect(img, um_per_px=spec.um_per_px)
        _consistent(r)
        assert r.well is not None and r.well.shape == "round"
        ratios.append(r.drop_area_fraction / _truth_area_frac(img, truth))
    # measured: 6 of 8 within 1.05-1.33 x the truth (1.27-1.44 before the floor grew back over
    # the edge filters' reach); 2 take a bubble's outline for the drop
    assert sum(0.9 <= x <= 1.6 for x in ratios) >= 6, ratios


# Where each real drop lies, read by eye off the frame (x0, y0, x1, y1 as fractions of its width
# and height, a little generous): the drop with its meniscus, not the dry well floor.
REAL_DROPS: dict[str, tuple[float, float, float, float]] = {
    "rockimager_xchemchimp_97wo_01A_1.jpg": (0.24, 0.22, 0.71, 0.69),
    "vmxi_crystalmatch_A01_1.jpg": (0.0, 0.0, 0.49, 0.68),
    "vmxi_crystalmatch_A01_2.jpg": (0.0, 0.0, 0.49, 0.68),
    "vmxi_crystalmatch_A03.jpg": (0.0, 0.0, 0.49, 0.69),
    "vmxi_crystalmatch_A10_1.jpg": (0.0, 0.0, 0.45, 0.69),
    "vmxi_crystalmatch_A10_2.jpg": (0.0, 0.0, 0.46, 0.69),
}
SIZES = [None, (1280, 960), (640, 480)]  # each frame at its own size and scaled to the two


def _real(name: str, size: tuple[int, int] | None = None) -> Inspection:
    img = load_image(REAL / name)
    if size is not None:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return inspect(img)


# (frame, size) pairs still not called crystals with three crystals: none since 2026-12-07.
# A01_1, A01_2 and A03 (9 cases) were until then: their large facetted crystals grow into the
# meniscus crust or are cut by the search border, so they were one object with the crust,
# counted and never measured. The lens band inside the meniscus (a quadratic background left it
# as one bright object) joined even more to it. Now the background follows the light and such a
# crystal comes back whole by its closed sharp outline (crystals._closed_bodies). Kept as the
# place to list a regression; strict: a pass of a listed case fails the test.
NOT_YET_CRYSTALS: set[tuple[str, str]] = set()


def _size_id(size: tuple[int, int] | None) -> str:
    return "native" if size is None else f"{size[0]}x{size[1]}"


def _real_cases() -> list[Any]:
    cases = []
    for name in sorted(REAL_DROPS):
        for size in SIZES:
            marks = []
            if (name, _size_id(size)) in NOT_YET_CRYSTALS:
                marks.append(pytest.mark.xfail(strict=True, reason="crystals missed (see above)"))
            cases.append(pytest.param(name, size, marks=marks, id=f"{name}-{_size_id(size)}"))
    return cases


def _check_real_geometry(name: str, r: Inspection) -> None:
    """The drop is found where it is and every crystal reported lies inside it."""
    _consistent(r)
    w, h = r.image_size
    x0, y0, x1, y1 = REAL_DROPS[name]
    for c in r.crystals:
        cx, cy = c.centroid_px
        assert x0 * w <= cx <= x1 * w and y0 * h <= cy <= y1 * h, (c.id, c.centroid_px)
    assert r.drop_found
    if name.startswith("vmxi"):
        assert r.well is not None and r.well.shape == "square"
        # the drop (with its meniscus) fills 18-22 % of these frames by eye
        assert 0.13 < r.drop_area_fraction < 0.30, r.drop_area_fraction
    else:
        assert r.well is not None and r.well.shape == "round"
        assert 0.10 < r.drop_area_fraction < 0.30, r.drop_area_fraction


@pytest.mark.req("KA-VIS-009")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real imager frames not present at {REAL}")
@pytest.mark.parametrize(("name", "size"), _real_cases())
def test_real_drops_called_crystals_with_crystals_in_the_drop(
    name: str, size: tuple[int, int] | None
) -> None:
    """Every real drop holds crystals: it is called ``crystals``, with at least three crystals,
    every one of them inside the drop (the eye-read box), at every frame size."""
    r = _real(name, size)
    _check_real_geometry(name, r)
    assert r.drop_class == "crystals", (r.drop_class, r.reasons)
    assert len(r.crystals) >= 3, r.reasons


@pytest.mark.req("KA-VIS-009")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real imager frames not present at {REAL}")
@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("name", sorted(REAL_DROPS))
def test_real_drops_outline_and_crystal_positions(name: str, size: tuple[int, int] | None) -> None:
    """Whatever the class: the drop outline and every crystal reported are where the drop is."""
    _check_real_geometry(name, _real(name, size))


@pytest.mark.req("KA-VIS-009")
def test_a_crystal_glued_to_the_border_is_found_as_the_facet_it_encloses() -> None:
    """A crystal outline joined to a band along the searched area's border (a crystal on the
    meniscus) is one object touching the border: its enclosed inside comes back as a candidate
    marked ``enclosed``; large enclosed areas (the drop itself) do not."""
    h, w = 200, 240
    obj = np.zeros((h, w), np.uint8)
    obj[:, :14] = 1  # the meniscus band along the left border
    cv2.rectangle(obj, (14, 60), (74, 110), 1, 3)  # a crystal outline joined to the band
    cv2.rectangle(obj, (120, 20), (230, 190), 1, 3)  # a large loop: not a facet (too big)
    obj[100:104, 74:120] = 1  # joined to the crystal by a bar
    border = np.zeros_like(obj)
    border[:, 0] = border[0, :] = border[-1, :] = border[:, -1] = 1
    flat = np.full((h, w), 128, np.uint8)
    flat[obj > 0] = 40
    grad = np.asarray(cv2.morphologyEx(flat, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
    args = (obj, border, flat, grad, None, 40.0)
    blobs_off, counted_off = find_blobs(*args, free_enclosed=False)
    assert blobs_off == [] and counted_off.edge == 1
    blobs, _ = find_blobs(*args, free_enclosed=True, max_enclosed=0.1 * h * w)
    assert len(blobs) == 1 and blobs[0].enclosed
    x, y, bw, bh = blobs[0].bbox
    assert 12 <= x <= 18 and 56 <= y <= 62 and 58 <= bw <= 66 and 48 <= bh <= 56, blobs[0].bbox
    assert blobs[0].vector()[-1] == 1.0 and not blobs[0].body


def _crust_scene() -> tuple[tuple[Any, ...], dict[str, Any]]:
    """An object map like a real drop's edge: a crust band along the left border with, grown
    into it, a crystal outline (a thick dark loop) with one face shaded (dark, so object pixels)
    and one clear; below it a second loop, of crust, around a small object; and the find_blobs
    arguments."""
    h, w = 200, 240
    obj = np.zeros((h, w), np.uint8)
    flat = np.full((h, w), 128, np.uint8)
    face = np.array([[15, 71], [15, 109], [109, 109]], np.int32)  # the shaded lower-left face
    cv2.fillPoly(obj, [face], 1)
    cv2.fillPoly(flat, [face], 95)
    obj[:, :14] = 1  # the crust along the left border
    cv2.rectangle(obj, (14, 70), (110, 110), 1, 2)  # the crystal (a lath), joined to the crust
    cv2.rectangle(obj, (14, 140), (60, 180), 1, 2)  # a loop of crust around a free object
    obj[156:165, 31:40] = 1  # (not touching the loop: a free object of its own)
    border = np.zeros_like(obj)
    border[:, 0] = border[0, :] = border[-1, :] = border[:, -1] = 1
    flat[(obj > 0) & (flat == 128)] = 40
    flat = np.asarray(cv2.GaussianBlur(flat, (3, 3), 0))  # a real outline is a little soft
    grad = np.asarray(cv2.morphologyEx(flat, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
    mask = np.ones_like(obj)
    return (obj, border, flat, grad, None, 10.0), {"mask": mask, "max_body": 0.12 * h * w}


def test_a_crystal_grown_into_the_crust_is_found_whole_by_its_closed_outline() -> None:
    """A large crystal grown into the meniscus crust is one object with the crust; with one
    face shaded (object pixels), only its clear face used to come back, as an enclosed facet.
    Its closed sharp outline now gives it back whole, as one ``body`` candidate with its
    outline; the strip of crust along the border and a loop around a free object (measured on
    its own) are not bodies."""
    args, kw = _crust_scene()
    facets, _ = find_blobs(*args, max_enclosed=0.1 * 200 * 240)
    blobs, counted = find_blobs(*args, max_enclosed=0.1 * 200 * 240, loop_edge=0.2, **kw)
    bodies = [b for b in blobs if b.body]
    assert len(bodies) == 1, [(b.bbox, b.area) for b in bodies]
    (b,) = bodies
    x, y, bw, bh = b.bbox
    assert 12 <= x <= 18 and 66 <= y <= 72 and 92 <= bw <= 102 and 38 <= bh <= 46, b.bbox
    assert not b.enclosed and b.vector()[-1] == 0.0  # scored as a free object
    assert plausible_body(b)  # sharp, dark, not round
    # no facet of that crystal is left beside it; the loop around the free object gave nothing
    assert not any(b2.enclosed and b2.centroid[1] < 125 for b2 in blobs)
    (facet,) = [b2 for b2 in facets if b2.enclosed]
    assert facet.area < 0.7 * b.area  # (the old way: the clear face only)
    assert not any(b2.centroid[1] > 135 for b2 in blobs)
    assert counted.edge >= 1  # the crust itself stays counted, not measured
    # without the mask (the old call) nothing is a body
    plain, _ = find_blobs(*args, max_enclosed=0.1 * 200 * 240)
    assert not any(b2.body for b2 in plain)


def test_light_following_background_flattens_a_lens_band_but_not_a_crystal() -> None:
    """A real drop brightens in a band inside its meniscus (a lens) and a quadratic background
    cannot follow it: the band then reads as one large bright object. The background that
    follows the light flattens the band to the background level, and a dark crystal stays dark."""
    from kiboauto.vision.illumination import follow_local_light

    h, w = 120, 160
    xx = np.mgrid[0:h, 0:w][1].astype(np.float32)
    # the bright band at x ~ 120: half again as bright as the drop, some 30 px wide (a real
    # band, on the coarse copy the background is worked on, is 30-50 px wide)
    light = 100.0 + 50.0 * np.exp(-(((xx - 120.0) / 18.0) ** 2))
    frame = light.copy()
    frame[40:70, 40:70] = 30.0  # a dark crystal, 30 px across
    coarse = np.clip(frame, 0, 255).astype(np.uint8)
    mask = np.ones((h, w), np.uint8)
    smooth = np.full((h, w), 100.0, np.float32)  # (what a low-order fit leaves: the mean level)
    bg = follow_local_light(coarse, mask, smooth)
    flat = coarse.astype(np.float32) * 128.0 / bg
    band = flat[:, 115:126]
    assert abs(float(np.median(band)) - 128.0) < 10.0, float(np.median(band))
    before = coarse[:, 115:126].astype(np.float32) * 128.0 / smooth[:, 115:126]
    assert float(np.median(before)) > 128.0 * 1.3  # (the band the quadratic leaves)
    assert float(flat[50:60, 50:60].mean()) < 0.5 * 128.0  # the crystal is not flattened away
    assert abs(float(np.median(flat[:, 5:30])) - 128.0) < 5.0  # plain drop stays at 128


def _on(c: Any, t: Any, grow: float = 4.0) -> bool:
    """Whether found crystal ``c``'s centroid lies in true crystal ``t``'s box grown ``grow`` px."""
    x, y, bw, bh = t.bbox_px
    cx, cy = c.centroid_px
    return x - grow <= cx <= x + bw + grow and y - grow <= cy <= y + bh + grow


@pytest.mark.req("KA-VIS-009")
def test_uv_dark_field_crystals_are_found_as_glowing_objects() -> None:
    """UV (a dark field, glowing crystals): the frame is recognised as a dark field and most
    crystals are found where they are (measured 27 of 35 on these ten drops, none elsewhere; 8
    of the ten called crystals)."""
    n_truth = n_found = n_wrong = n_crystal_class = 0
    for seed in range(100_000, 100_040, 4):
        spec = replace(S.random_spec(seed, drop_class="crystals"), light="uv", colour=False)
        img, truth = S.render(spec)
        r = inspect(img, um_per_px=spec.um_per_px)
        _consistent(r)
        assert any("dark field" in s for s in r.reasons), r.reasons
        n_crystal_class += r.drop_class == "crystals"
        n_truth += len(truth.crystals)
        n_found += sum(any(_on(c, t) for c in r.crystals) for t in truth.crystals)
        n_wrong += sum(not any(_on(c, t) for t in truth.crystals) for c in r.crystals)
    assert n_found >= 0.75 * n_truth, (n_found, n_truth)
    assert n_wrong <= 2, n_wrong
    assert n_crystal_class >= 7, n_crystal_class


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 200_000), colour=st.booleans(), shape=st.sampled_from(S.WELL_SHAPES))
def test_bright_field_frames_are_never_taken_for_a_dark_field(
    seed: int, colour: bool, shape: str
) -> None:
    spec = replace(S.random_spec(seed, width=320, height=240), colour=colour, well_shape=shape)
    img, _ = S.render(spec)
    coarse = build_pyramid(img, 480, 240).coarse
    assert dark_field_lut(coarse) is None, float(np.median(coarse))
