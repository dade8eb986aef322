"""Typed results of the vision core: frozen dataclasses that serialise to plain JSON values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DROP_CLASSES",
    "CrystalMeasure",
    "DropInfo",
    "GrowthReport",
    "GrowthTrack",
    "InspectParams",
    "Inspection",
    "WellInfo",
]

#: the drop classes :func:`kiboauto.vision.inspect` reports (MARCO's four)
DROP_CLASSES = ("crystals", "precipitate", "clear", "other")


def _r(value: float, nd: int = 3) -> float:
    return round(float(value), nd)


@dataclass(frozen=True)
class InspectParams:
    """Tuning knobs of :func:`kiboauto.vision.inspect` (defaults tuned on generated scenes).

    ``work_short_px``: the short side the frame is reduced to for the crystal search (the drop ROI
    is analysed at that scale and results are mapped back to full-resolution pixels);
    ``coarse_short_px``: the short side of the coarse copy the background is fitted on; the well
    and the drop are found on a copy half that size;
    ``crystal_contrast``: relative contrast (after flattening) that marks object pixels;
    ``edge_contrast``: 3x3 gradient (relative) that marks object outlines;
    ``min_crystal_px``: smallest object area, in full-resolution pixels;
    ``edge_margin_frac``: band inside the drop edge (fraction of the drop's equivalent radius)
    excluded from the search; objects reaching it count as meniscus/skin, not crystals;
    ``min_crystal_score``: crystal probability (trained object model, see
    :mod:`kiboauto.vision.models`) a candidate needs to count as a crystal.

    The object and drop-class models were trained with the defaults: changing ``work_short_px``,
    ``coarse_short_px`` or the contrasts moves the features away from what they learnt.
    """

    work_short_px: int = 480
    coarse_short_px: int = 240
    crystal_contrast: float = 0.16
    edge_contrast: float = 0.15
    min_crystal_px: float = 40.0
    edge_margin_frac: float = 0.05
    min_crystal_score: float = 0.5


@dataclass(frozen=True)
class WellInfo:
    """The well (the dark ring of the growth cell) as a circle in full-resolution pixels."""

    center_px: tuple[float, float]
    radius_px: float
    #: ``round`` (a circle: centre and radius) or ``square`` (a square or rectangular sub-well:
    #: ``bbox_px`` is its inside, the circle the one through its corners)
    shape: str = "round"
    #: the well reaches past the frame edge (a zoomed view): only part of it is seen
    clipped: bool = False
    #: (x, y, w, h) of the well's inside as seen in the frame (full-resolution pixels)
    bbox_px: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_px": [_r(self.center_px[0], 1), _r(self.center_px[1], 1)],
            "radius_px": _r(self.radius_px, 1),
            "shape": self.shape,
            "clipped": self.clipped,
            "bbox_px": None if self.bbox_px is None else list(self.bbox_px),
        }


@dataclass(frozen=True)
class DropInfo:
    """The drop: its real (not fitted) boundary, area and bounding box in full-resolution pixels."""

    bbox_px: tuple[int, int, int, int]
    area_px: float
    centroid_px: tuple[float, float]
    contour_px: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox_px": list(self.bbox_px),
            "area_px": _r(self.area_px, 1),
            "centroid_px": [_r(self.centroid_px[0], 1), _r(self.centroid_px[1], 1)],
            "contour_px": [list(p) for p in self.contour_px],
        }


@dataclass(frozen=True)
class CrystalMeasure:
    """One crystal: where it is and how big (pixels are full-resolution, lengths in µm)."""

    id: int
    centroid_px: tuple[float, float]
    bbox_px: tuple[int, int, int, int]
    area_px: float
    area_um2: float
    length_um: float
    aspect: float
    straightness: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "centroid_px": [_r(self.centroid_px[0], 1), _r(self.centroid_px[1], 1)],
            "bbox_px": list(self.bbox_px),
            "area_px": _r(self.area_px, 1),
            "area_um2": _r(self.area_um2, 1),
            "length_um": _r(self.length_um, 2),
            "aspect": _r(self.aspect),
            "straightness": _r(self.straightness),
        }


@dataclass(frozen=True)
class Inspection:
    """What :func:`kiboauto.vision.inspect` found in one image of a growth cell."""

    drop_class: str
    confidence: float
    crystals: list[CrystalMeasure]
    well: WellInfo | None
    drop: DropInfo | None
    features: dict[str, float]
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the inspected image
    um_per_px: float = 1.0
    #: a well was found (else the whole field was inspected as the well)
    well_found: bool = False
    #: a drop edge was found (else the well's inside, or the whole field, was inspected)
    drop_found: bool = False
    #: the inspected drop area (found, or assumed when none was found) over the frame area
    drop_area_fraction: float = 0.0
    #: short human reasons for the class and for what was or was not found
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "well_found": self.well_found,
            "drop_found": self.drop_found,
            "drop_area_fraction": _r(self.drop_area_fraction, 4),
            "reasons": list(self.reasons),
            "drop_class": self.drop_class,
            "confidence": _r(self.confidence),
            "crystals": [c.to_dict() for c in self.crystals],
            "well": None if self.well is None else self.well.to_dict(),
            "drop": None if self.drop is None else self.drop.to_dict(),
            "features": {k: _r(v, 4) for k, v in self.features.items()},
            "image_size": list(self.image_size),
            "um_per_px": self.um_per_px,
        }


@dataclass(frozen=True)
class GrowthTrack:
    """One crystal followed through a series: its lengths over time and its growth."""

    id: int
    times_s: list[float]
    lengths_um: list[float]
    centroids_px: list[tuple[float, float]]
    nucleation_s: float
    growth_um_per_h: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "times_s": [_r(t, 3) for t in self.times_s],
            "lengths_um": [_r(v, 2) for v in self.lengths_um],
            "centroids_px": [[_r(x, 1), _r(y, 1)] for x, y in self.centroids_px],
            "nucleation_s": _r(self.nucleation_s, 1),
            "growth_um_per_h": _r(self.growth_um_per_h, 3),
        }


@dataclass(frozen=True)
class GrowthReport:
    """Crystal tracks of one cell over time (:func:`kiboauto.vision.track`)."""

    tracks: list[GrowthTrack] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def first_nucleation_s(self) -> float | None:
        """When the first crystal appeared (interpolated), or None if none did."""
        return min((t.nucleation_s for t in self.tracks), default=None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_nucleation_s
        return {
            "tracks": [t.to_dict() for t in self.tracks],
            "times_s": [_r(t, 3) for t in self.times_s],
            "counts": list(self.counts),
            "first_nucleation_s": None if first is None else _r(first, 1),
        }
