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
    # measured: 1.25-1.86 x the truth on seeds 0..7 (the outline takes in the dark rim band and
    # part of the floor next to it): the drop is found, its area is not yet accurate
    ratio = r.drop_area_fraction / _truth_area_frac(img, truth)
    assert 1.0 <= ratio <= 2.0


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
    # measured: 6 of 8 within 1.27-1.44 x the truth; 2 take a bubble's outline for the drop
    assert sum(0.9 <= x <= 1.6 for x in ratios) >= 6, ratios


def _real(name: str) -> Inspection:
    return inspect(load_image(REAL / name))


VMXI = [
    "vmxi_crystalmatch_A01_1.jpg",
    "vmxi_crystalmatch_A01_2.jpg",
    "vmxi_crystalmatch_A03.jpg",
    "vmxi_crystalmatch_A10_1.jpg",
    "vmxi_crystalmatch_A10_2.jpg",
]


@pytest.mark.req("KA-VIS-009")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real imager frames not present at {REAL}")
@pytest.mark.parametrize("name", VMXI)
def test_real_vmxi_frames(name: str) -> None:
    r = _real(name)
    _consistent(r)
    assert r.well is not None and r.well.shape == "square"
    assert r.drop_found
    # was 0.03-0.10 (the meniscus band only); the drop's far side along the wall is still missed
    assert r.drop_area_fraction > 0.10
    assert not (r.drop_class == "crystals" and not r.crystals)


@pytest.mark.req("KA-VIS-009")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real imager frames not present at {REAL}")
def test_real_rock_imager_frame() -> None:
    r = _real("rockimager_xchemchimp_97wo_01A_1.jpg")
    _consistent(r)
    assert r.drop_class == "crystals" and len(r.crystals) >= 5
    assert r.well is not None and r.well.shape == "round"
    assert r.drop_found and 0.10 < r.drop_area_fraction < 0.30
