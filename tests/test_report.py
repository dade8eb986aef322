"""`kiboauto report`: a real journal with images in a run directory, rendered to PNGs and HTML."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiboauto.devices import ActionMarker
from kiboauto.engine.report import ReportError, render_report, report_main
from kiboauto.engine.report_plots import decimate
from kiboauto.hil.scene import SceneSpec, render, render_cells
from kiboauto.journal import JOURNAL_NAME, Journal, TelemetryRow
from kiboauto.vision import CrystalMeasure, DropInfo, Inspection, WellInfo

PROTOCOL = "name: lysozyme-grow\nversion: 1\nsteps:\n  - dispense: 50 uL\n"
H = 3600.0
PLOTS = ("temperature", "volumes", "events", "crystals", "confluence", "mosaic")
SCRIPT = "<script>alert('x')</script> & \"quoted\""


def _marker(device: str, kind: str, target: float, created: float) -> ActionMarker:
    return ActionMarker(
        device, f"NE1000-{device}", kind, target, 100.0, {"infused": 0.0}, "b1", created, 0.001
    )


def _drop_result(seed: int, size_um: float, path: Path) -> dict[str, object]:
    """A drop image written to ``path`` and the inspection result the engine would journal."""
    spec = SceneSpec(
        width=320,
        height=240,
        um_per_px=8.0,
        seed=seed,
        crystals=2,
        crystal_sizes_um=(size_um, size_um * 0.6),
    )
    image, truth = render(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    crystals = [
        CrystalMeasure(
            c.id, c.centroid_px, c.bbox_px, c.area_px, c.area_px * 64.0, c.longest_um, c.aspect, 0.9
        )
        for c in truth.crystals
    ]
    poly = tuple((round(x), round(y)) for x, y in truth.drop_polygon_px)
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    drop = DropInfo(
        (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)),
        1000.0,
        (float(np.mean(xs)), float(np.mean(ys))),
        poly,
    )
    well = WellInfo(truth.well_center_px, truth.well_radius_px)
    result = Inspection(
        "crystals" if crystals else "clear", 0.87, crystals, well, drop, {}, (320, 240), 8.0
    ).to_dict()
    result["count"] = len(crystals)
    result["max_length_um"] = max((c.length_um for c in crystals), default=0.0)
    return result


def _inspect(
    j: Journal, run_dir: Path, cell: str, rel: str, result: dict[str, object], t: float
) -> None:
    p = run_dir / rel
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "0" * 64
    j.record_inspection(cell, digest, rel, result, t, model_version="vision-1")


def make_run(run_dir: Path, *, hours: float = 8.0, step_s: float = 60.0) -> None:
    """A run of ``hours``: states with a hold, telemetry, pumps, events, drops and cells."""
    run_dir.mkdir(parents=True, exist_ok=True)
    end = hours * H
    with Journal.open(run_dir) as j:
        j.start_run(PROTOCOL, "station: bench\n", t_wall=1_760_000_000.0)
        for a, b, trig, why, t in [
            ("idle", "loaded", "load", "protocol loaded", 0.0),
            ("loaded", "running", "start", "ground command", 0.0),
            ("running", "holding", "limit", "incubator.temperature red", 0.40 * end),
            ("holding", "running", "resume", "ground command", 0.50 * end),
            ("running", "paused", "pause", "crew access", 0.75 * end),
            ("paused", "running", "resume", "crew done", 0.80 * end),
            ("running", "completed", "end", "all steps done", end),
        ]:
            j.record_transition(a, b, trig, why, t, 1_760_000_000.0 + t)
        ts = np.arange(0.0, end + 1, step_s)
        temp = 20.0 + 0.1 * np.sin(ts / 900.0)
        temp[(ts > 0.38 * end) & (ts < 0.45 * end)] += 5.5  # the excursion that caused the hold
        setpoint = np.where(ts < 0.6 * end, 20.0, 22.0)
        temp[ts >= 0.6 * end] += 2.0
        rows = [
            TelemetryRow("incubator", "temperature", float(v), "degC", "OK", float(x))
            for x, v in zip(ts, temp, strict=True)
        ]
        rows += [
            TelemetryRow("incubator", "setpoint", float(v), "degC", "OK", float(x))
            for x, v in zip(ts, setpoint, strict=True)
        ]
        rows += [
            TelemetryRow("camera", "sensor_temp", 300.0 + float(i % 7) * 0.1, "K", "OK", float(x))
            for i, x in enumerate(ts[::10])
        ]
        rows += [
            TelemetryRow("pump1", "volume", 1.0, "uL", "OK", 10.0),
            TelemetryRow("pump1", "status", "I", "", "OK", 10.0),
        ]
        j.record_telemetry(rows)
        limits = {
            "incubator.temperature": {"unit": "degC", "yellow": [18.0, 23.5], "red": [15.0, 25.0]}
        }
        j.set_checkpoint("limits", limits)
        for device, kind, ul, t0 in [
            ("pump1", "dispense", 50.0, 0.10 * end),
            ("pump1", "withdraw", 10.0, 0.20 * end),
            ("pump2", "dispense", 25.0, 0.15 * end),
            ("pump1", "dispense", 30.0, 0.60 * end),
        ]:
            aid = j.record_intent("main/feed", _marker(device, kind, ul, t0), t_protocol=t0)
            j.end_action(aid, {"delivered_ul": ul}, t_protocol=t0 + 30.0)
        lost = j.record_intent(
            "main/feed", _marker("pump2", "dispense", 5.0, 0.7 * end), t_protocol=0.7 * end
        )
        j.mark_lost(lost, "pump power-cycled", t_protocol=0.7 * end + 5)
        row = j.record_step_start("main/feed", 1, 0.0, None)
        j.record_step_end(row, "ok", 0.2 * end, None)
        j.record_step_start("main/grow", 1, 0.2 * end, None)
        for code, sev, msg, t0 in [
            ("RUN_START", "info", "run started", 0.0),
            ("TEMP_HIGH", "WARNING", "incubator.temperature 23.9 degC above yellow", 0.39 * end),
            ("TEMP_RED", "alarm", SCRIPT, 0.40 * end),
            ("ACTION_LOST", "critical", "pump2 action lost", 0.70 * end),
            ("NOTE", "info", "crew note", 0.78 * end),
            ("ODD", "mystery", "an unknown severity", 0.9 * end),
        ]:
            j.record_event(code, sev, msg, t0)
        for k, frac in enumerate((0.25, 0.5, 0.75, 1.0)):
            rel = f"images/cell1/{k:03d}.png"
            _inspect(
                j,
                run_dir,
                "cell1",
                rel,
                _drop_result(7, 40 + 120 * frac, run_dir / rel),
                frac * end,
            )
        rel = "images/cell2/000.png"
        _inspect(j, run_dir, "cell2", rel, _drop_result(11, 60.0, run_dir / rel), 0.5 * end)
        # the last image of cell2 is missing on disk
        _inspect(
            j,
            run_dir,
            "cell2",
            "images/cell2/001.png",
            {
                "drop_class": "clear",
                "confidence": 0.5,
                "crystals": [],
                "count": 0,
                "max_length_um": 0.0,
            },
            end,
        )
        for k, frac in enumerate((0.3, 0.6, 0.9)):
            rel = f"images/culture/{k:03d}.png"
            image, covered = render_cells(k, 0.2 + 0.6 * frac, width=256, height=192)
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(run_dir / rel), image)
            _inspect(j, run_dir, "culture1", rel, {"confluence": covered}, frac * end)


@pytest.mark.req("KA-ENG-008")
def test_every_plot_and_a_self_contained_page(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir)
    files = render_report(run_dir)
    out = run_dir / "report"
    assert files.html == out / "index.html"
    assert [p.name for p in files.pngs] == [f"{n}.png" for n in PLOTS]
    for png in files.pngs:
        image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        assert image is not None, png
        h, w = image.shape[:2]
        assert 300 <= h <= 3000 and 600 <= w <= 3000, (png, w, h)
        assert float(image.std()) > 5, f"{png} looks blank"
    page = files.html.read_text(encoding="utf-8")
    for name in PLOTS:
        assert f'src="{name}.png"' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert "lysozyme-grow" in page and "completed" in page
    assert hashlib.sha256(PROTOCOL.encode()).hexdigest() in page
    assert "8 h 0 min" in page  # protocol duration
    assert "80.0" in page and "10.0" in page and "25.0" in page  # pump totals (µL)
    assert "no data" not in page


@pytest.mark.req("KA-ENG-008")
def test_plots_without_data_are_skipped_and_stale_ones_removed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "crystals.png").write_bytes(b"stale")
    with Journal.open(run_dir) as j:
        j.start_run(": not yaml [", "station: bench\n")
        j.record_transition("idle", "running", "start", "ground", 0.0, None)
        j.record_transition("running", "aborted", "abort", "ground", 90.0, None)
    files = render_report(run_dir, out)
    assert [p.name for p in files.pngs] == ["events.png"]
    assert not (out / "crystals.png").exists()
    page = files.html.read_text(encoding="utf-8")
    assert page.count("no data") == 5 + 2  # five plots, pump totals, events table
    assert "(protocol not readable)" in page and "aborted" in page


@pytest.mark.req("KA-ENG-008")
def test_user_errors_are_report_errors_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ReportError, match="no such run directory"):
        render_report(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match=f"no {JOURNAL_NAME} in") as err:
        render_report(empty)
    assert err.value.run_dir == empty and "no journal.sqlite" in err.value.reason
    assert not (empty / JOURNAL_NAME).exists()  # the report never creates a journal
    with Journal.open(empty):
        pass  # a journal file with no run in it
    with pytest.raises(ReportError, match="holds no run"):
        render_report(empty)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / JOURNAL_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(ReportError, match="file is not a database"):
        render_report(garbage)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / JOURNAL_NAME) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()

    assert report_main(foreign, None) == 2
    captured = capsys.readouterr()
    assert "kiboauto report: cannot report on" in captured.err and "foreign" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Journal.open(run_dir) as j:
        j.start_run(PROTOCOL, "")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert report_main(run_dir, blocker / "report") == 2
    assert "cannot write the report" in capsys.readouterr().err
    assert report_main(run_dir, None) == 0
    assert str(run_dir / "report" / "index.html") in capsys.readouterr().out


@pytest.mark.req("KA-ENG-008")
def test_long_runs_are_thinned_without_losing_spikes(tmp_path: Path) -> None:
    t = np.arange(200_000, dtype=np.float64)
    v = np.sin(t / 5000.0)
    v[123_457] = 9.0
    v[7] = -9.0
    tt, vv = decimate(t, v, 2000)
    assert len(tt) <= 2100 and np.all(np.diff(tt) > 0)
    assert vv.max() == 9.0 and vv.min() == -9.0 and tt[0] == 0 and tt[-1] == t[-1]

    run_dir = tmp_path / "long"  # 14 days of 1-minute telemetry: 20,161 rows per reading
    make_run(run_dir, hours=14 * 24, step_s=60.0)
    started = time.perf_counter()
    files = render_report(run_dir)
    elapsed = time.perf_counter() - started
    assert len(files.pngs) == len(PLOTS)
    assert "14 d 0 h 0 min" in files.html.read_text(encoding="utf-8")
    assert math.isfinite(elapsed)
    print(f"14-day report rendered in {elapsed:.2f} s")
