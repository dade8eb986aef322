"""Vision per imager type and light: class accuracy, crystal recall and precision, confidence.

Imager types and lights: ``hil/imager_cells.py`` (round, square, zoomed, no well, soft edge,
droplets, VMXi-like; bright-field, cross-polarised, UV).

Default mode: ``--images N`` scenes per (imager, light) cell from the evaluation seeds 100000..
(the same seeds in every cell: only geometry and light change; classes balanced; 1280x960).
Reported per cell: class accuracy, crystal recall and precision (matching as in
``bench/vision_bench.py``), mean confidence and its expected calibration error (ECE, 10 equal
bins: how far the confidence is from how often the class is right), for the calibrated confidence
the result reports and for the raw one before calibration (``features["raw_confidence"]``; the
curves were fitted by ``tools/calibrate_vision.py`` on seeds 200000.., apart from these).

    python bench/vision_imagers.py [--images 40] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from vision_bench import match_detections  # noqa: E402  (bench/ is on the path)

from kiboauto.hil.imager_cells import IMAGERS, LIGHTS, cell_spec  # noqa: E402
from kiboauto.vision.calibration import expected_calibration_error  # noqa: E402

EVAL_SEED0 = 100_000


#: the cells this benchmark had before droplets, vmxi and uv (its "all" row stays comparable)
_FIRST_IMAGERS = ("round", "square", "zoomed", "no_well", "soft_edge")
_FIRST_LIGHTS = ("bright-field", "cross-polarised")


def _first(row: dict[str, Any]) -> bool:
    return row["imager"] in _FIRST_IMAGERS and row["light"] in _FIRST_LIGHTS


def scene_job(job: tuple[int, str, str | None, int, int]) -> dict[str, Any]:
    """Render and inspect one scene; ``light`` (a LIGHTS key) None keeps what ``random_spec``
    drew."""
    import cv2

    from kiboauto.hil.scene import render
    from kiboauto.vision import inspect

    seed, imager, light, width, height = job
    cv2.setNumThreads(1)
    spec = cell_spec(seed, imager, light, width, height)
    image, truth = render(spec)
    result = inspect(image, um_per_px=truth.um_per_px)
    return {
        "seed": seed,
        "imager": imager,
        "light": light,
        "colour": spec.colour,
        "truth": truth.drop_class,
        "found": result.drop_class,
        "correct": result.drop_class == truth.drop_class,
        "confidence": result.confidence,
        "raw_confidence": result.features.get("raw_confidence", result.confidence),
        "well_found": result.features.get("well_found", 1.0),
        "drop_found": result.features.get("drop_found", 1.0),
        "n_truth": len(truth.crystals),
        "n_found": len(result.crystals),
        "n_matched": len(match_detections(result.crystals, truth.crystals)),
    }


def _run(jobs: list[tuple[int, str, str | None, int, int]], workers: int) -> list[dict[str, Any]]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(scene_job, jobs, chunksize=4))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n_truth = sum(r["n_truth"] for r in rows)
    n_found = sum(r["n_found"] for r in rows)
    n_matched = sum(r["n_matched"] for r in rows)
    correct = [bool(r["correct"]) for r in rows]
    return {
        "images": len(rows),
        "class_accuracy": sum(correct) / max(1, len(rows)),
        "crystal_recall": n_matched / max(1, n_truth),
        "crystal_precision": n_matched / max(1, n_found),
        "mean_confidence": float(np.mean([r["confidence"] for r in rows])),
        "ece": expected_calibration_error([r["confidence"] for r in rows], correct),
        "ece_raw": expected_calibration_error([r["raw_confidence"] for r in rows], correct),
    }


def imager_table(n_images: int, workers: int) -> dict[str, Any]:
    seeds = range(EVAL_SEED0, EVAL_SEED0 + n_images)
    jobs: list[tuple[int, str, str | None, int, int]] = [
        (s, imager, light, 1280, 960) for imager in IMAGERS for light in LIGHTS for s in seeds
    ]
    rows = _run(jobs, workers)
    cells = {}
    for imager in IMAGERS:
        for light in LIGHTS:
            sel = [r for r in rows if r["imager"] == imager and r["light"] == light]
            cells[f"{imager}/{light}"] = summarise(sel)
    return {
        "eval_seeds": [seeds[0], seeds[-1]],
        "size": "1280x960",
        "cells": cells,
        "round_only": summarise(
            [r for r in rows if r["imager"] == "round" and r["light"] in _FIRST_LIGHTS]
        ),
        "all": summarise([r for r in rows if _first(r)]),
        "new_cells": summarise([r for r in rows if not _first(r)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40, help="scenes per (imager, light) cell")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = imager_table(args.images, args.workers)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(print_table(table))


def print_table(table: dict[str, Any]) -> str:
    lines = [
        f"seeds {table['eval_seeds'][0]}..{table['eval_seeds'][1]} per cell, {table['size']}",
        f"{'imager/light':<30} {'n':>4} {'class acc':>9} {'recall':>7} {'precision':>9} "
        f"{'confidence':>10} {'ECE':>6} {'raw ECE':>7}",
    ]
    rows = [*table["cells"].items(), ("round (both lights)", table["round_only"])]
    rows.append(("all (first 10 cells)", table["all"]))
    rows.append(("new cells (uv, droplets, vmxi)", table["new_cells"]))
    for name, c in rows:
        lines.append(
            f"{name:<30} {c['images']:>4} {c['class_accuracy']:>9.3f} {c['crystal_recall']:>7.3f} "
            f"{c['crystal_precision']:>9.3f} {c['mean_confidence']:>10.3f} {c['ece']:>6.3f} "
            f"{c['ece_raw']:>7.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
