"""Inspection against JPEG decoding on the geometry of chosen imager cells.

``bench/vision_bench.py`` times round wells only. Square sub-wells and VMXi-like drops take
another path through the vision core (the light-following background, crystals freed from the
crust), so they are timed here: per cell and size, 12 rendered frames (seeds 100000..100011,
bright field), JPEG quality 90, decoded and inspected single-threaded, 3 passes; medians.

    python bench/vision_latency_cells.py [--cells vmxi square] [--label now]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2

from kiboauto.hil.imager_cells import IMAGERS, cell_spec
from kiboauto.hil.scene import render
from kiboauto.vision import inspect

SIZES = ((1280, 960), (2048, 2048))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=["vmxi", "square"], choices=sorted(IMAGERS))
    ap.add_argument("--label", default="", help="a word printed at the start of each line")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    for imager in args.cells:
        for w, h in SIZES:
            frames = []
            for seed in range(100000, 100012):
                img, _ = render(cell_spec(seed, imager, "bright-field", width=w, height=h))
                frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
            decode: list[float] = []
            inspection: list[float] = []
            for _ in range(3):
                for buf in frames:
                    t = time.perf_counter()
                    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
                    decode.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    inspect(image)
                    inspection.append(time.perf_counter() - t)
            d = 1000 * statistics.median(decode)
            i = 1000 * statistics.median(inspection)
            print(
                f"{args.label} {imager} {w}x{h}: inspect p50 {i:.2f} ms, decode p50 {d:.2f} ms, "
                f"ratio {i / d:.2f}"
            )


if __name__ == "__main__":
    main()
