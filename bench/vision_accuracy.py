"""Accuracy of kiboauto.vision.inspect on rendered drops with exact truth (hil/scene.py).

Held-out evaluation seeds start at 10_000 (the models are trained on seeds 0..2999 by default;
300..399 were also used for design checks). Prints the class confusion matrix and accuracy, crystal
detection (matched to truth centroids), count agreement, length error and well error.

    .venv/bin/python bench/vision_accuracy.py [--first 10000] [--count 500] [--size 1280x960]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import cv2
import numpy as np

from kiboauto.hil import scene as S
from kiboauto.vision import inspect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=10_000)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--size", default="1280x960")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    cv2.setNumThreads(1)
    confusion: Counter[tuple[str, str]] = Counter()
    tp = fn = fp = count_ok = n_cryst = 0
    errors: list[float] = []
    well_err: list[float] = []
    near_px = 10.0 * min(w, h) / 960  # 10 px at 1280x960: the same part of the field of view
    for seed in range(args.first, args.first + args.count):
        spec = S.random_spec(seed, width=w, height=h)
        img, truth = S.render(spec)
        res = inspect(img, um_per_px=spec.um_per_px)
        confusion[(truth.drop_class, res.drop_class)] += 1
        if res.well is None:
            well_err.append(math.inf)
        else:
            well_err.append(math.dist(res.well.center_px, truth.well_center_px))
        used: set[int] = set()
        for c in truth.crystals:
            best = None
            for d in res.crystals:
                dist = math.dist(d.centroid_px, c.centroid_px)
                near = dist < max(0.5 * c.longest_um / spec.um_per_px, near_px)
                if d.id not in used and near and (best is None or dist < best[0]):
                    best = (dist, d)
            if best is None:
                fn += 1
            else:
                used.add(best[1].id)
                tp += 1
                errors.append(best[1].length_um / c.longest_um - 1)
        fp += len(res.crystals) - len(used)
        if truth.drop_class == "crystals":
            n_cryst += 1
            n_true = len(truth.crystals)
            count_ok += abs(len(res.crystals) - n_true) <= max(1, round(0.3 * n_true))
    classes = S.DROP_CLASSES
    print(f"{args.count} images {w}x{h}, seeds {args.first}..{args.first + args.count - 1}")
    print(f"{'truth / found':>14} " + " ".join(f"{c:>11}" for c in classes))
    for a in classes:
        print(f"{a:>14} " + " ".join(f"{confusion[(a, b)]:>11}" for b in classes))
    acc = sum(confusion[(c, c)] for c in classes) / args.count
    print(f"class accuracy: {acc:.3f}")
    print(
        f"crystals: recall {tp / max(tp + fn, 1):.3f} ({tp}/{tp + fn}), precision "
        f"{tp / max(tp + fp, 1):.3f}; count within max(1, 30 %) in {count_ok}/{n_cryst} "
        "crystal drops"
    )
    e = np.array(errors)
    print(
        f"length error: median {np.median(e):+.3f}, |err| p50 {np.median(np.abs(e)):.3f}, "
        f"p90 {np.percentile(np.abs(e), 90):.3f}"
    )
    we = np.array(well_err)
    found = we[np.isfinite(we)]
    print(
        f"well centre error px: p50 {np.median(found):.1f}, p95 {np.percentile(found, 95):.1f};"
        f" not found {int((~np.isfinite(we)).sum())}"
    )


if __name__ == "__main__":
    main()
