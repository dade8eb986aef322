"""The drop class from the measured features: crystals, precipitate, clear or other."""

from __future__ import annotations

import math

from .models import DROP_MLP, DROP_MLP_FEATURES, mlp_predict
from .types import DROP_CLASSES

__all__ = ["classify", "decide", "drop_vector", "log_scaled", "model_probabilities"]


def log_scaled(name: str) -> bool:
    """Whether the drop classifier takes this feature on a log scale (counts, summed scores)."""
    return name.startswith("n_") or name == "sum_crystal_score"


_LOG_SCALE = tuple(log_scaled(name) for name in DROP_MLP_FEATURES)

# this many accepted crystals outweigh the drop model's other class: on the rendered evaluation
# scenes of every imager and light (bench/vision_imagers.py, 420 scenes) no drop without crystals
# reaches it, while real drops crowded with crystals the drop model never saw the like of do
STRONG_EVIDENCE = 4


def drop_vector(features: dict[str, float]) -> list[float]:
    """The classifier's inputs: the named features, counts on a log scale."""
    out = []
    for name, log in zip(DROP_MLP_FEATURES, _LOG_SCALE, strict=True):
        v = float(features.get(name, 0.0))
        out.append(math.log1p(max(v, 0.0)) if log else v)
    return out


def model_probabilities(features: dict[str, float]) -> list[float] | None:
    """The drop model's probability of each of :data:`DROP_CLASSES`, or None without a model."""
    if not DROP_MLP:  # no trained model (only while (re)training it)
        return None
    return [float(p) for p in mlp_predict(DROP_MLP, [drop_vector(features)])[0]]


def classify(features: dict[str, float]) -> tuple[str, float]:
    """(class, probability): the drop model's answer alone, from the features :func:`inspect`
    measured (a small trained model, see :mod:`kiboauto.vision.models`, weighs crystal evidence,
    granular texture, dark-object cover and the counts of round, thin and edge objects).

    The geometry (well or drop found or not) never decides the class by itself; :func:`decide`
    reconciles this answer with the accepted crystals.
    """
    probs = model_probabilities(features)
    if probs is None:
        return "clear", 0.0
    k = max(range(len(probs)), key=lambda i: probs[i])
    return DROP_CLASSES[k], probs[k]


def _scores_text(scores: list[float], most: int = 5) -> str:
    top = sorted(scores, reverse=True)
    text = ", ".join(f"{s:.2f}" for s in top[:most])
    return text + (f", ... {len(top) - most} more" if len(top) > most else "")


def decide(
    features: dict[str, float], scores: list[float], n_candidates: int = 0
) -> tuple[str, float, list[str]]:
    """(class, confidence, reasons): the drop model's class made consistent with its evidence.

    ``scores``: the crystal model's scores of the accepted crystals (one per crystal reported);
    ``n_candidates``: how many candidate objects the crystal model scored.
    Rules: the class is never ``crystals`` without an accepted crystal (the model's best other
    class is reported, its probability renormalised without ``crystals``); a drop the model calls
    ``clear`` while crystals were accepted is reported as ``crystals`` (confidence: the best
    crystal score); ``precipitate`` or ``other`` with at least :data:`STRONG_EVIDENCE` accepted
    crystals is reported as ``crystals`` (confidence: the weakest of the best four scores). Every
    answer comes with short human reasons.
    """
    reasons: list[str] = []
    n = len(scores)
    if n:
        noun = "crystal" if n == 1 else "crystals"
        reasons.append(f"{n} {noun} accepted (scores {_scores_text(scores)})")
    else:
        best = float(features.get("best_crystal_score", 0.0))
        if n_candidates:
            reasons.append(
                f"no crystal accepted ({n_candidates} candidates, best score {best:.2f})"
            )
        else:
            reasons.append("no crystal accepted (no candidate object)")
    probs = model_probabilities(features)
    if probs is None:
        reasons.append("no trained drop model: reported as clear")
        return "clear", 0.0, reasons
    k = max(range(len(probs)), key=lambda i: probs[i])
    cls, conf = DROP_CLASSES[k], probs[k]
    if cls == "crystals" and n == 0:
        rest = [(p, c) for p, c in zip(probs, DROP_CLASSES, strict=True) if c != "crystals"]
        p_best, c_best = max(rest)
        total = sum(p for p, _ in rest)
        new_conf = p_best / total if total > 0 else 0.0
        reasons.append(
            f"class model said crystals ({conf:.2f}) but no crystal was accepted: "
            f"reported as {c_best} (its next class)"
        )
        return c_best, new_conf, reasons
    if cls == "clear" and n > 0:
        reasons.append(
            f"class model said clear ({conf:.2f}) but crystals were accepted: reported as crystals"
        )
        return "crystals", max(scores), reasons
    if cls != "crystals" and n >= STRONG_EVIDENCE:
        weakest = sorted(scores, reverse=True)[STRONG_EVIDENCE - 1]
        reasons.append(
            f"class model said {cls} ({conf:.2f}) but {n} crystals were accepted (at least "
            f"{STRONG_EVIDENCE}): reported as crystals, confidence the {STRONG_EVIDENCE}th best "
            "crystal score"
        )
        return "crystals", weakest, reasons
    reasons.append(f"class model: {cls} ({conf:.2f})")
    if cls != "crystals" and n > 0:
        reasons.append(
            f"{cls} kept although crystals were accepted: the class model weighs them "
            f"against the rest of the drop (crystal probability {probs[0]:.2f})"
        )
    return cls, conf, reasons
