# ruff: noqa: E501  (the trained weights are long generated lines)
"""Small trained models (numpy MLPs) behind the crystal and drop-class decisions.

Trained offline on generated scenes with known truth (hil/scene.py, tuning seeds 0..2999 only;
evaluation uses other seeds): one hidden tanh layer, softmax output. Inputs are standardised with
the stored mean and spread. The weights are plain numbers so the package needs no data files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CRYSTAL_MLP", "DROP_MLP", "DROP_MLP_FEATURES", "mlp_positive", "mlp_predict"]


_CACHE: dict[int, tuple[dict[str, Any], dict[str, npt.NDArray[np.float64]]]] = {}


def _arrays(model: dict[str, Any]) -> dict[str, npt.NDArray[np.float64]]:
    """The model's weights as arrays, converted once per model dict, with the input
    standardisation folded into the first layer (one product instead of three steps)."""
    hit = _CACHE.get(id(model))
    if hit is None or hit[0] is not model:
        m = {k: np.asarray(v, dtype=np.float64) for k, v in model.items()}
        w1 = m["W1"] / m["sd"][:, None]
        arrays = {"W1": w1, "b1": m["b1"] - m["mu"] @ w1, "W2": m["W2"], "b2": m["b2"]}
        if m["W2"].shape[1] == 2:  # two classes: the logit difference decides
            arrays["w_diff"] = m["W2"][:, 1] - m["W2"][:, 0]
            arrays["b_diff"] = m["b2"][1:] - m["b2"][:1]
        hit = (model, arrays)
        _CACHE[id(model)] = hit
    return hit[1]


def mlp_predict(model: dict[str, Any], rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """Class probabilities (n, classes) for feature rows (n, features)."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    m = _arrays(model)
    logits = np.tanh(x @ m["W1"] + m["b1"]) @ m["W2"] + m["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    out: npt.NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
    return out


def mlp_positive(model: dict[str, Any], rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """Probability of the second class (n,) of a two-class model for feature rows (n, features):
    the softmax of two logits is the logistic function of their difference."""
    m = _arrays(model)
    z = np.tanh(np.asarray(rows, dtype=np.float64) @ m["W1"] + m["b1"]) @ m["w_diff"]
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(z + m["b_diff"])))
    return out


# fmt: off
#@CRYSTAL
CRYSTAL_MLP: dict[str, Any] = {}
#@DROP
DROP_MLP_FEATURES: tuple[str, ...] = ()
DROP_MLP: dict[str, Any] = {}
#@END
# fmt: on
