"""`kiboauto inspect`: classify and measure drop images from files, and track growth series.

The vision core (:mod:`kiboauto.vision`) is pure; this module does the file work around it:
reading and decoding (timed apart from the inspection), overlays, JSON lines, a growth plot.
A bad file gives an error line for that file and never stops the others: that includes a file
over the pixel limit (checked from its header before decoding), a float image with NaN/inf or
outside its range, and an overlay that cannot be written. JSON output holds only finite numbers:
a non-finite value becomes ``null`` and the record lists it under ``"non_finite"``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "InspectOutcome",
    "OverlayDirError",
    "finite_json",
    "inspect_files",
    "json_line",
    "json_text",
    "prepare_overlay_dir",
    "series_times",
    "track_directory",
]

log = logging.getLogger(__name__)

#: default limit on width x height of an image file (the same as kiboauto.vision.io's)
DEFAULT_MAX_PIXELS = 50_000_000

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_TIME_IN_NAME = re.compile(r"(?:^|[_\-. ])t(\d+(?:\.\d+)?)(s|min|h|d)(?=$|[_\-. ])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class OverlayDirError(ValueError):
    """The ``--overlay`` folder cannot be used (a file is in the way, or it is not writable)."""


def prepare_overlay_dir(directory: Path) -> None:
    """Create ``directory`` if needed and check a file can be written in it.

    Raises :class:`OverlayDirError` with a one-line reason; nothing is left behind.
    """
    if directory.exists() and not directory.is_dir():
        raise OverlayDirError(f"--overlay {directory}: exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OverlayDirError(
            f"--overlay {directory}: cannot create the folder: {e.strerror or e}"
        ) from None
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".kiboauto-probe-"):
            pass
    except OSError as e:
        raise OverlayDirError(
            f"--overlay {directory}: cannot write in the folder: {e.strerror or e}"
        ) from None


def finite_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float (NaN, +/-inf) replaced by ``None``, and the places
    (``"crystals[0].length_um"``) where that happened."""
    if isinstance(value, float):
        return (value, []) if math.isfinite(value) else (None, [where or "value"])
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        bad: list[str] = []
        for key, item in value.items():
            out[key], found = finite_json(item, f"{where}.{key}" if where else str(key))
            bad += found
        return out, bad
    if isinstance(value, list | tuple):
        items: list[Any] = []
        bad = []
        for k, item in enumerate(value):
            clean, found = finite_json(item, f"{where}[{k}]")
            items.append(clean)
            bad += found
        return items, bad
    return value, []


def _finite_record(record: dict[str, Any]) -> dict[str, Any]:
    clean, bad = finite_json(record)
    if bad:
        log.warning("non-finite values written as null: %s", ", ".join(bad))
        clean["non_finite"] = sorted(set(bad) | set(clean.get("non_finite", [])))
    return dict(clean)


@dataclass
class InspectOutcome:
    """One image's result: the inspection (or the error) and what it cost."""

    path: Path
    result: Any = None  # kiboauto.vision.Inspection
    error: str = ""
    latency_ms: float = 0.0
    read_ms: float = 0.0
    overlay: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def to_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"image": str(self.path), "error": self.error}
        inspection = self.result
        crystals = [c.to_dict() for c in inspection.crystals]
        record: dict[str, Any] = {
            "image": str(self.path),
            "class": inspection.drop_class,
            "confidence": round(float(inspection.confidence), 4),
            "raw_confidence": round(
                float(inspection.features.get("raw_confidence", inspection.confidence)), 4
            ),
            "count": len(crystals),
            "max_length_um": round(max((c.length_um for c in inspection.crystals), default=0.0), 2),
            "crystals": crystals,
            "well_found": bool(inspection.well_found),
            "drop_found": bool(inspection.drop_found),
            "drop_area_fraction": round(float(inspection.drop_area_fraction), 4),
            "reasons": list(inspection.reasons),
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.overlay is not None:
            record["overlay"] = str(self.overlay)
        return _finite_record(record)


def inspect_files(
    paths: list[Path],
    *,
    um_per_px: float,
    overlay_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    float_range: tuple[float, float] | None = None,
) -> Iterator[InspectOutcome]:
    """Inspect each file in turn; yields one outcome per path, errors included.

    ``max_pixels``: a file whose header gives more (width x height) is that file's error, not
    decoded. ``float_range``: the range float images are scaled from (else they must lie in
    [0, 1]). An unusable ``overlay_dir`` raises :class:`OverlayDirError` before any image;
    ``um_per_px`` must be finite and > 0 (``ValueError``).
    """
    import cv2

    from kiboauto.vision import ImageError, inspect, load_image, overlay, warm_up

    if not (math.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"um_per_px must be a finite number > 0, got {um_per_px!r}")
    if overlay_dir is not None:
        prepare_overlay_dir(overlay_dir)
    warm_up()  # so the first image's latency is the inspection's, not the compiler's
    for path in paths:
        outcome = InspectOutcome(path)
        try:
            t0 = time.perf_counter()
            image = load_image(path, max_pixels=max_pixels, float_range=float_range)
            t1 = time.perf_counter()
            result = inspect(image, um_per_px=um_per_px)
            t2 = time.perf_counter()
        except ImageError as e:
            outcome.error = str(e)
            yield outcome
            continue
        except Exception as e:  # an image the core cannot handle is that image's error only
            outcome.error = f"{path}: inspection failed: {type(e).__name__}: {e}"
            yield outcome
            continue
        outcome.result = result
        outcome.read_ms, outcome.latency_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        if overlay_dir is not None:
            target = overlay_dir / f"{path.stem}.overlay.png"
            try:
                written = bool(cv2.imwrite(str(target), overlay(image, result)))
                reason = "" if written else "OpenCV could not write the file"
            except (cv2.error, OSError) as e:
                written, reason = False, " ".join(str(e).split())[:200]
            if written:
                outcome.overlay = target
            else:
                outcome.error = f"{path}: could not write the overlay {target}: {reason}"
        yield outcome


def series_times(paths: list[Path], interval_s: float) -> list[float]:
    """Capture times of a series: from ``_t<number><s|min|h|d>`` in the file names if every name
    has one (``cell3_t12h.png``), else ``interval_s`` apart in name order."""
    found = [_TIME_IN_NAME.search(p.stem) for p in paths]
    if paths and all(found):
        return [float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()] for m in found if m]
    return [i * interval_s for i in range(len(paths))]


def image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def track_directory(
    directory: Path,
    *,
    um_per_px: float,
    interval_s: float,
    plot: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    float_range: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], list[InspectOutcome]]:
    """Inspect every image of one cell's series, track the crystals, write the growth plot."""
    from kiboauto.vision import track

    paths = image_files(directory)
    times = series_times(paths, interval_s)
    outcomes = list(
        inspect_files(paths, um_per_px=um_per_px, max_pixels=max_pixels, float_range=float_range)
    )
    series = [(t, o.result) for t, o in zip(times, outcomes, strict=True) if o.ok]
    report = track(series)
    result = report.to_dict()
    try:
        plot_growth(report, plot, title=f"{directory.name}: crystal growth")
    except (OSError, ValueError) as e:  # an unwritable path, an unknown image suffix
        # The growth report itself is good: keep it, and say why there is no plot.
        result["plot_error"] = f"{plot}: cannot write the growth plot: {e}"
    return result, outcomes


def plot_growth(report: Any, path: Path, *, title: str) -> None:
    """Length of each tracked crystal against time, one line per crystal, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        data = report.to_dict()
        for crystal in data.get("tracks", []):
            hours = [t / 3600.0 for t in crystal["times_s"]]
            ax.plot(hours, crystal["lengths_um"], marker="o", ms=3, label=f"#{crystal['id']}")
        ax.set_xlabel("time (h)")
        ax.set_ylabel("longest dimension (µm)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if data.get("tracks"):
            ax.legend(loc="upper left", fontsize="small", ncol=2)
        else:
            ax.text(0.5, 0.5, "no crystals found", ha="center", va="center", transform=ax.transAxes)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def json_line(record: dict[str, Any]) -> str:
    """One compact JSON line; only finite numbers (see :func:`json_text`)."""
    return json_text(record, indent=None)


def json_text(record: dict[str, Any], *, indent: int | None = None) -> str:
    """``record`` as strict JSON: non-finite numbers become ``null`` and are listed under
    ``"non_finite"``; never ``NaN`` or ``Infinity`` tokens."""
    separators = (",", ":") if indent is None else None
    return json.dumps(_finite_record(record), separators=separators, indent=indent, allow_nan=False)


def fmt_number(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``"n/a"`` for ``None`` (a non-finite value)."""
    return "n/a" if value is None else format(value, spec)


def parse_float_range(text: str) -> tuple[float, float]:
    """``"LO:HI"`` as two finite floats with LO < HI; ``ValueError`` with the reason otherwise."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--float-range {text!r}: give LO:HI, e.g. 0:4095")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--float-range {text!r}: LO and HI must be numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"--float-range {text!r}: LO and HI must be finite with LO < HI")
    return lo, hi
