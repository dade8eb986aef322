"""The drop class from the measured features: crystals, precipitate, clear or other."""

from __future__ import annotations

import math

from .models import DROP_MLP, DROP_MLP_FEATURES, mlp_predict
from .types import DROP_CLASSES

__all__ = ["classify", "drop_vector", "log_scaled"]


def log_scaled(name: str) -> bool:
    """Whether the drop classifier takes this feature on a log scale (counts, summed scores)."""
    return name.startswith("n_") or name == "sum_crystal_score"


_LOG_SCALE = tuple(log_scaled(name) for name in DROP_MLP_FEATURES)


def drop_vector(features: dict[str, float]) -> list[float]:
    """The classifier's inputs: the named features, counts on a log scale."""
    out = []
    for name, log in zip(DROP_MLP_FEATURES, _LOG_SCALE, strict=True):
        v = float(features.get(name, 0.0))
        out.append(math.log1p(max(v, 0.0)) if log else v)
    return out


def classify(features: dict[str, float]) -> tuple[str, float]:
    """(class, probability) from the features :func:`inspect` measured.

    No well and no drop found -> ``other``. Otherwise a small trained model (see
    :mod:`kiboauto.vision.models`) weighs crystal evidence, granular texture, dark-object cover and
    the counts of round, thin and edge objects.
    """
    if features.get("drop_found", 1.0) < 0.5 and features.get("well_found", 1.0) < 0.5:
        return "other", 0.5
    if not DROP_MLP:  # no trained model (only while (re)training it)
        return "clear", 0.0
    probs = mlp_predict(DROP_MLP, [drop_vector(features)])[0]
    k = int(probs.argmax())
    return DROP_CLASSES[k], float(probs[k])
