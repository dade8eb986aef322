"""Retrain the two small models of the vision core and write them into kiboauto/vision/models.py.

The vision core (kiboauto/vision/) makes two learned decisions, each by a one-hidden-layer numpy
MLP whose weights live as plain numbers in ``kiboauto/vision/models.py`` between marker lines:

1. ``CRYSTAL_MLP`` (between ``#@CRYSTAL`` and ``#@DROP``): is a candidate object a crystal?
   Inputs: :meth:`kiboauto.vision.crystals.Blob.vector` of every measured candidate that
   :func:`kiboauto.vision.pipeline.analyse` returns. Label 1 when a true crystal's centroid lies
   within max(0.4 x its longest dimension, 6 px at 1280x960, in proportion at other sizes) of
   the candidate's centroid. Candidates of
   scenes with a skin weigh ``CRYSTAL_SKIN_WEIGHT`` times more in the loss.
2. ``DROP_MLP`` / ``DROP_MLP_FEATURES`` (between ``#@DROP`` and ``#@END``): the drop class
   (crystals, precipitate, clear, other) from :attr:`Inspection.features` (counts on a log scale,
   see :func:`kiboauto.vision.classify.drop_vector`). These features depend on the crystal model,
   so the crystal model is trained and written first, then the drop features are measured.

Data: generated scenes with exact truth, ``hil/scene.py`` ``random_spec(seed, width=, height=)``,
TRAINING SEEDS 0..2999 BY DEFAULT (evaluation uses 10_000 and up, see bench/vision_accuracy.py;
about 13 minutes on 2 cores). The frame size cycles through ``CRYSTAL_SIZES`` / ``DROP_SIZES`` in
runs of four seeds (``random_spec`` cycles the four classes with the seed, so every size gets
every class); see the comment there. Each
model is first fitted on the first half of the seeds and checked on the second half (the printed
training and validation figures), then refitted on all of them; that final fit is what gets
written.

Deterministic: fixed initialisation seed, full-batch Adam, single-threaded OpenCV and BLAS, and
the seeds are processed in order (worker processes only split the rendering). Running it twice,
or on another machine with the same library versions, writes the same numbers (5 decimals).

    .venv/bin/python tools/train_vision.py            # retrain both, rewrite models.py
    .venv/bin/python tools/train_vision.py --check    # retrain, compare with models.py, no write
    .venv/bin/python tools/train_vision.py --jobs 4   # worker processes for rendering/inspecting
"""

from __future__ import annotations

import os

# single-threaded BLAS before numpy loads: the same sums in the same order on every run
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import replace  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "kiboauto" / "vision" / "models.py"
# frame sizes, in runs of four seeds (random_spec cycles the classes with the seed), half of the
# scenes at 1280x960 (the common size). Both models learn from all four: the drop model's texture
# and line densities follow the sensor noise per working pixel, which changes with the size, and
# trained at 1280x960 alone the crystal model took grain clusters on 2048x2048 and 2560x1920
# frames for crystals (precision 0.894 and 0.846 there, against 0.962 and 0.910 now)
DROP_SIZES = ((1280, 960), (640, 480), (1280, 960), (2048, 2048), (1280, 960), (2560, 1920))
CRYSTAL_SIZES = DROP_SIZES
TRAIN_SEEDS = range(0, 3000)  # the default; --seeds may widen it, never to 10_000 and above
EVAL_FIRST = 10_000  # held-out evaluation seeds start here (bench/vision_accuracy.py)
CRYSTAL_HIDDEN, CRYSTAL_ITERS, CRYSTAL_POS_WEIGHT = 16, 4000, 3.0
# candidates of scenes with a skin weigh more: a skin covers only ~10 % of the crystal drops (and
# some precipitate and "other" drops), yet its folds are what crystals there must be told from
CRYSTAL_SKIN_WEIGHT = 3.0
DROP_HIDDEN, DROP_ITERS = 16, 3000
EMPTY_CRYSTAL = "CRYSTAL_MLP: dict[str, Any] = {}\n"
EMPTY_DROP = "DROP_MLP_FEATURES: tuple[str, ...] = ()\nDROP_MLP: dict[str, Any] = {}\n"

Array = np.ndarray[Any, Any]


# ---------------------------------------------------------------------------- the MLP (numpy)


def train_mlp(
    x: Array,
    y: Array,
    n_classes: int,
    *,
    hidden: int,
    iters: int,
    lr: float = 0.01,
    l2: float = 1e-4,
    seed: int = 0,
    pos_weight: float = 1.0,
    sample_weight: Array | None = None,
) -> dict[str, Array]:
    """One tanh hidden layer, softmax output, cross-entropy + L2, full-batch Adam.

    Inputs are standardised with their mean and spread (stored in the model). ``pos_weight``
    (two classes only) weighs the positive examples, for rare positives; ``sample_weight``
    (optional, one per example) multiplies that.
    """
    rng = np.random.default_rng(seed)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    w1 = rng.standard_normal((z.shape[1], hidden)) * 0.5
    b1 = np.zeros(hidden)
    w2 = rng.standard_normal((hidden, n_classes)) * 0.5
    b2 = np.zeros(n_classes)
    target = np.eye(n_classes)[y]
    weight = np.where(y > 0, pos_weight, 1.0) if n_classes == 2 else np.ones(len(y))
    if sample_weight is not None:
        weight = weight * sample_weight
    params = [w1, b1, w2, b2]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    for it in range(1, iters + 1):
        h = np.tanh(z @ w1 + b1)
        logits = h @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - target) * weight[:, None] / len(y)
        gh = (g @ w2.T) * (1 - h * h)
        grads = [z.T @ gh + l2 * w1, gh.sum(axis=0), h.T @ g + l2 * w2, g.sum(axis=0)]
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            m1[i] = 0.9 * m1[i] + 0.1 * grad
            m2[i] = 0.999 * m2[i] + 0.001 * grad * grad
            param -= lr * (m1[i] / (1 - 0.9**it)) / (np.sqrt(m2[i] / (1 - 0.999**it)) + 1e-8)
    return {"mu": mu, "sd": sd, "W1": w1, "b1": b1, "W2": w2, "b2": b2}


def rounded(model: dict[str, Array]) -> dict[str, Array]:
    """The model as written to models.py (5 decimals), so figures describe what ships."""
    return {k: np.round(np.asarray(v, dtype=float), 5) for k, v in model.items()}


def predict(model: dict[str, Array], x: Array) -> Array:
    h = np.tanh(((x - model["mu"]) / model["sd"]) @ model["W1"] + model["b1"])
    logits = h @ model["W2"] + model["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    out: Array = p / p.sum(axis=1, keepdims=True)
    return out


def model_source(name: str, model: dict[str, Array]) -> str:
    lines = [f"{name}: dict[str, Any] = {{"]
    for key in ("mu", "sd", "W1", "b1", "W2", "b2"):
        lines.append(f"    {key!r}: {np.round(np.asarray(model[key], float), 5).tolist()!r},")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- models.py markers


def put_block(text: str, start: str, end: str, block: str) -> str:
    """``text`` with the lines between the marker lines ``start`` and ``end`` replaced."""
    i = text.index(start + "\n") + len(start) + 1
    j = text.index(end + "\n", i)
    return text[:i] + block + text[j:]


def write_models(text: str) -> None:
    MODELS.write_text(text)
    import kiboauto.vision.models as models_module

    importlib.reload(models_module)


# ------------------------------------------------------------------------------- data (workers)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def training_spec(seed: int, sizes: tuple[tuple[int, int], ...]) -> Any:
    """The scene of one training seed: ``random_spec`` at the size of ``sizes`` this seed takes
    (in runs of four seeds: ``random_spec`` cycles the classes with the seed)."""
    from kiboauto.hil import scene

    width, height = sizes[(seed // 4) % len(sizes)]
    spec = scene.random_spec(seed, width=width, height=height)
    return replace(spec, **imager_options(seed))


def imager_options(seed: int) -> dict[str, Any]:
    """The imager and light of one training seed (domain randomisation, drawn from its own stream
    so the rest of the scene is the one ``random_spec`` draws): a round whole well in 44 % of the
    scenes, a square sub-well in 12 %, a VMXi-like drop meeting two walls of a square sub-well in
    10 %, a zoomed view clipped by the frame in 12 %, no well in 12 % and a microfluidic droplet
    chip in 10 %; a broad shaded drop edge in a quarter of the wells and open fields; UV light
    (a dark field, glowing crystals) in 15 % of all. Evaluation scenes (bench/vision_imagers.py)
    use seeds from 100_000 on.
    """
    r = np.random.default_rng([seed, 0x1A6E])
    u = float(r.uniform())
    opts: dict[str, Any] = {}
    plain = True  # a geometry that takes a broad shaded drop edge
    if u < 0.12:
        opts["well_shape"] = "square"
    elif u < 0.22:
        opts["well_shape"] = "square"
        opts["drop_meets_wall"] = True
        plain = False
    elif u < 0.34:
        opts["well_zoom"] = float(r.uniform(1.3, 1.9))
    elif u < 0.46:
        opts["well_shape"] = "none"
        opts["well_zoom"] = float(r.uniform(1.3, 1.8))
    elif u < 0.56:
        opts["well_shape"] = "droplets"
        plain = False
    soft = float(r.uniform())
    if plain and soft < 0.25:
        opts["drop_edge_soft"] = float(r.uniform(0.2, 0.45))
    if r.uniform() < 0.15:
        opts["light"] = "uv"
        opts["colour"] = False
    return opts


def blob_rows(seed: int) -> tuple[list[list[float]], list[int], bool]:
    """Candidate vectors and labels (1 = a true crystal) of one training scene, and whether the
    scene has a skin."""
    from kiboauto.hil import scene
    from kiboauto.vision.pipeline import analyse

    spec = training_spec(seed, CRYSTAL_SIZES)
    image, truth = scene.render(spec)
    _res, candidates = analyse(image, um_per_px=spec.um_per_px)
    rows, labels = [], []
    near_px = 6.0 * min(spec.width, spec.height) / 960  # 6 px at 1280x960
    for blob, (x, y) in candidates:
        near = any(
            math.hypot(x - c.centroid_px[0], y - c.centroid_px[1])
            < max(0.4 * c.longest_um / spec.um_per_px, near_px)
            for c in truth.crystals
        )
        rows.append(blob.vector())
        labels.append(int(near))
    return rows, labels, truth.distractors.get("skin", 0) > 0


def drop_row(seed: int) -> tuple[dict[str, float], int]:
    """The measured features and the true class index of one training scene."""
    from kiboauto.hil import scene
    from kiboauto.vision import inspect

    spec = training_spec(seed, DROP_SIZES)
    image, truth = scene.render(spec)
    res = inspect(image, um_per_px=spec.um_per_px)
    return dict(res.features), scene.DROP_CLASSES.index(truth.drop_class)


def run_seeds(fn: Callable[[int], Any], seeds: Iterable[int], jobs: int) -> list[Any]:
    """``fn`` over ``seeds`` in order (in ``jobs`` fresh processes that read models.py anew)."""
    seeds = list(seeds)
    if jobs <= 1:
        _worker_init()
        return [fn(s) for s in seeds]
    with get_context("spawn").Pool(jobs, initializer=_worker_init) as pool:
        return pool.map(fn, seeds, chunksize=4)


# ------------------------------------------------------------------------------------ training


def train_crystal(jobs: int, seeds: range) -> dict[str, Array]:
    t0 = time.perf_counter()
    data = run_seeds(blob_rows, seeds, jobs)
    xs, ys, img, ws = [], [], [], []
    for seed, (rows, labels, skin) in zip(seeds, data, strict=True):
        xs += rows
        ys += labels
        img += [seed] * len(rows)
        ws += [CRYSTAL_SKIN_WEIGHT if skin else 1.0] * len(rows)
    x, y, s, w = np.asarray(xs, float), np.asarray(ys, int), np.asarray(img), np.asarray(ws)
    print(
        f"crystal candidates: {len(y)} from {len(seeds)} scenes, {int(y.sum())} crystals "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    split = seeds.start + len(seeds) // 2
    fit, val = s < split, s >= split
    m = rounded(
        train_mlp(
            x[fit], y[fit], 2, hidden=CRYSTAL_HIDDEN, iters=CRYSTAL_ITERS,
            pos_weight=CRYSTAL_POS_WEIGHT, sample_weight=w[fit],
        )
    )  # fmt: skip
    for name, sel in (
        (f"fit {seeds.start}..{split - 1}", fit),
        (f"validation {split}..{seeds.stop - 1}", val),
    ):
        pred = predict(m, x[sel])[:, 1] > 0.5
        truth = y[sel] == 1
        tp, fp, fn = (
            int((pred & truth).sum()),
            int((pred & ~truth).sum()),
            int((~pred & truth).sum()),
        )
        print(
            f"  {name:20s} tp {tp:5d} fp {fp:5d} fn {fn:5d}  recall {tp / max(tp + fn, 1):.3f}"
            f"  precision {tp / max(tp + fp, 1):.3f}"
        )
    final = rounded(
        train_mlp(
            x, y, 2, hidden=CRYSTAL_HIDDEN, iters=CRYSTAL_ITERS,
            pos_weight=CRYSTAL_POS_WEIGHT, sample_weight=w,
        )
    )  # fmt: skip
    pred = predict(final, x)[:, 1] > 0.5
    print(
        f"  final (all seeds) tp {int((pred & (y == 1)).sum())} "
        f"fp {int((pred & (y == 0)).sum())} fn {int((~pred & (y == 1)).sum())}"
    )
    return final


def drop_matrix(feats: list[dict[str, float]]) -> tuple[list[str], Array]:
    # inputs only: not the geometry flags, nor the confidence the result reports
    skip = ("well_found", "drop_found", "raw_confidence")
    names = sorted(n for n in feats[0] if n not in skip)
    x = np.asarray([[f[n] for n in names] for f in feats], float)
    from kiboauto.vision.classify import log_scaled

    for j, n in enumerate(names):
        if log_scaled(n):
            x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
    return names, x


def train_drop(jobs: int, seeds: range) -> tuple[list[str], dict[str, Array]]:
    from kiboauto.vision.types import DROP_CLASSES

    t0 = time.perf_counter()
    data = run_seeds(drop_row, seeds, jobs)
    names, x = drop_matrix([d[0] for d in data])
    y = np.asarray([d[1] for d in data], int)
    s = np.asarray(list(seeds))
    print(f"drop features: {len(names)} from {len(y)} scenes ({time.perf_counter() - t0:.0f} s)")
    split = seeds.start + len(seeds) // 2
    fit, val = s < split, s >= split
    m = rounded(train_mlp(x[fit], y[fit], 4, hidden=DROP_HIDDEN, iters=DROP_ITERS))
    for name, sel in (
        (f"fit {seeds.start}..{split - 1}", fit),
        (f"validation {split}..{seeds.stop - 1}", val),
    ):
        pred = predict(m, x[sel]).argmax(axis=1)
        per = "  ".join(
            f"{c} {int(((pred == k) & (y[sel] == k)).sum())}/{int((y[sel] == k).sum())}"
            for k, c in enumerate(DROP_CLASSES)
        )
        print(f"  {name:20s} accuracy {(pred == y[sel]).mean():.3f}  ({per})")
    final = rounded(train_mlp(x, y, 4, hidden=DROP_HIDDEN, iters=DROP_ITERS))
    print(f"  final (all seeds) accuracy {(predict(final, x).argmax(1) == y).mean():.3f}")
    return names, final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--check", action="store_true", help="compare with models.py, restore it")
    ap.add_argument(
        "--seeds", default=f"{TRAIN_SEEDS.start}:{TRAIN_SEEDS.stop}", help="training seeds a:b"
    )
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.seeds.split(":"))
    seeds = range(lo, hi)
    if lo < 0 or hi > EVAL_FIRST or len(seeds) < 20:
        ap.error(f"training seeds must lie in 0..{EVAL_FIRST - 1} (evaluation starts there)")
    sys.path.insert(0, str(ROOT))
    original = MODELS.read_text()
    try:
        # 1. candidates do not depend on any model; the drop model is left out while measuring
        text = put_block(original, "#@CRYSTAL", "#@DROP", EMPTY_CRYSTAL)
        text = put_block(text, "#@DROP", "#@END", EMPTY_DROP)
        write_models(text)
        crystal = train_crystal(args.jobs, seeds)
        text = put_block(text, "#@CRYSTAL", "#@DROP", model_source("CRYSTAL_MLP", crystal))
        write_models(text)
        # 2. the drop features use the new crystal model
        names, drop = train_drop(args.jobs, seeds)
        block = f"DROP_MLP_FEATURES: tuple[str, ...] = {tuple(names)!r}\n"
        block += model_source("DROP_MLP", drop)
        text = put_block(text, "#@DROP", "#@END", block)
    except BaseException:
        MODELS.write_text(original)
        raise
    if args.check:
        MODELS.write_text(original)
        same = text == original
        print(
            "models.py " + ("REPRODUCED exactly" if same else "DIFFERS from the retrained models")
        )
        return 0 if same else 1
    write_models(text)
    print(f"wrote {MODELS.relative_to(ROOT)}" + (" (unchanged)" if text == original else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
