"""`overlay`: an annotated BGR picture of an inspection that a person can check at a glance."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from .io import check_image
from .types import Inspection

__all__ = ["overlay"]

_CLASS_COLOURS = {
    "crystals": (60, 220, 60),
    "precipitate": (0, 160, 255),
    "clear": (255, 200, 80),
    "other": (200, 80, 200),
}


def _to_bgr8(image: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    img = check_image(image)
    if img.dtype == np.uint16:
        top = float(np.percentile(img[::4, ::4], 99.5))
        img = np.asarray(cv2.convertScaleAbs(img, alpha=230.0 / max(top, 1.0)), dtype=np.uint8)
    if img.ndim == 2:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if img.shape[2] == 4:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    return np.array(img, dtype=np.uint8, copy=True)


def overlay(image: npt.NDArray[np.generic], inspection: Inspection) -> npt.NDArray[np.uint8]:
    """A BGR uint8 copy of ``image`` with the well (blue circle), the drop boundary (green),
    each crystal's box with its id and length in µm (red), and the class with its confidence.

    Write it with ``cv2.imwrite("x.png", overlay(img, result))``.
    """
    out = _to_bgr8(image)
    h, w = out.shape[:2]
    short = min(h, w)
    thick = max(1, round(short / 480))
    font = max(0.4, short / 1200)
    if inspection.well is not None and inspection.well.bbox_px is not None:
        x, y, bw, bh = inspection.well.bbox_px
        cv2.rectangle(out, (x, y), (x + bw, y + bh), (255, 120, 0), thick)
    elif inspection.well is not None:
        cx, cy = inspection.well.center_px
        cv2.circle(out, (round(cx), round(cy)), round(inspection.well.radius_px), (255, 120, 0),
                   thick, cv2.LINE_AA)  # fmt: skip
        cv2.drawMarker(
            out, (round(cx), round(cy)), (255, 120, 0), cv2.MARKER_CROSS, 6 * thick, thick
        )
    if inspection.drop is not None and inspection.drop.contour_px:
        pts = np.array(inspection.drop.contour_px, dtype=np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, (0, 200, 0), thick, cv2.LINE_AA)
    for c in inspection.crystals:
        x, y, bw, bh = c.bbox_px
        pad = 2 * thick
        cv2.rectangle(out, (x - pad, y - pad), (x + bw + pad, y + bh + pad), (0, 0, 255), thick)
        label = f"{c.id}: {c.length_um:.0f} um"
        cv2.putText(out, label, (x, max(12, y - pad - 3)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (0, 0, 0), thick + 2, cv2.LINE_AA)  # fmt: skip
        cv2.putText(out, label, (x, max(12, y - pad - 3)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (0, 0, 255), thick, cv2.LINE_AA)  # fmt: skip
    colour = _CLASS_COLOURS.get(inspection.drop_class, (255, 255, 255))
    head = (
        f"{inspection.drop_class}  {inspection.confidence:.2f}  "
        f"crystals: {len(inspection.crystals)}"
    )
    scale = font * 1.4
    (tw, th), base = cv2.getTextSize(head, cv2.FONT_HERSHEY_SIMPLEX, scale, thick + 1)
    cv2.rectangle(out, (0, 0), (min(w - 1, tw + 16), th + base + 14), (0, 0, 0), -1)
    cv2.putText(out, head, (8, th + 7), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick + 1,
                cv2.LINE_AA)  # fmt: skip
    # the reasons, one per line under the heading
    y = th + base + 14
    for line in inspection.reasons:
        (lw, lh), lb = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        cv2.rectangle(out, (0, y), (min(w - 1, lw + 16), y + lh + lb + 6), (0, 0, 0), -1)
        cv2.putText(out, line, (8, y + lh + 3), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    thick, cv2.LINE_AA)  # fmt: skip
        y += lh + lb + 6
    return out
