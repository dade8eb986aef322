"""The HIL camera scene renderer, its ground truth, the growth model and serving cells over HTTP.

Real renders (no mocks), virtual time for days of growth, and a real `kiboauto hil serve`
subprocess read back through the OpenCV camera driver.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from kiboauto.clock import RealClock, VirtualClock
from kiboauto.devices import DeviceDisconnected
from kiboauto.drivers.camera import OpenCVCamera
from kiboauto.hil.camera_sim import SimCamera
from kiboauto.hil.growth import GrowthCell, TemperatureLog, arrhenius
from kiboauto.hil.scene import (
    DROP_CLASSES,
    SceneSpec,
    SceneTruth,
    random_spec,
    render,
    render_cells,
)
from kiboauto.hil.scene_crystals import feret, polygon_area_centroid
from kiboauto.hil.thermal_sim import ThermalSim

SMALL = {"width": 320, "height": 240}


def _inside(poly: list[tuple[float, float]], point: tuple[float, float]) -> float:
    contour = np.array(poly, np.float32).reshape(-1, 1, 2)
    return float(cv2.pointPolygonTest(contour, (float(point[0]), float(point[1])), True))


# ---------------------------------------------------------------------------------------------
# determinism and formats
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-008")
def test_same_seed_same_image_and_truth_different_seeds_differ() -> None:
    spec = SceneSpec(seed=11, crystals=4, bubbles=2, fibres=1, precipitate=0.2, **SMALL)
    a, ta = render(spec)
    b, tb = render(SceneSpec(seed=11, crystals=4, bubbles=2, fibres=1, precipitate=0.2, **SMALL))
    assert np.array_equal(a, b) and ta == tb and ta.to_dict() == tb.to_dict()
    c, tc = render(SceneSpec(seed=12, crystals=4, bubbles=2, fibres=1, precipitate=0.2, **SMALL))
    assert not np.array_equal(a, c) and ta != tc
    # another noise seed: another frame of the same scene (same truth)
    d, td = render(SceneSpec(seed=11, crystals=4, bubbles=2, fibres=1, precipitate=0.2,
                             noise_seed=5, **SMALL))  # fmt: skip
    assert not np.array_equal(a, d) and td == ta
    json.dumps(ta.to_dict())  # the truth is plain data


@pytest.mark.req("KA-HIL-008")
@pytest.mark.parametrize(
    ("width", "height", "bit_depth", "colour", "jpeg"),
    [
        (640, 480, 8, False, None),
        (640, 480, 16, False, None),
        (800, 600, 8, True, 85),
        (1280, 960, 16, True, None),
        (2560, 1920, 8, False, 90),
    ],
)
def test_bit_depths_colour_and_sizes(
    width: int, height: int, bit_depth: int, colour: bool, jpeg: int | None
) -> None:
    spec = SceneSpec(width=width, height=height, bit_depth=bit_depth, colour=colour,
                     jpeg_quality=jpeg, seed=3, crystals=3)  # fmt: skip
    img, truth = render(spec)
    assert img.shape == ((height, width, 3) if colour else (height, width))
    assert img.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    full = 255 if bit_depth == 8 else 65535
    assert 0.3 * full < float(np.median(img)) < 0.95 * full  # a sensible exposure
    assert truth.crystals and truth.drop_class == "crystals"
    if colour:
        b, _, r = (img[..., i].astype(float) for i in range(3))
        assert np.abs(b - r).mean() > 0.01 * full  # really colour, not grey in three channels


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
def _check_crystal_truth(truth: SceneTruth) -> None:
    for c in truth.crystals:
        poly = np.array(c.polygon_px)
        area, centroid = polygon_area_centroid(poly)
        assert c.area_px == pytest.approx(area) and area > 0
        assert c.centroid_px == pytest.approx(centroid)
        longest, width, angle = feret(poly)
        assert c.longest_um == pytest.approx(longest * truth.um_per_px)
        assert c.aspect == pytest.approx(longest / width) and c.aspect >= 1
        assert 0 <= c.angle_deg <= 180 and c.angle_deg == pytest.approx(angle)
        x, y, w, h = c.bbox_px
        assert x <= poly[:, 0].min() and poly[:, 0].max() <= x + w
        assert y <= poly[:, 1].min() and poly[:, 1].max() <= y + h
        for point in c.polygon_px:  # every crystal lies inside the drop
            assert _inside(truth.drop_polygon_px, point) > 0, (c.id, point)
        assert c.habit in ("plate", "needle", "cube", "cluster")


@pytest.mark.req("KA-HIL-008")
def test_truth_geometry_is_exact_and_inside_the_drop() -> None:
    habits_seen: set[str] = set()
    for seed in range(12):
        _, truth = render(SceneSpec(seed=seed, crystals=5, **SMALL))
        _check_crystal_truth(truth)
        habits_seen |= {c.habit for c in truth.crystals}
        # crystals do not overlap each other
        for i, a in enumerate(truth.crystals):
            for b in truth.crystals[i + 1 :]:
                assert not all(_inside(a.polygon_px, p) > 0 for p in b.polygon_px)
    assert habits_seen == {"plate", "needle", "cube", "cluster"}


@pytest.mark.req("KA-HIL-008")
def test_crystal_pixels_are_exactly_where_the_truth_says() -> None:
    """Without noise and blur, drawing the crystals changes pixels only at their outlines."""
    base = {
        "seed": 21,
        "noise": 0.0,
        "blur_px": 0.0,
        "crystal_habits": ("plate", "needle", "cube", "cluster"),
        "crystal_max_um": (150.0, 180.0, 120.0, 190.0),
        "width": 640,
        "height": 480,
        "um_per_px": 3.0,
    }
    with_c, truth = render(SceneSpec(crystal_sizes_um=(150.0, 180.0, 120.0, 190.0), **base))
    without, empty = render(SceneSpec(crystal_sizes_um=(0.0, 0.0, 0.0, 0.0), **base))
    assert len(truth.crystals) >= 3 and not empty.crystals and empty.drop_class == "clear"
    changed = np.abs(with_c.astype(int) - without.astype(int)) > 2
    region = np.zeros(changed.shape, np.uint8)
    for c in truth.crystals:
        q = np.round(np.array(c.polygon_px) * 16).astype(np.int32)
        cv2.fillPoly(region, [q], 255, cv2.LINE_8, shift=4)
    near = cv2.dilate(region, np.ones((7, 7), np.uint8)) > 0  # outline width + antialiasing
    assert changed.sum() > 0.5 * (region > 0).sum()
    assert not (changed & ~near).any()
    # and the crystals really show: their inside differs from the empty drop
    for c in truth.crystals:
        mask = np.zeros(changed.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(np.array(c.polygon_px) * 16).astype(np.int32)], 255,
                     cv2.LINE_8, shift=4)  # fmt: skip
        assert changed[mask > 0].mean() > 0.5, c


@pytest.mark.req("KA-HIL-008")
def test_classes_produce_what_they_claim() -> None:
    counts = dict.fromkeys(DROP_CLASSES, 0)
    others: set[str] = set()
    for seed in range(24):
        spec = random_spec(seed, **SMALL)
        counts[spec.drop_class] += 1
        img, truth = render(spec)
        assert img.shape[:2] == (240, 320)
        assert truth.drop_class == spec.drop_class, (seed, truth)
        d = truth.distractors
        if truth.drop_class == "crystals":
            assert truth.crystals
            _check_crystal_truth(truth)
        else:
            assert not truth.crystals
        if truth.drop_class == "precipitate":
            assert d["precipitate_particles"] > 0
        if truth.drop_class in ("clear", "other"):
            assert d["precipitate_particles"] == d["precipitate_clouds"] == 0
        if truth.drop_class == "clear":
            assert d["skin"] == d["oil_droplets"] == d["cracks"] == 0 and d["fibres"] < 5
        if truth.drop_class == "other":
            assert truth.other in ("skin", "fibres", "dried", "phase")
            others.add(str(truth.other))
            key = {"skin": "skin", "fibres": "fibres", "dried": "cracks", "phase": "oil_droplets"}
            assert d[key[str(truth.other)]] > 0
    assert set(counts.values()) == {6}  # balanced classes
    assert len(others) >= 3
    for kind in ("skin", "fibres", "dried", "phase"):
        _, truth = render(SceneSpec(seed=4, drop_class="other", other=kind, **SMALL))
        assert truth.drop_class == "other" and truth.other == kind


@pytest.mark.req("KA-HIL-008")
def test_naive_thresholding_finds_distractors_in_a_drop_without_crystals() -> None:
    """A clear drop with bubbles and a fibre under uneven light: a global threshold 'finds'
    dark objects (well ring, meniscus, bubble rims, fibre) though the truth has no crystal."""
    img, truth = render(SceneSpec(seed=8, drop_class="clear", bubbles=3, fibres=2,
                                  illumination=0.4, width=640, height=480))  # fmt: skip
    assert truth.drop_class == "clear" and not truth.crystals and truth.distractors["bubbles"]
    _, dark = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    drop = np.zeros(img.shape, np.uint8)
    cv2.fillPoly(drop, [np.round(np.array(truth.drop_polygon_px)).astype(np.int32)], 255)
    inside = cv2.erode(drop, np.ones((5, 5), np.uint8))
    n, _ = cv2.connectedComponents(((dark > 0) & (inside > 0)).astype(np.uint8))
    assert n - 1 >= 1  # dark things inside the drop, none of them a crystal


@pytest.mark.req("KA-HIL-008")
@pytest.mark.parametrize("confluence", [0.1, 0.5, 0.9])
def test_cells_cover_the_asked_fraction(confluence: float) -> None:
    img, covered = render_cells(5, confluence, width=640, height=480)
    again, same = render_cells(5, confluence, width=640, height=480)
    assert img.dtype == np.uint8 and img.shape == (480, 640)
    assert np.array_equal(img, again) and covered == same
    assert abs(covered - confluence) < 0.03
    assert 60 < float(img.mean()) < 200


# ---------------------------------------------------------------------------------------------
# growth
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-008")
def test_arrhenius_factor_slows_growth_when_cold() -> None:
    assert float(arrhenius(20.0, 90.0)) == pytest.approx(1.0)
    assert 0.08 < float(arrhenius(4.0, 90.0)) < 0.16
    assert float(arrhenius(25.0, 90.0)) > 1.0


@pytest.mark.req("KA-HIL-008")
def test_growth_at_20_degC_increases_and_cooling_slows_it() -> None:
    cell = GrowthCell(seed=5, outcome="crystals")
    hours = [0, 6, 12, 24, 48, 72, 120]
    totals = [sum(cell.sizes_um(h * 3600.0, 20.0)) for h in hours]
    assert totals[0] == 0 and totals == sorted(totals) and totals[-1] > 100
    for a, b in itertools.pairwise(hours):
        sa, sb = cell.sizes_um(a * 3600.0), cell.sizes_um(b * 3600.0)
        assert all(y >= x for x, y in zip(sa, sb, strict=True))
    # cooled to 4 degC after 6 h: much less growth by 72 h (steps and a callable agree)
    steps = [(0.0, 20.0), (6 * 3600.0, 4.0)]
    cooled = sum(cell.sizes_um(72 * 3600.0, steps))
    profile = sum(cell.sizes_um(72 * 3600.0, lambda t: 20.0 if t < 6 * 3600 else 4.0))
    warm = sum(cell.sizes_um(72 * 3600.0, 20.0))
    assert cooled < 0.5 * warm and profile == pytest.approx(cooled, rel=0.02)
    # cold from the start: nucleation comes later
    warm_nuc = [t for t in cell.nucleation_times(1e7, 20.0) if t is not None]
    cold_nuc = [t for t in cell.nucleation_times(1e8, 4.0) if t is not None]
    assert warm_nuc and min(cold_nuc) > 5 * min(warm_nuc)
    # the same seed is the same cell
    assert GrowthCell(seed=5, outcome="crystals").sizes_um(1e5) == cell.sizes_um(1e5)


@pytest.mark.req("KA-HIL-008")
def test_growth_cell_spec_draws_growing_crystals_in_place() -> None:
    cell = GrowthCell(seed=9, outcome="crystals", width=480, height=360, um_per_px=3.0)
    truths = [render(cell.spec(h * 3600.0))[1] for h in (24, 48, 96)]
    areas = [sum(c.area_px for c in t.crystals) for t in truths]
    assert areas == sorted(areas) and areas[-1] > areas[0] > 0
    # a crystal stays where it is while it grows
    first = {c.id: c for c in truths[0].crystals}
    assert len(truths[-1].crystals) >= len(first)
    for late in truths[-1].crystals:
        if late.id in first:
            early = first[late.id]
            assert late.habit == early.habit and late.area_px > early.area_px
            assert math.dist(early.centroid_px, late.centroid_px) < 0.25 * math.sqrt(late.area_px)
    for t in truths:
        _check_crystal_truth(t)
    # a precipitate cell: precipitate appears and thickens, no crystals
    pcell = GrowthCell(seed=9, outcome="precipitate", width=480, height=360)
    amounts = [pcell.precipitate(h * 3600.0) for h in (0, 12, 48)]
    assert amounts[0] == 0 and amounts == sorted(amounts) and amounts[-1] > 0.2
    assert render(pcell.spec(48 * 3600.0))[1].drop_class == "precipitate"


@pytest.mark.req("KA-HIL-008")
def test_sim_camera_cells_temperature_and_truth_in_virtual_time() -> None:
    clock = VirtualClock()
    warm = SimCamera("w", clock, seed=2, cells=3, width=320, height=240)
    cold = SimCamera("c", clock, seed=2, cells=3, width=320, height=240, temperature=4.0)
    stepped = SimCamera("s", clock, seed=2, cells=3, width=320, height=240,
                        temperature=[(0, 20.0), (3600 * 8, 4.0)])  # fmt: skip

    async def main() -> dict[str, Any]:
        for cam in (warm, cold, stepped):
            await cam.connect()
        await clock.sleep(72 * 3600)
        out: dict[str, Any] = {}
        out["sizes"] = [sum(c.crystal_sizes_um()) for c in (warm, cold, stepped)]
        frames = [await warm.capture_cell(n) for n in (1, 2, 3)]
        out["distinct"] = not np.array_equal(frames[0], frames[1])
        warm.select_cell(2)
        out["selected"] = np.array_equal(await warm.capture(), frames[1])  # same clock time
        out["truth"] = warm.truth(1)
        out["info"] = await warm.identify()
        with pytest.raises(ValueError, match="no cell 4"):
            warm.select_cell(4)
        for cam in (warm, cold, stepped):
            await cam.close()
        return out

    out = clock.run(main())
    w, c, s = out["sizes"]
    assert w > 0 and c < 0.3 * w and s < 0.6 * w
    assert out["distinct"] and out["selected"]
    assert out["truth"].drop_class == "crystals"  # cell 1 always grows crystals
    assert out["info"].details["cells"] == 3 and out["info"].details["selected_cell"] == 2


@pytest.mark.req("KA-HIL-008")
def test_sim_camera_follows_a_live_incubator_simulator() -> None:
    clock = VirtualClock()
    incubator = ThermalSim("incubator", clock)
    cam = SimCamera("cam", clock, seed=1, cells=1, width=160, height=120, incubator=incubator,
                    temperature_sample_s=600)  # fmt: skip

    async def main() -> tuple[float, list[tuple[float, float]], str]:
        await cam.connect()
        await clock.sleep(24 * 3600)
        size = sum(cam.crystal_sizes_um())
        await cam.capture()
        info = await cam.identify()
        await cam.close()
        assert cam.temperature_log is not None
        return size, list(cam.temperature_log.samples), str(info.details["temperature"])

    size, samples, source = clock.run(main())
    assert len(samples) >= 24 * 6 and "incubator" in source
    temps = [v for _, v in samples]
    assert all(v == pytest.approx(incubator.temperature(), abs=30) for v in temps)
    reference = GrowthCell(seed=cam.cells[0].seed, outcome="crystals").sizes_um(
        24 * 3600.0, samples
    )
    assert size == pytest.approx(sum(reference))
    log = TemperatureLog(lambda: 7.0, clock)
    assert log(123.0) == 7.0  # before any sample: the live value


# ---------------------------------------------------------------------------------------------
# served over HTTP by `kiboauto hil serve`
# ---------------------------------------------------------------------------------------------
RIG = """\
devices:
  camera1:
    protocol: camera
    seed: 4
    options: {cells: 3, width: 320, height: 240}
"""


@pytest.mark.req("KA-HIL-009")
def test_hil_serve_serves_each_growth_cell_to_the_opencv_driver(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiboauto", "hil", "serve", "--rig", str(rig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=10)[1]
        ports = json.loads(line)
        entry = ports["camera1"]
        assert entry["cells"] == 3 and entry["port"].endswith("/camera1.png")
        urls = [entry["cell_url"].format(n=n) for n in (1, 2, 3)]

        async def grab() -> list[np.ndarray]:
            frames = []
            for url, client in zip([*urls, entry["port"]], ["opencv", "urllib"] * 2, strict=True):
                cam = OpenCVCamera("camera1", url, clock=RealClock(), http_client=client)
                await cam.connect()
                try:
                    frames.append(await cam.capture())
                finally:
                    await cam.close()
            missing = OpenCVCamera("m", urls[0].replace("/1.png", "/9.png"), clock=RealClock(),
                                   http_client="urllib")  # fmt: skip
            await missing.connect()
            with pytest.raises(DeviceDisconnected, match="404"):
                await missing.capture()
            return frames

        frames = asyncio.run(grab())
        assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
        assert not np.array_equal(frames[0], frames[1])
        assert not np.array_equal(frames[1], frames[2])
        with urllib.request.urlopen(urls[0].replace(".png", ".json"), timeout=10) as reply:
            truth = json.loads(reply.read())
        assert truth["drop_class"] in DROP_CLASSES and "crystals" in truth
        assert len(truth["drop_polygon_px"]) > 100
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0


@pytest.mark.req("KA-HIL-008")
def test_oversampled_frame_is_the_fine_optics_averaged_with_truth_in_its_pixels() -> None:
    """``oversample=k`` draws the optics k times finer and averages k x k blocks (a sensor with
    bigger pixels behind the same optics); the truth is the fine truth in the final pixels."""
    base = {"seed": 5, "crystal_sizes_um": (100.0, 120.0, 80.0, 150.0), "noise": 0.0,
            "blur_px": 0.6, "um_per_px": 4.0, "brightness": 0.55,
            "bit_depth": 16}  # fmt: skip
    coarse, tc = render(SceneSpec(width=320, height=240, oversample=2, **base))
    fine_spec = {**base, "um_per_px": 2.0, "blur_px": 1.2}
    fine, tf = render(SceneSpec(width=640, height=480, **fine_spec))
    averaged = cv2.resize(fine, (320, 240), interpolation=cv2.INTER_AREA).astype(int)
    # the same light (dim enough never to saturate: a saturated sub-pixel would clip before
    # averaging), averaged before, not after quantisation: within the rounding of both
    assert np.abs(coarse.astype(int) - averaged).max() <= 2  # (of 65535)
    assert tc.drop_class == tf.drop_class == "crystals"
    assert tc.um_per_px == 4.0 and len(tc.crystals) == len(tf.crystals) >= 3
    assert tc.well_radius_px == pytest.approx(tf.well_radius_px / 2)
    assert tc.well_center_px == pytest.approx([(v + 0.5) / 2 - 0.5 for v in tf.well_center_px])
    _check_crystal_truth(tc)  # areas, centroids, Feret lengths in µm, boxes: consistent
    for c, f in zip(tc.crystals, tf.crystals, strict=True):
        assert c.longest_um == pytest.approx(f.longest_um)  # µm do not depend on the pixels
        assert c.area_px == pytest.approx(f.area_px / 4)
        assert c.centroid_px == pytest.approx([(v + 0.5) / 2 - 0.5 for v in f.centroid_px])


@pytest.mark.req("KA-HIL-008")
def test_random_spec_keeps_the_field_of_view_at_every_size() -> None:
    """The same seed at another frame size is the same scene at another resolution: the scale
    follows the size, so the well and the crystals keep their size in µm."""
    ref = random_spec(9, drop_class="crystals")
    assert (ref.width, ref.height, ref.oversample) == (1280, 960, 1)
    _, t_ref = render(ref)
    for w, h, k in ((640, 480, 2), (2560, 1920, 1)):
        spec = random_spec(9, drop_class="crystals", width=w, height=h)
        assert spec.oversample == k
        assert spec.um_per_px * h == pytest.approx(ref.um_per_px * 960)
        assert spec.blur_px / h == pytest.approx(ref.blur_px / 960)
        img, truth = render(spec)
        assert img.shape[:2] == (h, w)
        assert truth.well_radius_px * spec.um_per_px == pytest.approx(
            t_ref.well_radius_px * ref.um_per_px
        )
        got = sorted(c.longest_um for c in truth.crystals)
        want = sorted(c.longest_um for c in t_ref.crystals)
        assert got == pytest.approx(want, rel=0.02)


@pytest.mark.req("KA-HIL-008")
def test_fine_details_keep_their_size_in_um_on_large_frames() -> None:
    """Precipitate on a 2560x1920 frame is the 1280x960 precipitate seen finer: as many grains
    in the drop (not four times as many half-size ones), since grain size and density are set
    for a 960 px short side and scaled up with the frame."""
    for seed in (6, 10):
        ref = random_spec(seed, drop_class="precipitate")
        big = random_spec(seed, drop_class="precipitate", width=2560, height=1920)
        quiet = {"noise": 0.0, "jpeg_quality": None}
        n_r, n_b = (
            render(replace(spec, **quiet))[1].distractors["precipitate_particles"]
            for spec in (ref, big)
        )
        assert n_r > 100 and abs(n_b / n_r - 1) < 0.05, (seed, n_r, n_b)


def _halved_grey(spec: Any) -> tuple[npt.NDArray[np.float32], Any]:
    """The noise-free frame of ``spec`` in grey levels, averaged 2x2 when it is 2560x1920."""
    img, truth = render(replace(spec, noise=0.0, jpeg_quality=None))
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    grey = img.astype(np.float32) / (257.0 if img.dtype == np.uint16 else 1.0)
    if spec.width == 2560:
        grey = cv2.resize(grey, (1280, 960), interpolation=cv2.INTER_AREA)
    return grey, truth


@pytest.mark.req("KA-HIL-008")
def test_precipitate_clouds_stay_in_place_at_every_size() -> None:
    """The same precipitate scene at 2560x1920, averaged down to 1280x960, is the 1280x960 scene:
    its clouds lie in the same places (the grain count, which rounds with the frame, draws from
    another stream). Before the clouds had a stream of their own they moved: mean difference
    3.5-5 grey levels and 69-74 at the 99.9th percentile, against 0.7 and 11-13 now."""
    for seed in (6, 10):
        ref, t_ref = _halved_grey(random_spec(seed, drop_class="precipitate"))
        big, t_big = _halved_grey(
            random_spec(seed, drop_class="precipitate", width=2560, height=1920)
        )
        clouds = t_ref.distractors["precipitate_clouds"]
        assert clouds > 0 and t_big.distractors["precipitate_clouds"] == clouds
        diff = np.abs(cv2.GaussianBlur(ref, (0, 0), 3) - cv2.GaussianBlur(big, (0, 0), 3))
        assert float(diff.mean()) < 1.5 and float(np.percentile(diff, 99.9)) < 30, seed


@pytest.mark.req("KA-HIL-008")
def test_small_crystal_outlines_keep_their_darkness_on_large_frames() -> None:
    """A crystal's outline and facet edges darken as much of the crystal's area in um at
    2560x1920 as at 1280x960: over the crystal's box, on the frame averaged down, the darkness
    is 0.75-1.25 times that at 1280x960 (median over the crystals; 0.9 measured). Drawn one pixel
    wide at every size, as before, small crystals were 0.54-0.83 times as dark on the large
    frame (median 0.69); two pixels wide at full contrast, 1.07-1.69 times (median 1.3)."""
    ratios = []
    for seed in (3, 7, 11):
        fixed = {"crystal_sizes_um": (25.0, 35.0, 45.0), "precipitate": 0.0, "colour": False}
        ref, t_ref = _halved_grey(replace(random_spec(seed, drop_class="crystals"), **fixed))
        big, _ = _halved_grey(
            replace(random_spec(seed, drop_class="crystals", width=2560, height=1920), **fixed)
        )
        for c in t_ref.crystals:
            x, y, w, h = c.bbox_px
            box = (slice(y - 3, y + h + 3), slice(x - 3, x + w + 3))
            level = float(np.median(ref[y - 13 : y - 3, x : x + w]))
            dark_ref = float(np.clip(level - ref[box], 0, None).sum())
            dark_big = float(np.clip(level - big[box], 0, None).sum())
            ratios.append(dark_big / dark_ref)
    assert len(ratios) == 9
    assert 0.75 < float(np.median(ratios)) < 1.25, ratios


# ---------------------------------------------------------------------------------------------
# more real imagers: microfluidic droplets, UV fluorescence, a VMXi-like drop meeting the wall
# ---------------------------------------------------------------------------------------------
#: sha256 (first 16 hex digits) of the image bytes / of the truth's JSON, rendered by the code
#: before these options existed (numpy 2.4.6, OpenCV 5.1.0): default specs must not change
# image / truth (floats to 6 decimals); the image halves are those of the renderer before the
# new imager options; the truth halves were re-taken on 2026-12-07 with rounding, when a new
# OpenCV 5.1.0 wheel moved the "growth" truth in its last bits (the other eight were unchanged)
_DEFAULT_HASHES = {
    "rand0": "cd813269cdf451b4/100659824832dbf3",
    "rand1": "68f33e91b6e342ac/9fed13b51eafb4fa",
    "rand2": "e8994f3c98e2dd4c/de86398930fb0994",
    "rand3": "7a1910355509a5d1/3df02a7438e7e2ec",
    "default_small": "9c0561c741e8df08/47b20b2c2865a8c0",
    "square": "281590960762824c/d3ff1ace4697ab89",
    "none": "2661845b5f2ae998/449f807307c62c18",
    "soft": "469e311543564505/d3ff1ace4697ab89",
    "growth": "bd8b9aa1d89c1422/53179e9700671de1",
}


def _rounded(value: Any) -> Any:
    """``value`` (a truth record) with its floats to 6 decimals: a new build of the same OpenCV
    release moved one truth measure in its last bits (2026-12-07), the image not at all."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _hash(spec: SceneSpec) -> str:
    import hashlib

    img, truth = render(spec)
    image = hashlib.sha256(img.tobytes()).hexdigest()[:16]
    record = json.dumps(_rounded(truth.to_dict()))
    return image + "/" + hashlib.sha256(record.encode()).hexdigest()[:16]


@pytest.mark.req("KA-HIL-008")
def test_default_specs_render_as_before_the_new_imager_options() -> None:
    """The new options default off and draw from random streams of their own, so every spec
    that does not ask for them renders bit for bit as before (trained models depend on it)."""
    if (np.__version__, cv2.__version__) != ("2.4.6", "5.1.0"):
        pytest.skip("the reference hashes were rendered with numpy 2.4.6 and OpenCV 5.1.0")
    specs = {f"rand{s}": random_spec(s, width=320, height=240) for s in range(4)}
    specs |= {
        "default_small": SceneSpec(seed=3, crystals=4, **SMALL),
        "square": SceneSpec(seed=4, well_shape="square", **SMALL),
        "none": SceneSpec(seed=4, well_shape="none", well_zoom=1.6, **SMALL),
        "soft": SceneSpec(seed=4, drop_edge_soft=0.35, colour=True, **SMALL),
        "growth": SceneSpec(
            seed=6, crystal_sizes_um=(50.0, 0.0, 80.0), crystal_max_um=(100.0,) * 3, **SMALL
        ),
    }
    got = {name: _hash(spec) for name, spec in specs.items()}
    assert got == _DEFAULT_HASHES
    # and the new options, asked for with their default values, are the same spec
    explicit = replace(specs["default_small"], droplets=None, drop_meets_wall=False,
                       light="bright", salt_crystals=0)  # fmt: skip
    assert _hash(explicit) == _DEFAULT_HASHES["default_small"]
    assert "salt_crystals" not in render(specs["rand0"])[1].to_dict()


@pytest.mark.req("KA-HIL-008")
def test_new_imager_options_are_checked() -> None:
    with pytest.raises(ValueError, match="drop_meets_wall"):
        SceneSpec(drop_meets_wall=True)  # needs the square sub-well
    with pytest.raises(ValueError, match="droplets"):
        SceneSpec(droplets=2)  # needs well_shape "droplets"
    with pytest.raises(ValueError, match="colour"):
        SceneSpec(light="uv", colour=True)  # a UV image is grey
    with pytest.raises(ValueError, match="light"):
        SceneSpec(light="infrared")


def _line_fit(points: list[tuple[float, float]]) -> tuple[npt.NDArray[np.float64], float]:
    """Unit normal and offset of the least-squares line through ``points``."""
    p = np.asarray(points, dtype=np.float64)
    c = p.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((p - c).T))
    normal = vecs[:, 0]  # the smaller spread's direction: across the line
    return normal, float(normal @ c)


@pytest.mark.req("KA-HIL-008")
def test_microfluidic_droplets_lie_in_the_channel_and_hold_the_crystals() -> None:
    spec = SceneSpec(seed=7, well_shape="droplets", droplets=3, crystals=4, precipitate=0.0,
                     bubbles=0, fibres=0, noise=0.0, width=640, height=480,
                     um_per_px=3.0)  # fmt: skip
    img, truth = render(spec)
    assert truth.drop_class == "crystals" and truth.crystals
    assert len(truth.droplets_px) == 3 == truth.distractors["droplets"]
    assert truth.droplets_px[0] == truth.drop_polygon_px  # the drop is the droplet with crystals
    _check_crystal_truth(truth)  # every crystal inside that droplet
    assert {c.habit for c in truth.crystals} <= {"needle", "cube", "plate", "cluster"}
    # the droplets follow the channel's axis and stay inside it, apart from each other
    centres = [tuple(np.mean(p, axis=0)) for p in truth.droplets_px]
    normal, offset = _line_fit(centres)
    for poly in truth.droplets_px:
        across = np.abs(np.asarray(poly) @ normal - offset)
        assert across.max() < truth.well_radius_px
    for i, a in enumerate(truth.droplets_px):
        for b in truth.droplets_px[i + 1 :]:
            assert all(_inside(a, p) < 0 for p in b)
    # the picture: dark channel walls beyond well_radius_px, a dark ring inside the drop's edge
    cx, cy = truth.well_center_px
    ys, xs = np.mgrid[0:480, 0:640]
    across = np.abs((xs - cx) * normal[0] + (ys - cy) * normal[1])
    oil = across < 0.95 * truth.well_radius_px
    drop = np.zeros(img.shape, np.uint8)
    cv2.fillPoly(drop, [np.round(np.array(truth.drop_polygon_px)).astype(np.int32)], 255)
    for poly in truth.droplets_px:
        cv2.fillPoly(oil.view(np.uint8), [np.round(np.array(poly)).astype(np.int32)], 0)
    wall = (across > truth.well_radius_px + 3) & (across < truth.well_radius_px + 9)
    oil_level = float(np.median(img[oil]))
    assert float(np.median(img[wall])) < 0.5 * oil_level
    ring = (drop > 0) & (cv2.erode(drop, np.ones((7, 7), np.uint8)) == 0)
    core = cv2.erode(drop, np.ones((61, 61), np.uint8)) > 0
    assert float(np.median(img[ring])) < 0.6 * float(np.median(img[core]))
    # in colour and on an oversampled small frame it renders too, with the truth in its pixels
    small = replace(random_spec(7, drop_class="crystals", width=320, height=240),
                    well_shape="droplets", colour=True)  # fmt: skip
    img2, truth2 = render(small)
    assert img2.shape == (240, 320, 3) and small.oversample == 4
    _check_crystal_truth(truth2)


@pytest.mark.req("KA-HIL-008")
def test_uv_light_makes_protein_crystals_bright_and_salt_and_dust_dark() -> None:
    base: dict[str, Any] = {"seed": 12, "crystals": 4, "salt_crystals": 3, "fibres": 4,
                            "bubbles": 1, "precipitate": 0.0, "noise": 1.0, "width": 640,
                            "height": 480, "um_per_px": 3.0}  # fmt: skip
    img, truth = render(SceneSpec(light="uv", **base))
    bright, t_bright = render(SceneSpec(**base))
    # the same scene: only the light differs
    assert truth.crystals == t_bright.crystals and truth.salt_crystals == t_bright.salt_crystals
    assert len(truth.crystals) >= 2 and len(truth.salt_crystals) >= 2
    drop = np.zeros(img.shape, np.uint8)
    cv2.fillPoly(drop, [np.round(np.array(truth.drop_polygon_px)).astype(np.int32)], 255)
    things = np.zeros(img.shape, np.uint8)

    def fill(c: Any, into: npt.NDArray[np.uint8]) -> None:
        cv2.fillPoly(into, [np.round(np.array(c.polygon_px)).astype(np.int32)], 255)

    for c in [*truth.crystals, *truth.salt_crystals]:
        fill(c, things)
    drop_level = float(np.median(img[(drop > 0) & (cv2.dilate(things, np.ones((9, 9))) == 0)]))
    outside = cv2.dilate(drop, np.ones((41, 41), np.uint8)) == 0
    assert float(np.median(img[outside])) < drop_level < 0.15 * 255  # dark field, drop faint
    for c in truth.crystals:  # protein fluoresces: far brighter than what is around it
        own = np.zeros(img.shape, np.uint8)
        fill(c, own)
        inner = cv2.erode(own, np.ones((3, 3), np.uint8)) > 0
        assert float(img[inner].mean()) > 2.5 * drop_level + 20, c.id
    for c in truth.salt_crystals:  # salt does not: no brighter than the drop
        own = np.zeros(img.shape, np.uint8)
        fill(c, own)
        assert float(img[own > 0].mean()) <= drop_level + 2, c.id
        # while in bright field it shows like a crystal (darker outline on a bright drop)
        assert float(bright[own > 0].min()) < 0.6 * float(np.median(bright[drop > 0]))
    # nothing but the crystals (and their halo) is bright: not dust, bubbles or salt
    protein = np.zeros(img.shape, np.uint8)
    for c in truth.crystals:
        fill(c, protein)
    halo = cv2.dilate(protein, np.ones((9, 9), np.uint8))
    assert not ((img > 3 * drop_level + 20) & (halo == 0)).any()
    # salt alone is not a crystal drop
    _, salty = render(SceneSpec(seed=12, drop_class="clear", salt_crystals=2, **SMALL))
    assert salty.drop_class == "other" and salty.other == "salt" and salty.salt_crystals


@pytest.mark.req("KA-HIL-008")
def test_vmxi_drop_meets_two_walls_with_crystals_along_its_meniscus() -> None:
    from kiboauto.hil.scene_imagers import plan_wall_drop
    from kiboauto.hil.scene_layers import plan_geometry

    spec = SceneSpec(seed=3, well_shape="square", drop_meets_wall=True, well_zoom=1.05,
                     crystals=6, size_range_um=(60.0, 200.0), precipitate=0.0, bubbles=0,
                     fibres=0, skin=False, noise=0.0, width=640, height=480,
                     um_per_px=4.0)  # fmt: skip
    img, truth = render(spec)
    assert truth.drop_class == "crystals" and len(truth.crystals) >= 3
    _check_crystal_truth(truth)  # every crystal inside the drop
    geo = plan_wall_drop(spec, plan_geometry(spec))
    assert geo.free_edge is not None
    assert [(float(x), float(y)) for x, y in geo.drop_poly] == truth.drop_polygon_px
    # the drop meets two walls: its outline runs along one vertical and one horizontal wall
    (cx, cy), wr = truth.well_center_px, truth.well_radius_px
    poly = np.array(truth.drop_polygon_px)
    assert (np.abs(np.abs(poly[:, 0] - cx) - wr) < 0.5).any()
    assert (np.abs(np.abs(poly[:, 1] - cy) - wr) < 0.5).any()
    # the wall is dark, the floor bright
    ys, xs = np.mgrid[0:480, 0:640]
    box = np.maximum(np.abs(xs - cx), np.abs(ys - cy))
    floor = float(np.median(img[box < 0.8 * wr]))
    assert float(np.median(img[box > wr + 0.06 * 480])) < 0.3 * floor
    # the meniscus band along the free edge is shaded, darker than the drop's middle
    drop = np.zeros(img.shape, np.uint8)
    cv2.fillPoly(drop, [np.round(poly).astype(np.int32)], 255)
    edge = np.full(img.shape, 255, np.uint8)
    cv2.polylines(edge, [np.round(geo.free_edge).astype(np.int32)], False, 0, 1)
    d_free = cv2.distanceTransform(edge, cv2.DIST_L2, 5)
    crystals = np.zeros(img.shape, np.uint8)
    for c in truth.crystals:
        cv2.fillPoly(crystals, [np.round(np.array(c.polygon_px)).astype(np.int32)], 255)
    clear = (drop > 0) & (cv2.dilate(crystals, np.ones((7, 7), np.uint8)) == 0)
    band = clear & (d_free > 2) & (d_free < 0.3 * geo.meniscus_px)
    middle = clear & (d_free > 2 * geo.meniscus_px) & (box < wr - 0.1 * wr)
    assert float(np.median(img[band])) < 0.8 * float(np.median(img[middle]))
    # most crystals reach into the meniscus band
    near = sum(min(d_free[round(y), round(x)] for x, y in c.polygon_px)
               < geo.meniscus_px for c in truth.crystals)  # fmt: skip
    assert near >= len(truth.crystals) / 2
    # clear crystals: bright insides (about the drop's level), darker outlines
    level = float(np.median(img[middle]))
    for c in truth.crystals:
        own = np.zeros(img.shape, np.uint8)
        cv2.fillPoly(own, [np.round(np.array(c.polygon_px)).astype(np.int32)], 255)
        inner = cv2.erode(own, np.ones((5, 5), np.uint8)) > 0
        rim = (own > 0) & ~inner
        if inner.sum() > 20:
            assert float(np.median(img[inner])) > 0.7 * level, c.id
        assert float(img[rim].min()) < 0.8 * level, c.id


@pytest.mark.req("KA-HIL-008")
def test_vmxi_crystals_are_many_line_the_meniscus_and_have_strong_dark_outlines() -> None:
    """As in real VMXi frames: many crystals, a good share touching the meniscus band, several
    large; transparent blocks with dark outlines (well below half the drop's local level along
    the outline) and bright insides."""
    from kiboauto.hil.scene_imagers import plan_wall_drop
    from kiboauto.hil.scene_layers import plan_geometry

    ratios: list[float] = []
    insides: list[float] = []
    for seed in (100000, 100002, 100005):
        spec = replace(random_spec(seed, drop_class="crystals", width=640, height=480),
                       well_shape="square", drop_meets_wall=True)  # fmt: skip
        img, truth = render(spec)
        grey = (img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)).astype(float)
        crystals = truth.crystals
        assert truth.drop_class == "crystals" and 6 <= len(crystals) <= 25, seed
        _check_crystal_truth(truth)
        geo = plan_wall_drop(spec, plan_geometry(spec))
        assert geo.free_edge is not None
        edge = np.full(grey.shape, 255, np.uint8)
        cv2.polylines(edge, [np.round(geo.free_edge).astype(np.int32)], False, 0, 1)
        d_free = cv2.distanceTransform(edge, cv2.DIST_L2, 5)
        h, w = grey.shape
        near = 0
        for c in crystals:
            pts = np.round(np.array(c.polygon_px)).astype(int)
            d = d_free[np.clip(pts[:, 1], 0, h - 1), np.clip(pts[:, 0], 0, w - 1)]
            near += int(float(d.min()) < geo.meniscus_px)
        assert near >= len(crystals) / 3, (seed, near, len(crystals))
        # several large: the largest at least 8 % of the drop's width
        drop_w = float(np.ptp(np.array(truth.drop_polygon_px), axis=0).mean())
        assert max(c.longest_um for c in crystals) / spec.um_per_px > 0.08 * drop_w
        # contrast against the drop's local level (its median near the crystal, off crystals)
        drop = np.zeros(grey.shape, np.uint8)
        cv2.fillPoly(drop, [np.round(np.array(truth.drop_polygon_px)).astype(np.int32)], 255)
        every = np.zeros(grey.shape, np.uint8)
        for c in crystals:
            cv2.fillPoly(every, [np.round(np.array(c.polygon_px)).astype(np.int32)], 255)
        free = (drop > 0) & (cv2.dilate(every, np.ones((9, 9), np.uint8)) == 0)
        for c in crystals:
            poly = np.round(np.array(c.polygon_px)).astype(np.int32)
            x, y, bw, bh = c.bbox_px
            near_c = np.zeros(grey.shape, bool)
            near_c[max(0, y - bh) : y + 2 * bh, max(0, x - bw) : x + 2 * bw] = True
            local = float(np.median(grey[free & near_c] if (free & near_c).sum() > 20
                                     else grey[free]))  # fmt: skip
            ring = np.zeros(grey.shape, np.uint8)
            cv2.polylines(ring, [poly], True, 255, 3)
            ratios.append(float(np.percentile(grey[ring > 0], 5)) / local)
            own = np.zeros(grey.shape, np.uint8)
            cv2.fillPoly(own, [poly], 255)
            inner = cv2.erode(own, np.ones((9, 9), np.uint8)) > 0
            if inner.sum() > 30:
                insides.append(float(np.median(grey[inner])) / local)
    # the outline's dark edge: well below half the local level for most crystals
    assert float(np.median(ratios)) < 0.45, np.round(ratios, 2)
    assert float(np.mean(np.array(ratios) < 0.6)) > 0.8, np.round(ratios, 2)
    # bright insides: about the drop's level
    assert insides and float(np.median(insides)) > 0.85, np.round(insides, 2)
