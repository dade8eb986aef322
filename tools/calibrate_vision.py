"""Fit the confidence curves of the drop class (kiboauto/vision/calibration_table.py).

Renders scenes of every imager type and light (``hil/imager_cells.py``) from seeds held apart
from training (below 10000), from the accuracy benchmark (10000 on) and from the imager
benchmark (100000 on): calibration seeds start at 200000. Each scene is inspected; its raw
confidence (``features["raw_confidence"]``) and whether the class was right are collected per
geometry group (round whole well, other geometry, dark field), and a monotone curve is fitted to
them (isotonic regression, pool-adjacent-violators), kept as at most 24 knots.

    python tools/calibrate_vision.py [--images 60] [--jobs 2] [--check]

``--images``: scenes per (imager, light) cell (21 cells). ``--check`` prints the expected
calibration error before and after on the fitted scenes without writing the table.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "kiboauto" / "vision" / "calibration_table.py"
CAL_SEED0 = 200_000
MAX_KNOTS = 24


def scene_row(job: tuple[int, str, str]) -> tuple[str, float, bool]:
    """(geometry group, raw confidence, class right) of one calibration scene."""
    import cv2

    from kiboauto.hil.imager_cells import cell_spec
    from kiboauto.hil.scene import render
    from kiboauto.vision import inspect
    from kiboauto.vision.calibration import group_of

    cv2.setNumThreads(1)
    seed, imager, light = job
    spec = cell_spec(seed, imager, light)
    image, truth = render(spec)
    r = inspect(image, um_per_px=truth.um_per_px)
    return group_of(r), float(r.features["raw_confidence"]), r.drop_class == truth.drop_class


def _numbers(values: tuple[float, ...], indent: str) -> list[str]:
    """``values`` as a parenthesised tuple over lines of at most 100 characters."""
    lines, line = [f"{indent}("], f"{indent}    "
    for v in values:
        item = f"{v!r}, "
        if len(line) + len(item.rstrip()) > 100:
            lines.append(line.rstrip())
            line = f"{indent}    "
        line += item
    lines += [line.rstrip(), f"{indent}),"]
    return lines


def table_source(
    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]], n: dict[str, int]
) -> str:
    """The generated lines between the table module's markers (``ruff format`` leaves them as
    they are: they lie in a ``# fmt: off`` region)."""
    lines = ["CURVE_SCENES: dict[str, int] = {"]
    lines += [f'    "{g}": {n[g]},' for g in sorted(n)]
    lines.append("}")
    lines.append("CONFIDENCE_CURVES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {")
    for g, (xs, ys) in sorted(curves.items()):
        lines.append(f'    "{g}": (')
        lines += _numbers(xs, "        ")
        lines += _numbers(ys, "        ")
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=60, help="scenes per (imager, light) cell")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--check", action="store_true", help="report only; leave the table as it is")
    args = ap.parse_args()
    if args.images < 10:
        ap.error("--images must be at least 10")
    sys.path.insert(0, str(ROOT))
    from kiboauto.hil.imager_cells import IMAGERS, LIGHTS
    from kiboauto.vision.calibration import expected_calibration_error, fit_curve

    seeds = range(CAL_SEED0, CAL_SEED0 + args.images)
    jobs = [(s, im, li) for im in IMAGERS for li in LIGHTS for s in seeds]
    t0 = time.perf_counter()
    rows: list[tuple[str, float, bool]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(scene_row, jobs, chunksize=4), 1):
            rows.append(row)
            if i % 100 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} scenes ({time.perf_counter() - t0:.0f} s)", flush=True)
    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    counts: dict[str, int] = {}
    for g in sorted({r[0] for r in rows}):
        raw = [r[1] for r in rows if r[0] == g]
        right = [r[2] for r in rows if r[0] == g]
        # runs of at least 40 scenes: the y of a run is its right answers plus one over its size
        # plus two, which on a short run would hold a always-right curve well below 1
        curves[g] = fit_curve(raw, right, max(2, min(MAX_KNOTS, len(raw) // 40)))
        counts[g] = len(raw)
        c, y = np.asarray(raw), np.asarray(right, dtype=np.float64)
        cal = np.interp(c, *curves[g])
        before, after = expected_calibration_error(c, y), expected_calibration_error(cal, y)
        print(
            f"{g:15s} {len(raw):5d} scenes, accuracy {y.mean():.3f}; ECE raw {before:.3f} "
            f"-> calibrated {after:.3f} (on the fitted scenes)"
        )
    if args.check:
        return 0
    from train_vision import put_block  # tools/ is on the path of a tool run as a script

    TABLE.write_text(
        put_block(TABLE.read_text(), "#@CURVES", "#@END", table_source(curves, counts))
    )
    print(f"wrote {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
