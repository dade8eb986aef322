"""The imager types and lights the vision benchmarks and the confidence calibration cover.

Each is a set of :class:`~kiboauto.hil.scene_spec.SceneSpec` options laid over what
``random_spec`` draws for a seed, so a cell changes only the geometry and the light of a scene:

    round      plate imager, round whole well (what the first models were trained on)
    square     square sub-well (``well_shape="square"``)
    zoomed     zoomed round well clipped by the frame (``well_zoom=1.7``)
    no_well    no well, microfluidic-like field (``well_shape="none"``, ``well_zoom=1.6``)
    soft_edge  round well, broad shaded drop edge without meniscus line (``drop_edge_soft=0.35``)
    droplets   microfluidic chip: droplets in oil in a channel (``well_shape="droplets"``)
    vmxi       VMXi-like square sub-well, the drop in a corner meeting two walls

Lights: bright-field (grey), cross-polarised (colour) and UV fluorescence (a dark field).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .scene import random_spec
from .scene_spec import DROP_CLASSES, SceneSpec

__all__ = ["CLASSES", "IMAGERS", "LIGHTS", "cell_spec"]

CLASSES = DROP_CLASSES  # the class of seed s is CLASSES[s % 4]
IMAGERS: dict[str, dict[str, Any]] = {
    "round": {},
    "square": {"well_shape": "square"},
    "zoomed": {"well_zoom": 1.7},
    "no_well": {"well_shape": "none", "well_zoom": 1.6},
    "soft_edge": {"drop_edge_soft": 0.35},
    "droplets": {"well_shape": "droplets"},
    "vmxi": {"well_shape": "square", "drop_meets_wall": True, "well_zoom": 1.05},
}
LIGHTS: dict[str, dict[str, Any]] = {
    "bright-field": {"colour": False},
    "cross-polarised": {"colour": True},
    "uv": {"colour": False, "light": "uv"},
}


def cell_spec(
    seed: int, imager: str, light: str | None, width: int = 1280, height: int = 960
) -> SceneSpec:
    """The scene of ``seed`` in one (imager, light) cell; the class cycles with the seed (balanced
    classes); ``light`` None keeps the light ``random_spec`` drew."""
    if imager not in IMAGERS:
        raise ValueError(f"unknown imager {imager!r}: one of {', '.join(IMAGERS)}")
    if light is not None and light not in LIGHTS:
        raise ValueError(f"unknown light {light!r}: one of {', '.join(LIGHTS)}")
    spec = random_spec(seed, drop_class=CLASSES[seed % 4], width=width, height=height)
    return replace(spec, **IMAGERS[imager], **(LIGHTS[light] if light is not None else {}))
