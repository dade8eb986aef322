"""Vision core (kiboauto.vision) on rendered drops with exact truth (hil/scene.py).

Seeds here are evaluation seeds (10_000+): the models and thresholds were tuned on seeds 0..2999
only. Tolerances are what the pipeline measurably achieves on these seeds, with some margin; no
timings are asserted (see bench/vision_latency.py for speed).
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiboauto.hil import scene as S
from kiboauto.hil.growth import GrowthCell
from kiboauto.vision import (
    ImageError,
    Inspection,
    InspectParams,
    confluence,
    inspect,
    load_image,
    overlay,
    track,
)

EVAL = 10_000


@cache
def rendered(seed: int, **kw: object) -> tuple[np.ndarray, S.SceneTruth, S.SceneSpec]:
    spec = S.random_spec(seed, **kw)  # type: ignore[arg-type]
    img, truth = S.render(spec)
    return img, truth, spec


def rendered_spec(**kw: object) -> tuple[np.ndarray, S.SceneTruth, S.SceneSpec]:
    spec = S.SceneSpec(**kw)  # type: ignore[arg-type]
    img, truth = S.render(spec)
    return img, truth, spec


def match(truth: S.SceneTruth, result: Inspection) -> list[tuple[float, float]]:
    """(true length, measured length) of each truth crystal found near its centroid."""
    used: set[int] = set()
    pairs = []
    for c in truth.crystals:
        best = None
        for d in result.crystals:
            if d.id in used:
                continue
            dist = math.dist(d.centroid_px, c.centroid_px)
            if dist < max(0.5 * c.longest_um / truth.um_per_px, 10) and (
                best is None or dist < best[0]
            ):
                best = (dist, d)
        if best is not None:
            used.add(best[1].id)
            pairs.append((c.longest_um, best[1].length_um))
    return pairs


# -- KA-VIS-001 ------------------------------------------------------------------------------------
@pytest.mark.req("KA-VIS-001")
def test_class_count_and_size_on_rendered_drops() -> None:
    seeds = range(EVAL, EVAL + 40)  # 10 of each class (classes cycle with the seed)
    right = 0
    count_ok = n_cryst = 0
    errors: list[float] = []
    for seed in seeds:
        img, truth, spec = rendered(seed)
        res = inspect(img, um_per_px=spec.um_per_px)
        assert res.drop_class in S.DROP_CLASSES
        assert 0.0 <= res.confidence <= 1.0
        right += res.drop_class == truth.drop_class
        if truth.drop_class == "crystals":
            n_cryst += 1
            n_true = len(truth.crystals)
            count_ok += abs(len(res.crystals) - n_true) <= max(1, round(0.3 * n_true))
            errors += [m / t - 1 for t, m in match(truth, res)]
    assert right / len(seeds) >= 0.7, f"class accuracy {right}/{len(seeds)}"
    assert count_ok / n_cryst >= 0.7, f"crystal count within tolerance in {count_ok}/{n_cryst}"
    err = np.abs(errors)
    assert len(err) >= 15
    assert float(np.median(err)) <= 0.12, f"median length error {np.median(err):.3f}"
    assert float(np.percentile(err, 80)) <= 0.25


@pytest.mark.req("KA-VIS-001")
def test_inspection_fields_and_json() -> None:
    img, truth, spec = rendered(EVAL)  # a crystals drop
    res = inspect(img, um_per_px=spec.um_per_px)
    assert res.well is not None and res.drop is not None
    assert math.dist(res.well.center_px, truth.well_center_px) < 0.02 * min(img.shape[:2])
    assert abs(res.well.radius_px / truth.well_radius_px - 1) < 0.05
    h, w = img.shape[:2]
    assert res.image_size == (w, h)
    for c in res.crystals:
        x, y, bw, bh = c.bbox_px
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert x <= c.centroid_px[0] <= x + bw and y <= c.centroid_px[1] <= y + bh
        assert c.length_um > 0 and c.aspect >= 1.0 and 0.0 <= c.straightness <= 1.0
        assert c.area_um2 == pytest.approx(c.area_px * spec.um_per_px**2)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["drop_class"] == res.drop_class
    assert len(data["crystals"]) == len(res.crystals)
    assert set(data["features"]) == set(res.features)
    # the drop boundary follows the real (irregular) edge: most truth-polygon points lie near it
    contour = np.array(res.drop.contour_px, np.float32).reshape(-1, 1, 2)
    truth_pts = np.array(truth.drop_polygon_px, np.float64)
    dists = [abs(cv2.pointPolygonTest(contour, (float(x), float(y)), True)) for x, y in truth_pts]
    assert np.median(dists) < 0.03 * min(h, w)


# -- KA-VIS-002 ------------------------------------------------------------------------------------
@pytest.mark.req("KA-VIS-002")
@pytest.mark.parametrize(
    "kw",
    [
        {"drop_class": "clear", "bubbles": 0, "fibres": 0},  # only the well ring and the drop edge
        {"drop_class": "clear", "bubbles": 3, "fibres": 0},
        {"drop_class": "clear", "bubbles": 0, "fibres": 3},
        {"drop_class": "other", "other": "skin", "bubbles": 0, "fibres": 0},
        {"drop_class": "other", "other": "fibres", "bubbles": 1},
    ],
    ids=["ring+edge", "bubbles", "fibres", "skin", "fibre-tangle"],
)
def test_distractors_are_not_crystals(kw: dict[str, object]) -> None:
    # known weakness (measured on these evaluation seeds): a wrinkled skin can leave one
    # crystal-like fold in 1 of 4 images; every other distractor must give none
    allowed = 1 if kw.get("other") == "skin" else 0
    found = []
    for seed in range(EVAL + 100, EVAL + 104):
        img, truth, spec = rendered_spec(seed=seed, **kw)
        assert not truth.crystals
        res = inspect(img, um_per_px=spec.um_per_px)
        found.append(len(res.crystals))
        assert res.drop_class != "crystals" or len(res.crystals) == 0
    assert sum(found) <= allowed, f"false crystals per image: {found}"


# -- KA-VIS-003 ------------------------------------------------------------------------------------
def _summary(img: np.ndarray, um: float) -> tuple[str, int, list[float]]:
    res = inspect(img, um_per_px=um)
    return res.drop_class, len(res.crystals), sorted(c.length_um for c in res.crystals)


@pytest.mark.req("KA-VIS-003")
def test_rotation_invariance() -> None:
    for seed in (EVAL + 4, EVAL + 8, EVAL + 12):  # crystal drops
        img, _, spec = rendered(seed)
        base_cls, base_n, base_len = _summary(img, spec.um_per_px)
        for k in (1, 2, 3):
            cls, n, lengths = _summary(np.ascontiguousarray(np.rot90(img, k)), spec.um_per_px)
            assert cls == base_cls, (seed, k)
            assert abs(n - base_n) <= 1, (seed, k, n, base_n)
            if n == base_n and n:
                rel = np.abs(np.array(lengths) / np.array(base_len) - 1)
                assert float(rel.max()) < 0.15, (seed, k, lengths, base_len)


@pytest.mark.req("KA-VIS-003")
def test_illumination_invariance() -> None:
    for seed in (EVAL + 4, EVAL + 5, EVAL + 6):  # crystals, precipitate, clear
        img, truth, spec = rendered(seed)
        base_cls, base_n, _ = _summary(img, spec.um_per_px)
        h, w = img.shape[:2]
        ramp = np.linspace(0.75, 1.15, w, dtype=np.float32)[None, :]
        ramp = np.repeat(ramp, h, axis=0)
        if img.ndim == 3:
            ramp = ramp[..., None]
        for gain in (ramp, np.float32(0.6)):
            lit = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            cls, n, _ = _summary(lit, spec.um_per_px)
            assert cls == base_cls, (seed, truth.drop_class)
            assert abs(n - base_n) <= 1


# -- KA-VIS-004 ------------------------------------------------------------------------------------
@pytest.mark.req("KA-VIS-004")
def test_bad_files_raise_image_error(tmp_path: Path) -> None:
    cases = {
        "empty.png": b"",
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "garbage.jpg": b"this is not a jpeg at all" * 10,
        "truncated.tif": b"II*\x00\x08\x00\x00\x00",
        "notes.txt": b"hello",
        "anim.gif": b"GIF89a",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert name in str(info.value)
        assert info.value.path == str(path)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        inspect(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError):
        inspect(np.zeros((100, 100, 2), np.uint8))


@pytest.mark.req("KA-VIS-004")
def test_16_bit_and_colour_from_files(tmp_path: Path) -> None:
    spec = S.random_spec(EVAL + 16)  # crystals
    grey8, truth = S.render(spec)
    ref = inspect(grey8, um_per_px=spec.um_per_px)
    for variant in (
        {"bit_depth": 16, "colour": False},
        {"bit_depth": 8, "colour": True},
        {"bit_depth": 16, "colour": True},
    ):
        fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__} | variant
        img, _ = S.render(S.SceneSpec(**fields))
        assert img.dtype == (np.uint16 if variant["bit_depth"] == 16 else np.uint8)
        for suffix in (".png", ".tif"):
            path = tmp_path / f"img{variant['bit_depth']}{variant['colour']}{suffix}"
            assert cv2.imwrite(str(path), img)
            loaded = load_image(path)
            assert loaded.dtype == img.dtype and loaded.shape == img.shape
            res = inspect(loaded, um_per_px=spec.um_per_px)
            assert res.drop_class == truth.drop_class
            assert abs(len(res.crystals) - len(ref.crystals)) <= 1
    # JPEG (8-bit colour) works too
    path = tmp_path / "img.jpg"
    cv2.imwrite(str(path), grey8, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert inspect(load_image(path), um_per_px=spec.um_per_px).drop_class == "crystals"


@pytest.mark.req("KA-VIS-001")
@pytest.mark.parametrize("size", [(640, 480), (1280, 960), (2560, 1920)])
def test_input_untouched_and_repeatable(size: tuple[int, int]) -> None:
    """The caller's frame is never written to (the pipeline works in place only on its own
    copies and per-thread scratch buffers), and inspecting again gives the same result, also
    after frames of other sizes and kinds have used the scratch buffers."""
    w, h = size
    spec = S.random_spec(EVAL + 16, width=w, height=h)
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    colour, _ = S.render(S.SceneSpec(**(fields | {"colour": True})))
    grey16, _ = S.render(S.SceneSpec(**(fields | {"bit_depth": 16})))
    bgra = cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)
    for frame in (colour, grey16, bgra, np.ascontiguousarray(colour[:, ::-1])):
        before = frame.copy()
        first = inspect(frame, um_per_px=spec.um_per_px).to_dict()
        inspect(rendered(EVAL + 1)[0])  # another size and kind in between
        again = inspect(frame, um_per_px=spec.um_per_px).to_dict()
        assert np.array_equal(frame, before)
        assert again == first


@pytest.mark.req("KA-VIS-001")
def test_inspect_in_several_threads_at_once() -> None:
    """Scratch buffers are per thread: frames of different sizes and kinds inspected in two
    threads at the same time give exactly the results of inspecting them one by one."""
    from concurrent.futures import ThreadPoolExecutor

    frames = []
    for k, (w, h, colour) in enumerate(
        [(1280, 960, True), (2560, 1920, False), (1280, 960, False), (2048, 2048, True)]
    ):
        spec = S.random_spec(EVAL + 40 + k, width=w, height=h)
        fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
        frames.append(S.render(S.SceneSpec(**(fields | {"colour": colour})))[0])
    alone = [inspect(f).to_dict() for f in frames]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            together = list(pool.map(lambda f: inspect(f).to_dict(), frames + frames[::-1]))
            assert together == alone + alone[::-1]


@pytest.mark.req("KA-VIS-004")
def test_sizes_and_overlay(tmp_path: Path) -> None:
    # (2048x2048: the well ring reaches the frame edges, where the ring search must not read the
    # area past the frame as the darkest ring)
    for w, h in ((640, 480), (2048, 2048), (2560, 1920)):
        img, truth, spec = rendered(EVAL, width=w, height=h)
        res = inspect(img, um_per_px=spec.um_per_px)
        assert res.image_size == (w, h)
        assert res.well is not None
        assert abs(res.well.radius_px / truth.well_radius_px - 1) < 0.03
        pic = overlay(img, res)
        assert pic.shape == (h, w, 3) and pic.dtype == np.uint8
        assert not np.array_equal(
            pic, cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img
        )
        assert cv2.imwrite(str(tmp_path / f"overlay{w}.png"), pic)


# -- KA-VIS-005 ------------------------------------------------------------------------------------
@pytest.mark.req("KA-VIS-005")
def test_track_follows_rendered_growth() -> None:
    cell = GrowthCell(seed=EVAL + 7, outcome="crystals", habits=("plate", "cube", "plate", "plate"))
    times = [h * 3600.0 for h in range(0, 61, 4)]
    series = []
    truths = []
    um = cell.um_per_px
    for i, t in enumerate(times):
        spec = cell.spec(t, noise_seed=i)
        img, truth = S.render(spec)
        truths.append(truth)
        series.append((t, inspect(img, um_per_px=spec.um_per_px)))
    report = track(series)
    assert report.times_s == times
    json.loads(json.dumps(report.to_dict()))
    final = truths[-1]
    big = [c for c in final.crystals if c.longest_um >= 60]
    assert big, "the cell should have grown visible crystals"
    nuc_true = cell.nucleation_times(times[-1])
    matched = 0
    for c in big:
        near = [
            tr for tr in report.tracks
            if math.dist(tr.centroids_px[-1], c.centroid_px) < max(0.5 * c.longest_um / um, 10)
        ]  # fmt: skip
        if not near:
            continue
        matched += 1
        tr = near[0]
        assert abs(tr.lengths_um[-1] / c.longest_um - 1) < 0.25
        # growth: the measured curve rises with the truth
        assert tr.lengths_um[-1] >= tr.lengths_um[0]
        t_nuc = nuc_true[c.id] if c.id < len(nuc_true) else None
        if t_nuc is not None:
            assert tr.nucleation_s <= tr.times_s[0]
            assert abs(tr.nucleation_s - t_nuc) < 12 * 3600.0, (tr.nucleation_s, t_nuc)
    assert matched >= max(1, round(0.6 * len(big)))


@pytest.mark.req("KA-VIS-005")
def test_track_matches_across_drift() -> None:
    img, _, spec = rendered(EVAL + 20)
    a = inspect(img, um_per_px=spec.um_per_px)
    shifted = np.roll(img, (12, -9), axis=(0, 1))
    b = inspect(shifted, um_per_px=spec.um_per_px)
    report = track([(0.0, a), (3600.0, b)], max_jump_um=20.0)
    assert len(report.tracks) >= len(a.crystals) - 1


# -- KA-VIS-006 ------------------------------------------------------------------------------------
@pytest.mark.req("KA-VIS-006")
def test_confluence_on_rendered_cells() -> None:
    for i, target in enumerate((0.05, 0.2, 0.4, 0.6, 0.8, 0.95)):
        img, true = S.render_cells(EVAL + i, target)
        est = confluence(img)
        assert 0.0 <= est <= 1.0
        assert abs(est - true) < 0.13, (target, true, est)
    assert confluence(np.full((480, 640), 128, np.uint8)) < 0.02


def test_params_are_used() -> None:
    img, _, spec = rendered(EVAL)
    strict = inspect(img, um_per_px=spec.um_per_px, params=InspectParams(min_crystal_score=0.999))
    loose = inspect(img, um_per_px=spec.um_per_px)
    assert len(strict.crystals) <= len(loose.crystals)


@pytest.mark.req("KA-VIS-001")
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (145, 150), (240, 320)])
def test_double_equals_nearest_enlargement(shape: tuple[int, int]) -> None:
    from kiboauto.vision.prep import double

    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    big = double(img)
    want = cv2.resize(img, (2 * shape[1], 2 * shape[0]), interpolation=cv2.INTER_NEAREST)
    assert big.shape == want.shape and big.dtype == np.uint8
    assert np.array_equal(big, want)


@pytest.mark.req("KA-VIS-001")
def test_two_class_model_probability_matches_softmax() -> None:
    from kiboauto.vision.models import CRYSTAL_MLP, mlp_positive, mlp_predict

    rows = np.random.default_rng(3).normal(0.0, 1.0, (50, len(CRYSTAL_MLP["mu"]))).tolist()
    p1 = mlp_positive(CRYSTAL_MLP, rows)
    assert p1.shape == (50,)
    np.testing.assert_allclose(p1, mlp_predict(CRYSTAL_MLP, rows)[:, 1], rtol=0, atol=1e-12)
    assert ((p1 > 0.0) & (p1 < 1.0)).all()
