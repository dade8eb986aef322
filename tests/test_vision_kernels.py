"""The vision core's compiled routines give the same bytes as the OpenCV formulation they replace.

``opencv_maps`` and ``opencv_appearance`` below are how the crystal stage made its maps and
measured its candidates before these were compiled (about 25 OpenCV calls per frame, and seven
per candidate): they are the specification of ``kiboauto.vision.pixel_maps.crystal_maps`` and
``kiboauto.vision.appearance.appearance``. The compiled routines are compared with them, and the
colour halving with ``cv2.resize``, on rendered drops and on random images of every small size
(where border rules bite).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kiboauto.hil import scene as S
from kiboauto.vision import crystals, inspect, pipeline
from kiboauto.vision.appearance import appearance
from kiboauto.vision.colour import halve_bgr, halves_bgr
from kiboauto.vision.pixel_maps import CrystalMaps, crystal_maps
from kiboauto.vision.prep import halve

K3 = np.ones((3, 3), np.uint8)
K5 = np.ones((5, 5), np.uint8)
U8 = np.ndarray[Any, np.dtype[np.uint8]]


def opencv_maps(flat: U8, mask: U8, contrast: float, edge: float) -> CrystalMaps:
    """The crystal stage's maps and counts made with OpenCV, one operation per call."""
    # 3x3 gradient (max - min) and black-hat (closing - level); fine contrast |level - 5x5 mean|
    hi = cv2.dilate(flat, K3)
    grad = cv2.subtract(hi, cv2.erode(flat, K3))
    hat = cv2.subtract(cv2.erode(hi, K3), flat)
    fine = cv2.absdiff(flat, cv2.blur(flat, (5, 5)))
    # objects: off the background by the contrast, or strongly sharp; weakly sharp next to those
    _, weak = cv2.threshold(grad, math.floor(128.0 * edge), 1, cv2.THRESH_BINARY)
    _, strong = cv2.threshold(grad, math.floor(256.0 * edge), 1, cv2.THRESH_BINARY)
    dev = np.abs(flat.astype(np.int16) - 128).astype(np.uint8)
    _, off = cv2.threshold(dev, math.floor(128.0 * contrast), 1, cv2.THRESH_BINARY)
    core = cv2.bitwise_or(off, strong)
    fringe = cv2.bitwise_and(weak, cv2.dilate(core, K3))
    obj = cv2.bitwise_and(cv2.bitwise_or(core, fringe), mask)
    obj = cv2.morphologyEx(obj, cv2.MORPH_CLOSE, K3)
    border = cv2.subtract(mask, cv2.erode(mask, K3, borderValue=0))
    # the drop away from objects, and what lies there
    away = cv2.subtract(mask, cv2.dilate(obj, K5))
    masked = cv2.multiply(fine, away)
    _, grainy = cv2.threshold(masked, 14, 1, cv2.THRESH_BINARY)
    _, line = cv2.threshold(hat, 5, 1, cv2.THRESH_BINARY)
    _, below = cv2.threshold(flat, 127, 1, cv2.THRESH_BINARY_INV)
    return CrystalMaps(
        objects=obj,
        border=border,
        gradient=grad,
        fine=fine,
        n_mask=cv2.countNonZero(mask),
        n_objects=cv2.countNonZero(obj),
        n_dark_objects=cv2.countNonZero(cv2.bitwise_and(obj, below)),
        n_away=cv2.countNonZero(away),
        n_away_grainy=cv2.countNonZero(grainy),
        sum_away_fine=int(cv2.sumElems(masked)[0]),
        n_away_lines=cv2.countNonZero(cv2.bitwise_and(line, away)),
    )


Shape = tuple[np.ndarray[Any, np.dtype[np.int32]], tuple[int, int, int, int]]


def opencv_appearance(
    shapes: list[Shape], flat: U8, grad: U8, fine: U8 | None
) -> tuple[list[float], ...]:
    """Per outline, in its own box (grown by 2 px where the image allows): the filled outline,
    its 5x5 erosion and rim, then OpenCV's masked statistics over them, all / 128."""
    pol, edge, gran, spread, depth = [], [], [], [], []
    height, width = flat.shape
    for c, (x, y, w, h) in shapes:
        g = 2 if min(x, y) >= 2 and x + w + 2 <= width and y + h + 2 <= height else 0
        sub = np.zeros((h + 2 * g, w + 2 * g), np.uint8)
        cv2.drawContours(sub, [c], -1, 1, -1, offset=(g - x, g - y))
        inner = cv2.erode(sub, K5) if g else cv2.erode(sub, K5, borderValue=0)
        rim = cv2.subtract(sub, inner)
        rows, cols = slice(y - g, y + h + g), slice(x - g, x + w + g)
        box = flat[rows, cols]
        mean, std = cv2.meanStdDev(box, mask=sub)
        pol.append((float(mean[0, 0]) - 128.0) / 128.0)
        spread.append(float(std[0, 0]) / 128.0)
        depth.append((128.0 - cv2.minMaxLoc(box, sub)[0]) / 128.0)
        edge.append(cv2.mean(grad[rows, cols], rim)[0] / 128.0)
        gran.append(0.0 if fine is None else cv2.mean(fine[rows, cols], inner)[0] / 128.0)
    return pol, edge, gran, spread, depth


def assert_same(got: CrystalMaps, want: CrystalMaps) -> None:
    for name in ("objects", "border", "gradient", "fine"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == np.uint8 and a.shape == b.shape, name
        diff = np.argwhere(a != b)
        assert diff.size == 0, f"{name} differs at {len(diff)} pixels, first at {diff[0]}"
    counts = [f for f in CrystalMaps.__dataclass_fields__ if f.startswith(("n_", "sum_"))]
    assert {f: getattr(got, f) for f in counts} == {f: getattr(want, f) for f in counts}


Measured = tuple[list[Shape], U8, U8, U8 | None]


def drop_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[tuple[U8, U8, float, float]], list[Measured]]:
    """What the pipeline hands to crystal_maps (flattened drop, inner mask, contrast, edge) and to
    appearance (outlines, flattened drop, gradient, fine contrast) on rendered drops of every
    class, grey and colour, at three frame sizes."""
    seen: list[tuple[U8, U8, float, float]] = []
    measured: list[Measured] = []

    def recording(flat: U8, mask: U8, contrast: float, edge: float) -> CrystalMaps:
        seen.append((flat.copy(), mask.copy(), contrast, edge))
        return crystal_maps(flat, mask, contrast, edge)

    def recording_appearance(
        shapes: list[Shape], flat: U8, grad: U8, fine: U8 | None
    ) -> tuple[list[float], ...]:
        measured.append((shapes, flat.copy(), grad.copy(), None if fine is None else fine.copy()))
        return appearance(shapes, flat, grad, fine)

    monkeypatch.setattr(pipeline, "crystal_maps", recording)
    monkeypatch.setattr(crystals, "appearance", recording_appearance)
    for k, size in enumerate([(640, 480)] * 4 + [(1280, 960)] * 4 + [(2048, 2048)] * 2):
        drop_class = ("crystals", "precipitate", "clear", "other")[k % 4]
        spec = S.random_spec(40_000 + k, drop_class=drop_class, width=size[0], height=size[1])
        image, truth = S.render(spec)
        inspect(image, um_per_px=truth.um_per_px)
    return seen, measured


@pytest.mark.req("KA-VIS-001")
def test_crystal_maps_match_opencv_on_rendered_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, _ = drop_inputs(monkeypatch)
    assert len(inputs) == 10
    for flat, mask, contrast, edge in inputs:
        want = opencv_maps(flat, mask, contrast, edge)
        assert want.n_objects > 0 and want.n_away > 0  # real drops, not empty maps
        assert_same(crystal_maps(flat, mask, contrast, edge), want)


@pytest.mark.req("KA-VIS-001")
def test_appearance_matches_opencv_on_rendered_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, calls = drop_inputs(monkeypatch)
    n_shapes = sum(len(shapes) for shapes, *_ in calls)
    assert n_shapes >= 20  # real candidates: crystals, clouds, skin pieces
    for shapes, flat, grad, fine in calls:
        # the same floats, not just close ones: the features feed trained models
        assert appearance(shapes, flat, grad, fine) == opencv_appearance(shapes, flat, grad, fine)
        assert appearance(shapes, flat, grad, None) == opencv_appearance(shapes, flat, grad, None)


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=150, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 24), st.integers(1, 24)))
def test_appearance_matches_opencv_on_random_objects(
    data: st.DataObject, shape: tuple[int, int]
) -> None:
    """Random object maps (so outlines of every form, at the image's edges too) and levels."""
    objects = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))
    flat = data.draw(hnp.arrays(np.uint8, shape))
    grad = data.draw(hnp.arrays(np.uint8, shape))
    fine = data.draw(hnp.arrays(np.uint8, shape))
    found, _ = cv2.findContours(objects, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    shapes = [(c, cv2.boundingRect(c)) for c in found]
    assert appearance(shapes, flat, grad, fine) == opencv_appearance(shapes, flat, grad, fine)


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    contrast=st.floats(0.0, 1.1),
    edge=st.floats(0.0, 1.1),
)
def test_crystal_maps_match_opencv_at_every_small_size(
    data: st.DataObject, shape: tuple[int, int], contrast: float, edge: float
) -> None:
    flat = data.draw(hnp.arrays(np.uint8, shape))
    mask = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))
    assert_same(crystal_maps(flat, mask, contrast, edge), opencv_maps(flat, mask, contrast, edge))


@pytest.mark.req("KA-VIS-001")
def test_fine_contrast_rounds_like_cv2_blur_for_every_sum() -> None:
    """Every 5x5 sum (0..6375): the compiled mean rounds as cv2.blur's does."""
    mask = np.ones((5, 5), np.uint8)
    for total in range(25 * 255 + 1):
        level, extra = divmod(total, 25)
        window = np.full((5, 5), level, np.uint8)
        window.flat[:extra] += 1
        want = int(cv2.absdiff(window, cv2.blur(window, (5, 5)))[2, 2])
        assert int(crystal_maps(window, mask, 0.1, 0.1).fine[2, 2]) == want, total


def test_crystal_maps_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same 2-D shape"):
        crystal_maps(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8), 0.1, 0.1)
    with pytest.raises(ValueError, match="same 2-D shape"):
        crystal_maps(np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8), 0.1, 0.1)


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
)
def test_colour_halving_matches_cv2_area_resize(
    data: st.DataObject, shape: tuple[int, int]
) -> None:
    h, w = 2 * shape[0], 2 * shape[1]
    image = data.draw(hnp.arrays(np.uint8, (h, w, 3)))
    want = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    assert np.array_equal(halve_bgr(image), want)
    out = np.full((h // 2, w // 2, 3), 7, np.uint8)
    assert halve_bgr(image, out) is out and np.array_equal(out, want)


@pytest.mark.req("KA-VIS-001")
def test_halve_takes_the_compiled_route_only_where_it_is_exact() -> None:
    spec = S.random_spec(40_100, drop_class="crystals", width=1280, height=960)
    grey, _ = S.render(spec)
    colour = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) if grey.ndim == 2 else grey
    colour = np.ascontiguousarray(colour)
    colour[::7, ::5, 0] = 255  # channels differ, so a channel mix-up shows
    odd = np.ascontiguousarray(colour[:-1, :-1])
    bgra = cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)
    assert halves_bgr(colour)
    assert not halves_bgr(odd) and not halves_bgr(bgra) and not halves_bgr(colour[:, ::2])
    assert not halves_bgr(colour.astype(np.uint16))
    for image in (colour, odd, bgra, colour.astype(np.uint16)):
        h, w = image.shape[:2]
        want = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        assert np.array_equal(halve(image), want)
    with pytest.raises(ValueError, match="even-sided"):
        halve_bgr(odd)
    with pytest.raises(ValueError, match="out must be"):
        halve_bgr(colour, np.empty((10, 10, 3), np.uint8))


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=100, deadline=None)
@given(
    cx=st.floats(-50, 250),
    cy=st.floats(-50, 250),
    r=st.floats(5, 300),
    n=st.integers(8, 400),
    seed=st.integers(0, 2**31),
)
def test_circle_fit_solves_the_kasa_least_squares(
    cx: float, cy: float, r: float, n: int, seed: int
) -> None:
    """fit_circle (compiled) against numpy's least squares on the same linear system, for points
    all round a circle (as a well's boundary is; a short arc is ill-conditioned for both)."""
    from kiboauto.vision.well import fit_circle

    rng = np.random.default_rng(seed)
    ang = (np.arange(n) + rng.uniform(-0.4, 0.4, n)) * (2 * np.pi / n)
    xs = cx + r * np.cos(ang) + rng.normal(0, 0.02 * r, n)
    ys = cy + r * np.sin(ang) + rng.normal(0, 0.02 * r, n)
    a = np.stack([xs, ys, np.ones(n)], axis=1)
    (ax, ay, c), *_ = np.linalg.lstsq(a, xs * xs + ys * ys, rcond=None)
    want = (ax / 2, ay / 2, math.sqrt(max(c + ax * ax / 4 + ay * ay / 4, 0.0)))
    got = fit_circle(xs, ys)
    scale = abs(cx) + abs(cy) + r
    assert got == pytest.approx(want, abs=1e-6 * scale)


@pytest.mark.req("KA-VIS-001")
def test_ring_profile_reads_the_mean_level_at_each_radius() -> None:
    """On an image whose level depends on the distance from a point only, the profile is that
    level; radii that leave the frame in most directions read +inf."""
    from kiboauto.vision.well import _ring_profile

    h, w, cx, cy = 120, 160, 80.0, 60.0
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot(xx - cx, yy - cy)
    image = np.clip(40 + 2 * dist, 0, 255).astype(np.uint8)  # 2 levels per pixel of radius
    profile = _ring_profile(image, cx, cy, 150.0, 96, 90)
    radii = np.arange(96) * 150.0 / 96
    inside = radii < 55  # every direction in the frame
    assert np.allclose(profile[inside], 40 + 2 * radii[inside], atol=1.5)
    assert np.isinf(profile[radii > 101]).all()  # past the frame's corners (100 px away)
    assert np.isfinite(profile[radii < 95]).all()  # still seen along the diagonals


def compiled_signatures() -> dict[str, list[object]]:
    from numba.core.registry import CPUDispatcher

    from kiboauto.vision import appearance as ap
    from kiboauto.vision import colour, drop, pixel_maps, well

    found = {}
    for module in (ap, colour, pixel_maps, well, drop):
        for name, value in vars(module).items():
            # (helpers inlined into the routines have no code, nor signatures, of their own)
            if isinstance(value, CPUDispatcher) and value.targetoptions.get("inline") != "always":
                found[f"{module.__name__}.{name}"] = list(value.signatures)
    return found


@pytest.mark.req("KA-VIS-001")
def test_warm_up_prepares_everything_an_inspection_runs() -> None:
    """After warm_up(), inspecting grey, colour and 16-bit frames compiles nothing new (no
    inspection is slowed, or timed, with the compiler)."""
    from kiboauto.vision import warm_up

    warm_up()
    before = compiled_signatures()
    assert len(before) >= 5 and all(before.values())
    grey, truth = S.render(S.random_spec(40_200, drop_class="crystals", width=1280, height=960))
    colour = np.ascontiguousarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    for image in (grey, colour, grey.astype(np.uint16) * 100):
        inspect(image, um_per_px=truth.um_per_px)
    assert compiled_signatures() == before


CROSS = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def opencv_drop_mask(
    small: U8, region: U8, seed_x: np.ndarray[Any, Any], seed_y: np.ndarray[Any, Any], level: int
) -> U8:
    """The drop search's pixel work as OpenCV calls: cross black-hat above the level, grown 3x3,
    cut from the region; flood fill (4-connected) from every seed on free space; what is left,
    opened by the cross."""
    blackhat = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, CROSS)
    edge = (blackhat.astype(np.int16) > level).astype(np.uint8)
    edge = cv2.dilate(edge, K3)
    free = cv2.subtract(region, edge)
    h, w = small.shape
    for x, y in zip(seed_x.tolist(), seed_y.tolist(), strict=True):
        if 0 <= x < w and 0 <= y < h and free[y, x] == 1:
            cv2.floodFill(free, None, (x, y), 2, flags=4)
    _, outside = cv2.threshold(free, 1, 1, cv2.THRESH_BINARY)
    drop = cv2.subtract(region, outside)
    return cv2.morphologyEx(drop, cv2.MORPH_OPEN, CROSS)


@pytest.mark.req("KA-VIS-001")
def test_drop_mask_matches_opencv_on_rendered_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiboauto.vision import drop

    calls: list[tuple[Any, ...]] = []
    compiled = drop._drop_mask

    def recording(*args: Any) -> U8:
        calls.append(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args))
        return compiled(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(drop, "_drop_mask", recording)
    for k, size in enumerate([(640, 480), (1280, 960), (2048, 2048)] * 2):
        drop_class = ("crystals", "precipitate", "clear", "other")[k % 4]
        spec = S.random_spec(40_300 + k, drop_class=drop_class, width=size[0], height=size[1])
        image, truth = S.render(spec)
        inspect(image, um_per_px=truth.um_per_px)
    assert len(calls) == 6
    for small, region, sx, sy, level in calls:
        want = opencv_drop_mask(small, region, sx, sy, level)
        assert 0 < np.count_nonzero(want) < np.count_nonzero(region)  # a real drop in the well
        assert np.array_equal(compiled(small, region, sx, sy, level), want)


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 16), st.integers(1, 16)))
def test_drop_mask_matches_opencv_at_every_small_size(
    data: st.DataObject, shape: tuple[int, int]
) -> None:
    from kiboauto.vision.drop import _drop_mask

    small = data.draw(hnp.arrays(np.uint8, shape))
    region = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))
    n = data.draw(st.integers(0, 6))
    seed_x = np.asarray(data.draw(st.lists(st.integers(-2, 17), min_size=n, max_size=n)), np.int64)
    seed_y = np.asarray(data.draw(st.lists(st.integers(-2, 17), min_size=n, max_size=n)), np.int64)
    level = data.draw(st.integers(-3, 260))
    want = opencv_drop_mask(small, region, seed_x, seed_y, level)
    assert np.array_equal(_drop_mask(small, region, seed_x, seed_y, level), want)


@pytest.mark.req("KA-VIS-001")
def test_drop_mask_matches_opencv_on_mostly_open_regions() -> None:
    """2000 random cases where the flood reaches far (regions mostly set, few edges): every
    step of the fill, at every edge of the image, shows in the result."""
    from kiboauto.vision.drop import _drop_mask

    rng = np.random.default_rng(7)
    for _ in range(2000):
        h, w = rng.integers(1, 20, 2)
        region = (rng.random((h, w)) < rng.uniform(0.6, 1.0)).astype(np.uint8)
        small = rng.integers(100, 112, (h, w)).astype(np.uint8)
        n = int(rng.integers(0, 8))
        seed_x, seed_y = rng.integers(-1, w + 1, n), rng.integers(-1, h + 1, n)
        level = int(rng.integers(2, 12))
        want = opencv_drop_mask(small, region, seed_x, seed_y, level)
        got = _drop_mask(small, region, seed_x, seed_y, level)
        assert np.array_equal(got, want), (small, region, seed_x, seed_y, level)


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_well_reference_is_opencv_gaussian_and_histogram_percentile(
    data: st.DataObject, shape: tuple[int, int]
) -> None:
    from kiboauto.vision.well import well_reference

    small = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))
    smooth = cv2.GaussianBlur(small, (5, 5), 0)
    cum = cv2.calcHist([smooth], [0], None, [256], [0, 256]).cumsum()
    level = float(cum.searchsorted(0.75 * float(cum[-1])))  # least level with >= 75 % at or below
    got_smooth, got_level = well_reference(small)
    assert np.array_equal(got_smooth, smooth) and got_level == level


@pytest.mark.req("KA-VIS-001")
@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 30), st.integers(1, 30)))
def test_grey_minus_spread_of_any_window(data: st.DataObject, shape: tuple[int, int]) -> None:
    """cvtColor grey minus max(B, G, R) - min(B, G, R), saturating, in any window of a frame."""
    from kiboauto.vision.prep import _grey_minus_spread

    h, w = shape
    bgr = data.draw(hnp.arrays(np.uint8, (h, w, 3)))
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    part = bgr[y0:y1, x0:x1]
    grey = cv2.cvtColor(part, cv2.COLOR_BGR2GRAY).astype(np.int16)
    spread = part.max(axis=2).astype(np.int16) - part.min(axis=2)
    want = np.clip(grey - spread, 0, 255).astype(np.uint8)
    assert np.array_equal(_grey_minus_spread(bgr, (y0, y1), (x0, x1)), want)


def test_subtract_spread_rejects_what_it_cannot_read() -> None:
    from kiboauto.vision.colour import subtract_spread

    bgr = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="exceed"):
        subtract_spread(bgr, 2, 0, np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="contiguous 8-bit BGR"):
        subtract_spread(bgr[:, ::2], 0, 0, np.zeros((2, 2), np.uint8))
