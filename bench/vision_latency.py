"""Latency of kiboauto.vision.inspect against JPEG decoding of the same image (single thread).

For each size (1280x960, 2048x2048, 2560x1920) a scene is rendered (the realistic renderer
hil/scene.py when present, else the simple SimCamera scene), encoded as JPEG (quality 90), and
timed: cv2.imdecode of that JPEG, a plain copy of the decoded array, and inspect() on it.
Prints p50/p95 in milliseconds and the ratio inspect/decode (must stay below 1).

    .venv/bin/python bench/vision_latency.py [--repeats 40] [--grey] [--seed 10000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

# one thread for numpy's BLAS as for OpenCV: single-thread latency, no helper threads spinning
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kiboauto.vision import inspect  # noqa: E402

SIZES = ((1280, 960), (2048, 2048), (2560, 1920))


def scene(seed: int, width: int, height: int) -> tuple[np.ndarray[Any, Any], float, str]:
    """(image, um_per_px, source name) of a drop (classes cycle with the seed)."""
    try:
        from kiboauto.hil import scene as rs

        spec = rs.random_spec(seed, width=width, height=height)
        image, _truth = rs.render(spec)
        return np.asarray(image), float(getattr(spec, "um_per_px", 1.0)), "hil/scene.py"
    except ImportError:
        from kiboauto.hil.camera_sim import SimCamera

        um = 2.0 * 1280 / width
        cam = SimCamera("bench", seed=seed, width=width, height=height, um_per_px=um)
        return cam.render(40 * 3600.0), um, "hil/camera_sim.py"


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls in ms (after one warm-up call)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per image")
    ap.add_argument("--seed", type=int, default=10_000, help="first seed (evaluation range)")
    ap.add_argument("--images", type=int, default=8, help="images per size (seed, seed+1, ...)")
    ap.add_argument("--grey", action="store_true", help="grey images instead of colour")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"threads: {cv2.getNumThreads()}  repeats: {args.repeats}  ms (p50 / p95)")
    print(f"{'size':>10} {'imdecode':>15} {'copy':>13} {'inspect':>15} {'ratio p50':>9}  source")
    for w, h in SIZES:
        dec: list[float] = []
        cop: list[float] = []
        ins: list[float] = []
        source = ""
        for k in range(args.images):
            img, um, source = scene(args.seed + k, w, h)
            if args.grey and img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            decoded = cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED)
            dec += timed(lambda j=jpg: cv2.imdecode(j, cv2.IMREAD_UNCHANGED), args.repeats)
            cop += timed(lambda d=decoded: d.copy(), args.repeats)
            ins += timed(lambda d=decoded, u=um: inspect(d, um_per_px=u), args.repeats)
        d50, d95 = np.percentile(dec, [50, 95])
        c50, c95 = np.percentile(cop, [50, 95])
        i50, i95 = np.percentile(ins, [50, 95])
        print(
            f"{w}x{h:<5} {d50:7.2f} /{d95:6.2f} {c50:6.2f} /{c95:5.2f} {i50:7.2f} /{i95:6.2f}"
            f" {i50 / d50:9.2f}  {source}, {args.images} images"
        )


if __name__ == "__main__":
    main()
