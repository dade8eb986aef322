"""`kiboauto inspect` as a user runs it: files in, JSON lines out, bad files reported, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiboauto.hil.growth import GrowthCell
from kiboauto.hil.scene import random_spec, render
from kiboauto.vision import inspect, load_image

KIBOAUTO = [sys.executable, "-m", "kiboauto"]
SEED0 = 20_000  # away from the seeds the vision core is tuned on


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KIBOAUTO, "inspect", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.req("KA-VIS-007")
def test_json_lines_per_image_errors_do_not_stop_the_rest(tmp_path: Path) -> None:
    good = []
    for k, drop_class in enumerate(("crystals", "clear")):
        image, truth = render(random_spec(SEED0 + k, drop_class=drop_class))
        path = tmp_path / f"{drop_class}.png"
        cv2.imwrite(str(path), image)
        good.append((path, truth))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.tif"
    overlays = tmp_path / "overlays"
    paths = [str(good[0][0]), str(corrupt), str(empty), str(missing), str(good[1][0])]
    result = _run(*paths, "--json", "--um-per-px", "2.0", "--overlay", str(overlays))
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths  # one line each, in order, none lost
    ok = [line for line in lines if "error" not in line]
    bad = [line for line in lines if "error" in line]
    assert len(ok) == 2 and len(bad) == 3
    for line in bad:
        assert line["image"] in line["error"]  # the message says which file
    for line in ok:
        assert set(line) >= {"class", "confidence", "count", "max_length_um", "crystals"}
        assert line["latency_ms"] > 0
        assert Path(line["overlay"]).is_file()
        assert line["count"] == len(line["crystals"])
    # The command reports exactly what the vision core finds in the same file (accuracy itself
    # is measured in test_vision.py and bench/vision_bench.py).
    for line, (path, _truth) in zip(ok, good, strict=True):
        expected = inspect(load_image(path), um_per_px=2.0)
        assert line["class"] == expected.drop_class
        assert line["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
        raw = expected.features["raw_confidence"]
        assert line["raw_confidence"] == pytest.approx(raw, abs=1e-4)
        assert line["reasons"] == expected.reasons
        assert any("calibrated on" in r for r in line["reasons"])
        assert line["count"] == len(expected.crystals)
        lengths = [c.length_um for c in expected.crystals]
        assert line["max_length_um"] == pytest.approx(max(lengths, default=0.0), abs=0.01)


@pytest.mark.req("KA-VIS-007")
def test_table_output_and_helpful_errors(tmp_path: Path) -> None:
    image, _ = render(random_spec(SEED0 + 7, drop_class="precipitate", width=640, height=480))
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), image)
    result = _run(str(path), "--um-per-px", "4.0")
    assert result.returncode == 0, result.stderr
    assert "p.png" in result.stdout
    nothing = _run()
    assert nothing.returncode == 2
    assert "--track" in nothing.stderr


@pytest.mark.req("KA-VIS-005")
@pytest.mark.req("KA-VIS-007")
def test_track_folder_writes_growth_report_and_plot(tmp_path: Path) -> None:
    """A rendered growth series of one cell, tracked; lengths follow the renderer's truth."""
    cell = GrowthCell(seed=SEED0 + 11, outcome="crystals")
    series = tmp_path / "cell01"
    series.mkdir()
    hours = [6, 12, 18, 24, 36, 48, 72]
    truths = {}
    for h in hours:
        image, truth = render(cell.spec(h * 3600.0))
        cv2.imwrite(str(series / f"cell01_t{h}h.png"), image)
        truths[h] = truth
    result = _run("--track", str(series), "--um-per-px", str(truths[hours[-1]].um_per_px), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    plot = Path(report["plot"])
    assert plot.is_file() and plot.stat().st_size > 10_000
    png = cv2.imread(str(plot))
    assert png is not None and png.shape[0] > 300
    final_truth = sorted(c.longest_um for c in truths[hours[-1]].crystals)
    tracked = report["tracks"]
    assert tracked, "no crystal tracked"
    final_found = sorted(
        c["lengths_um"][-1] for c in tracked if c["times_s"][-1] == hours[-1] * 3600
    )
    assert len(final_found) == pytest.approx(len(final_truth), abs=1)
    assert np.median(final_found) == pytest.approx(np.median(final_truth), rel=0.3)
    for crystal in tracked:  # growth, not shrinkage, along each track
        lengths = crystal["lengths_um"]
        assert lengths[-1] >= lengths[0] * 0.9
