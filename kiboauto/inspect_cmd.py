"""`kiboauto inspect`: classify and measure drop images from files, and track growth series.

The vision core (:mod:`kiboauto.vision`) is pure; this module does the file work around it:
reading and decoding (timed apart from the inspection), overlays, JSON lines, a growth plot.
A bad file gives an error line for that file and never stops the others.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InspectOutcome", "inspect_files", "series_times", "track_directory"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_TIME_IN_NAME = re.compile(r"(?:^|[_\-. ])t(\d+(?:\.\d+)?)(s|min|h|d)(?=$|[_\-. ])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


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
            "count": len(crystals),
            "max_length_um": round(max((c.length_um for c in inspection.crystals), default=0.0), 2),
            "crystals": crystals,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.overlay is not None:
            record["overlay"] = str(self.overlay)
        return record


def inspect_files(
    paths: list[Path], *, um_per_px: float, overlay_dir: Path | None = None
) -> Iterator[InspectOutcome]:
    """Inspect each file in turn; yields one outcome per path, errors included."""
    import cv2

    from kiboauto.vision import ImageError, inspect, load_image, overlay, warm_up

    warm_up()  # so the first image's latency is the inspection's, not the compiler's
    for path in paths:
        outcome = InspectOutcome(path)
        try:
            t0 = time.perf_counter()
            image = load_image(path)
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
            overlay_dir.mkdir(parents=True, exist_ok=True)
            target = overlay_dir / f"{path.stem}.overlay.png"
            if cv2.imwrite(str(target), overlay(image, result)):
                outcome.overlay = target
            else:
                outcome.error = f"{target}: could not write the overlay"
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
    directory: Path, *, um_per_px: float, interval_s: float, plot: Path
) -> tuple[dict[str, Any], list[InspectOutcome]]:
    """Inspect every image of one cell's series, track the crystals, write the growth plot."""
    from kiboauto.vision import track

    paths = image_files(directory)
    times = series_times(paths, interval_s)
    outcomes = list(inspect_files(paths, um_per_px=um_per_px))
    series = [(t, o.result) for t, o in zip(times, outcomes, strict=True) if o.ok]
    report = track(series)
    plot_growth(report, plot, title=f"{directory.name}: crystal growth")
    return report.to_dict(), outcomes


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
    return json.dumps(record, separators=(",", ":"))
