"""The calibrated drop-class confidence (issue 13, item 3): the fitting, the shipped curves and
what an inspection reports."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiboauto.hil import scene as S
from kiboauto.vision import inspect
from kiboauto.vision.calibration import (
    GROUPS,
    calibrate,
    curve_scenes,
    expected_calibration_error,
    fit_curve,
    geometry_group,
    group_of,
    isotonic,
)
from kiboauto.vision.calibration_table import CONFIDENCE_CURVES
from kiboauto.vision.types import WellInfo


@pytest.mark.req("KA-VIS-010")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
def test_isotonic_is_non_decreasing_and_keeps_the_sum(values: list[float]) -> None:
    y = np.asarray(values)
    fit = isotonic(y)
    assert fit.shape == y.shape
    assert (np.diff(fit) >= -1e-12).all()
    assert float(fit.sum()) == pytest.approx(float(y.sum()), abs=1e-9)
    if (np.diff(y) >= 0).all():  # already in order: left as it is
        assert np.allclose(fit, y)


@pytest.mark.req("KA-VIS-010")
def test_a_known_overconfidence_is_fitted_and_removed_on_new_answers() -> None:
    """Answers right with probability raw^2 (a model that claims 0.8 where it is right 64 % of
    the time): the curve fitted on one sample calibrates another."""
    rng = np.random.default_rng(7)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        raw = rng.uniform(0.3, 1.0, n)
        return raw, rng.uniform(size=n) < raw**2

    raw, right = sample(4000)
    xs, ys = fit_curve(raw.tolist(), right.tolist(), max_knots=24)
    assert xs[0] == 0.0 and xs[-1] == 1.0 and len(xs) <= 26
    assert all(b > a for a, b in pairwise(xs))
    assert all(b >= a for a, b in pairwise(ys))
    new_raw, new_right = sample(4000)
    before = expected_calibration_error(new_raw, new_right)
    after = expected_calibration_error(np.interp(new_raw, xs, ys), new_right)
    assert before > 0.12, before
    assert after < 0.03, after


@pytest.mark.req("KA-VIS-010")
def test_fit_curve_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError):
        fit_curve([], [])
    with pytest.raises(ValueError):
        fit_curve([0.5, 0.6], [True])


@pytest.mark.req("KA-VIS-010")
def test_expected_calibration_error_of_simple_cases() -> None:
    assert expected_calibration_error([], []) == 0.0
    # always 0.9 sure, right 9 times in 10: calibrated
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    # always 1.0 sure, right half of the time: off by 0.5
    assert expected_calibration_error([1.0] * 4, [True, False] * 2) == pytest.approx(0.5)


@pytest.mark.req("KA-VIS-010")
def test_geometry_groups() -> None:
    whole = WellInfo((100.0, 100.0), 80.0)
    clipped = WellInfo((100.0, 100.0), 80.0, clipped=True)
    square = WellInfo((100.0, 100.0), 80.0, shape="square")
    assert geometry_group(whole, False) == "round_well"
    assert geometry_group(clipped, False) == "other_geometry"
    assert geometry_group(square, False) == "other_geometry"
    assert geometry_group(None, False) == "other_geometry"
    assert geometry_group(whole, True) == "dark_field"


@pytest.mark.req("KA-VIS-010")
def test_the_shipped_curves_are_fitted_monotone_maps_of_every_group() -> None:
    assert set(CONFIDENCE_CURVES) == set(GROUPS)
    for group, (xs, ys) in CONFIDENCE_CURVES.items():
        assert curve_scenes(group) >= 100, group
        assert xs[0] == 0.0 and xs[-1] == 1.0, group
        assert all(b > a for a, b in pairwise(xs)), group
        assert all(b >= a for a, b in pairwise(ys)), group
        assert all(0.0 <= y <= 1.0 for y in ys), group
        lo, hi = calibrate(0.0, group), calibrate(1.0, group)
        assert lo is not None and hi is not None and lo <= hi
    assert calibrate(0.5, "no such group") is None


@pytest.mark.req("KA-VIS-010")
@pytest.mark.parametrize(
    ("options", "group"),
    [
        ({}, "round_well"),
        ({"well_shape": "square"}, "other_geometry"),
        ({"light": "uv", "colour": False}, "dark_field"),
    ],
)
def test_inspection_reports_the_calibrated_confidence_and_the_raw_one(
    options: dict[str, object], group: str
) -> None:
    spec = replace(S.random_spec(100_004, width=640, height=480), **options)
    img, _ = S.render(spec)
    r = inspect(img, um_per_px=spec.um_per_px)
    assert group_of(r) == group
    raw = r.features["raw_confidence"]
    assert 0.0 <= raw <= 1.0
    assert r.confidence == pytest.approx(calibrate(raw, group))
    said = [s for s in r.reasons if "calibrated on" in s]
    assert len(said) == 1 and group.replace("_", " ") in said[0], r.reasons
    assert r.to_dict()["confidence"] == pytest.approx(r.confidence, abs=5e-4)
