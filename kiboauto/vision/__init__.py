"""Crystal inspection for growth-cell images: pure functions over numpy arrays (OpenCV inside).

``inspect(image)`` finds the well and the drop, flattens the light, classifies the drop
(crystals / precipitate / clear / other) and measures every crystal; ``track(series)`` follows
crystals over time; ``confluence(image)`` measures cell coverage of a phase-contrast field;
``overlay(image, inspection)`` draws an annotated picture for a person to check. Results are frozen
dataclasses with ``to_dict()`` for JSON. This package imports only numpy, OpenCV, numba (for the
few per-pixel routines OpenCV has no single call for) and the standard library.
"""

from .cells import QUALITY_FLAGS, FieldResult, analyse_field, confluence, confluence_mask
from .draw import overlay
from .io import ImageError, load_image
from .jit import warm_up
from .pipeline import inspect
from .tracking import track
from .types import (
    DROP_CLASSES,
    CrystalMeasure,
    DropInfo,
    GrowthReport,
    GrowthTrack,
    Inspection,
    InspectParams,
    WellInfo,
)

__all__ = [
    "DROP_CLASSES",
    "QUALITY_FLAGS",
    "CrystalMeasure",
    "DropInfo",
    "FieldResult",
    "GrowthReport",
    "GrowthTrack",
    "ImageError",
    "InspectParams",
    "Inspection",
    "WellInfo",
    "analyse_field",
    "confluence",
    "confluence_mask",
    "inspect",
    "load_image",
    "overlay",
    "track",
    "warm_up",
]
