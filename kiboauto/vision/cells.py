"""Confluence: how much of a phase-contrast field's growth surface is covered by cells.

:func:`analyse_field` segments the field (:mod:`kiboauto.vision.cells_field`: saturated channel
walls excluded, the dark level of 16-bit raw frames subtracted, every measure relative to the
sensor noise, each pixel classified by a small learned model from local contrasts, texture
energies and a background fitted where no cells are seen, debris specks dropped) and adds
per-field quality flags. :func:`confluence` is its
number alone (the engine's ``inspect`` step in confluence mode), :func:`confluence_mask` its mask.

**Definition**: the confluence is the fraction of the *growth surface* covered by cells, i.e.
cell pixels over the pixels not under a saturated channel wall (``wall_fraction``); without a wall
that is the whole field. ``kiboauto.hil.scene_cells`` renders fields with the same definition.
See docs/confluence.md for what is handled and measured figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .cells_field import FieldMaps, segment_field
from .io import check_image

__all__ = ["QUALITY_FLAGS", "FieldResult", "analyse_field", "confluence", "confluence_mask"]

#: every quality flag :func:`analyse_field` may report
QUALITY_FLAGS = ("ok", "out_of_focus", "saturated", "empty", "low_contrast")

#: below this sharpness (peak fine over peak coarse gradient) a field is out of focus. Rendered
#: in-focus fields: 5th percentile 2.05 at 640x480 (mixed cells), 2.31-2.45 at 960x720 to
#: 2560x1920; blurred by 3 px at 1280x960 (or the same at other sizes): 95th percentile 1.79-1.93.
#: (It was 2.3, which flagged 69-100 % of in-focus 640x480 fields, the demo camera's size.)
_FOCUS_MIN = 2.0
#: a field with at least this fraction of near-full-scale pixels (or a wall) is "saturated"
_SATURATED_MIN = 0.01
#: confluence below which a field without texture is "empty"
_EMPTY_MAX = 0.01
#: below this textured fraction (gradient above noise) a field with cells has little contrast
_LOW_CONTRAST = 0.03
#: below this textured fraction a field without cells is "empty"
_EMPTY_TEXTURE = 0.03


@dataclass(frozen=True)
class FieldResult:
    """Confluence of one field with what the measurement is worth.

    ``confluence``: 0..1 of the growth surface (see the module's definition). ``quality``: flags
    from :data:`QUALITY_FLAGS` (``ok`` alone when nothing is wrong). ``pedestal``: dark level
    subtracted from a 16-bit raw frame (raw counts; an upper bound of the sensor's pedestal, 0 for
    8-bit frames). ``wall_fraction``: fraction of the field excluded as saturated wall.
    ``sharpness``: focus measure (peak fine over peak coarse gradient; < 2.0: out of focus).
    ``mask``: cell mask at working resolution (short side ~480 px) when asked for, for overlays.
    """

    confluence: float
    quality: tuple[str, ...]
    pedestal: float
    wall_fraction: float
    sharpness: float
    mask: npt.NDArray[np.bool_] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (without the mask)."""
        return {
            "confluence": round(self.confluence, 4),
            "quality": list(self.quality),
            "pedestal": round(self.pedestal, 1),
            "wall_fraction": round(self.wall_fraction, 4),
            "sharpness": round(self.sharpness, 2),
        }


def _quality(maps: FieldMaps, value: float) -> tuple[str, ...]:
    flags: list[str] = []
    empty = value < _EMPTY_MAX and maps.texture < _EMPTY_TEXTURE
    if maps.sharpness < _FOCUS_MIN and not empty:
        flags.append("out_of_focus")
    if maps.saturated >= _SATURATED_MIN or maps.wall.any():
        flags.append("saturated")
    if empty:
        flags.append("empty")
    elif maps.texture < _LOW_CONTRAST:
        flags.append("low_contrast")
    return tuple(flags) or ("ok",)


def analyse_field(
    image: npt.NDArray[np.generic], *, with_mask: bool = False, **options: float
) -> FieldResult:
    """Confluence, quality flags, dark level and wall fraction of one phase-contrast field
    (8- or 16-bit, grey or BGR/BGRA). ``options`` go to
    :func:`kiboauto.vision.cells_field.segment_field`."""
    img = check_image(image)
    maps = segment_field(img, **options)  # type: ignore[arg-type]
    surface = int(np.count_nonzero(~maps.wall))
    value = float(np.count_nonzero(maps.cells)) / surface if surface else 0.0
    return FieldResult(
        confluence=value,
        quality=_quality(maps, value),
        pedestal=maps.pedestal,
        wall_fraction=float(maps.wall.mean()),
        sharpness=maps.sharpness,
        mask=maps.cells if with_mask else None,
    )


def confluence_mask(image: npt.NDArray[np.generic], **options: float) -> npt.NDArray[np.bool_]:
    """Boolean cell mask at working resolution (short side about 480 px); wall pixels are False."""
    return segment_field(check_image(image), **options).cells  # type: ignore[arg-type]


def confluence(image: npt.NDArray[np.generic], **options: float) -> float:
    """Fraction (0..1) of the growth surface covered by cells (see :func:`analyse_field`)."""
    return analyse_field(image, **options).confluence  # type: ignore[arg-type]
