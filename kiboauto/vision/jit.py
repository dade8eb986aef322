"""Typed decorators for the vision core's compiled routines (numba).

Routines are compiled on first use and cached beside their module (or in numba's user cache
directory when that is read-only), so only the first call on a machine pays the compilation.
``nogil``: the routines hold no Python objects, and nothing here starts a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from numba import njit

__all__ = ["compiled", "inlined", "warm_up"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: compile a routine called from Python
compiled = cast(Callable[[_F], _F], njit(cache=True, nogil=True))
#: compile a helper that is inlined into the compiled routines calling it
inlined = cast(Callable[[_F], _F], njit(cache=True, nogil=True, inline="always"))


def warm_up() -> None:
    """Compile (first run on a machine, about 10 s) or load (later runs, about 0.4 s) the
    vision core's compiled routines now, so that no inspection is slowed, or timed, with it."""
    import numpy as np

    from .appearance import appearance
    from .colour import halve_bgr, subtract_spread
    from .drop import find_drop
    from .pixel_maps import crystal_maps
    from .well import find_well, fit_circle, well_reference

    square = np.zeros((3, 3), np.uint8)
    crystal_maps(square, np.ones((3, 3), np.uint8), 0.1, 0.1)
    halve_bgr(np.zeros((2, 2, 3), np.uint8))
    subtract_spread(np.zeros((2, 2, 3), np.uint8), 0, 0, np.zeros((2, 2), np.uint8))
    appearance([(np.asarray([[[1, 1]]], np.int32), (1, 1, 1, 1))], square, square, square)
    fit_circle(np.asarray([0.0, 1.0, 0.0]), np.asarray([0.0, 0.0, 1.0]))
    well = np.full((40, 40), 60, np.uint8)  # a dark wall around a bright inside
    well[8:32, 8:32] = 220
    find_well(*well_reference(well))
    find_drop(well, None, 200.0)
