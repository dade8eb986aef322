"""Confluence benchmark: per field kind, MAE and bias of ``analyse_field`` against the renderer's
exact coverage, and latency p50/p95 at 1280x960 next to ``cv2.imdecode`` of the same field as
JPEG (the baseline, same run, single thread).

    .venv/bin/python bench/confluence_bench.py --confluence [--fields 7] [--repeats 20]

Seeds 10000+ (never used while tuning or training: the models behind it were trained on
100000+, see tools/train_confluence.py). The last lines pool every field whose true coverage is
>= 0.8 (dense sheets) and all fields.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from kiboauto.hil.scene_cells import FIELD_KINDS, render_cell_field
from kiboauto.vision.cells import analyse_field

KINDS = FIELD_KINDS


def _ms(times: list[float]) -> tuple[float, float]:
    arr = np.array(times) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def main() -> None:
    """Print the confluence figure (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--confluence", action="store_true", help="the confluence figure (default)")
    ap.add_argument("--fields", type=int, default=7, help="fields per kind (0.05..0.95)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per field kind")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"{'kind':10s} {'MAE':>6s} {'bias':>7s} {'max':>6s}  {'p50 ms':>7s} {'p95 ms':>7s}"
          f"  {'jpeg p50':>8s} {'jpeg p95':>8s}")  # fmt: skip
    all_err: list[float] = []
    dense_err: list[float] = []
    for k, (name, opt) in enumerate(KINDS.items()):
        errs: list[float] = []
        for i, level in enumerate(np.linspace(0.05, 0.95, args.fields)):
            field = render_cell_field(10000 + 100 * k + i, float(level), opt)
            errs.append(analyse_field(field.image).confluence - field.confluence)
            if field.confluence >= 0.8:
                dense_err.append(errs[-1])
        field = render_cell_field(10000 + 100 * k + 99, 0.5, opt)
        eight = field.image if field.image.dtype == np.uint8 else cv2.convertScaleAbs(
            field.image, alpha=255.0 / 65535.0
        )  # fmt: skip
        ok, jpeg = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        analyse_field(field.image)
        t_an, t_jpg = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            analyse_field(field.image)
            t1 = time.perf_counter()
            cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
            t_an.append(t1 - t0)
            t_jpg.append(time.perf_counter() - t1)
        e = np.array(errs)
        all_err += errs
        a50, a95 = _ms(t_an)
        j50, j95 = _ms(t_jpg)
        print(f"{name:10s} {np.abs(e).mean():6.3f} {e.mean():+7.3f} {np.abs(e).max():6.3f}"
              f"  {a50:7.1f} {a95:7.1f}  {j50:8.1f} {j95:8.1f}")  # fmt: skip
    e = np.array(dense_err)
    print(f"{'dense>=0.8':10s} {np.abs(e).mean():6.3f} {e.mean():+7.3f} {np.abs(e).max():6.3f}")
    e = np.array(all_err)
    print(f"{'all':10s} {np.abs(e).mean():6.3f} {e.mean():+7.3f} {np.abs(e).max():6.3f}")


if __name__ == "__main__":
    main()
