"""Train the per-pixel models behind the confluence (kiboauto/vision/confluence_model.py).

Fields are rendered by ``kiboauto.hil.scene_cells`` with known coverage and random options (all
cell kinds, halo strength, walls, debris, blur, 16-bit raw with a pedestal and gain, sensor
noise, frame size), on **training seeds 100000+ only** (the bench uses 10000+, the tests 20000+,
validation while developing 50000+). Each field goes through
:func:`kiboauto.vision.cells_field.prepare_field` and the feature functions; labels are the exact
cell fraction of each half-working-resolution pixel. Stage 1 sees the local features; each later
stage adds a background fitted where the previous stage sees no cells and that stage's answer
smoothed (auto-context), and is trained on the previous stages' answers. Each is one hidden tanh
layer and a logistic output trained with Adam on the soft labels (cross-entropy).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/train_confluence.py [--fields 600] [--epochs 6]

Writes the weights into kiboauto/vision/confluence_model.py (plain numbers).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pathlib
import time
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from kiboauto.hil.scene_cells import CellFieldOptions, render_cell_field
from kiboauto.vision import cells_field as cf

SEED0 = 100000
ROWS_PER_FIELD = 3000
OUT = pathlib.Path(__file__).resolve().parents[1] / "kiboauto" / "vision" / "confluence_model.py"

F64 = npt.NDArray[np.float64]


def field_options(seed: int) -> tuple[CellFieldOptions, float, tuple[int, int]]:
    """Random options, coverage and frame size (width, height) for one training field
    (deterministic in ``seed``)."""
    r = np.random.default_rng([seed, 77])
    size = ((1280, 960), (1280, 960), (1280, 960), (640, 480), (1600, 1200))[int(r.integers(0, 5))]
    kind = ("normal", "spread", "rounded", "mixed")[int(r.integers(0, 4))]
    level = 0.0 if r.random() < 0.04 else float(r.uniform(0.0, 1.0) ** 0.8)
    opt = CellFieldOptions(
        kind=kind,
        halo=1.0 if r.random() < 0.5 else float(r.uniform(0.5, 2.5)),
        wall=float(r.uniform(0.05, 0.25)) if r.random() < 0.2 else 0.0,
        wall_sides=int(r.integers(1, 3)),
        debris=int(r.integers(50, 400)) if r.random() < 0.2 else 0,
        blur_sigma=float(r.uniform(1.0, 3.5)) if r.random() < 0.2 else 0.0,
        bit_depth=16 if r.random() < 0.2 else 8,
        pedestal=float(r.uniform(2000, 25000)),
        gain=float(r.uniform(20, 60)),
        noise=2.5 if r.random() < 0.5 else float(r.uniform(1.5, 4.5)),
    )
    return opt, level, size


def field_rows(args: tuple[int, list[dict[str, Any]]]) -> tuple[F64, F64]:
    """Feature rows and soft labels of sampled pixels of one field: first-stage rows, or when
    earlier stages are given, the rows of the next stage."""
    seed, stages = args
    opt, level, (width, height) = field_options(seed)
    field = render_cell_field(seed, level, opt, width=width, height=height)
    prep = cf.prepare_field(field.image)
    assert prep is not None
    feats = cf.stage1_features(prep)
    if stages:
        p = cf.cell_probability(prep, stages)
        feats = np.concatenate([feats, cf.stage2_features(prep, p)])
    hq, wq = prep.q.shape
    truth = np.asarray(
        cv2.resize(field.cells.astype(np.float32), (wq, hq), interpolation=cv2.INTER_AREA)
    )
    where = np.flatnonzero(prep.valid[::2, ::2].ravel())
    r = np.random.default_rng([seed, 78])
    pick = r.choice(where, size=min(ROWS_PER_FIELD, where.size), replace=False)
    x = feats.reshape(feats.shape[0], -1)[:, pick].T.astype(np.float64)
    return x, truth.ravel()[pick].astype(np.float64)


def train_mlp(x: F64, y: F64, hidden: int, epochs: int, seed: int) -> dict[str, Any]:
    """One hidden tanh layer, logistic output, cross-entropy on soft labels, Adam."""
    r = np.random.default_rng(seed)
    mu, sd = x.mean(0), np.maximum(x.std(0), 1e-3)  # a constant feature: sd 1e-3, not 0
    xs = (x - mu) / sd
    k = x.shape[1]
    params = {
        "W1": r.normal(0, 1 / np.sqrt(k), (k, hidden)),
        "b1": np.zeros(hidden),
        "W2": r.normal(0, 1 / np.sqrt(hidden), hidden),
        "b2": np.zeros(1),
    }
    m = {n: np.zeros_like(v) for n, v in params.items()}
    v2 = {n: np.zeros_like(v) for n, v in params.items()}
    step, batch = 0, 1024
    for ep in range(epochs):
        lr = 3e-3 * (0.5 ** (ep / max(1, epochs / 4)))
        order = r.permutation(len(xs))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            xb, yb = xs[idx], y[idx]
            hid = np.tanh(xb @ params["W1"] + params["b1"])
            z = hid @ params["W2"] + params["b2"]
            p = 1 / (1 + np.exp(-z))
            total += float(-(yb * np.log(p + 1e-9) + (1 - yb) * np.log(1 - p + 1e-9)).sum())
            dz = (p - yb) / len(idx)
            grads = {"W2": hid.T @ dz, "b2": np.array([dz.sum()])}
            dh = np.outer(dz, params["W2"]) * (1 - hid * hid)
            grads["W1"] = xb.T @ dh
            grads["b1"] = dh.sum(0)
            step += 1
            for n in params:
                m[n] = 0.9 * m[n] + 0.1 * grads[n]
                v2[n] = 0.999 * v2[n] + 0.001 * grads[n] ** 2
                mh = m[n] / (1 - 0.9**step)
                vh = v2[n] / (1 - 0.999**step)
                params[n] -= lr * mh / (np.sqrt(vh) + 1e-8)
        print(f"  epoch {ep + 1}: loss {total / len(xs):.4f}", flush=True)
    return {
        "mu": mu.tolist(),
        "sd": sd.tolist(),
        "W1": params["W1"].tolist(),
        "b1": params["b1"].tolist(),
        "W2": params["W2"].tolist(),
        "b2": float(params["b2"][0]),
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return float(f"{float(value):.6g}")


def write_models(stages: list[dict[str, Any]], note: str) -> None:
    """Write the models as plain numbers into the model module."""
    lines = [
        "# ruff: noqa: E501  (the trained weights are long generated lines)",
        '"""Per-pixel cell models behind the confluence (written by tools/train_confluence.py).',
        "",
        "Stage 1 classifies each half-working-resolution pixel from local contrasts and texture",
        "energies (``cells_field.STAGE1_FEATURES``); each later stage adds a background fitted",
        "where the previous one sees no cells and its answer smoothed",
        "(``cells_field.STAGE2_FEATURES``). One hidden tanh layer, logistic output; inputs",
        "standardised by ``mu`` and ``sd``.",
        f"{note}",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "# fmt: off",
    ]
    for i, model in enumerate(stages):
        lines.append(f"STAGE{i + 1}_MLP: dict[str, Any] = {{")
        for key, value in model.items():
            lines.append(f"    {key!r}: {_rounded(value)!r},")
        lines.append("}")
    names = ", ".join(f"STAGE{i + 1}_MLP" for i in range(len(stages)))
    lines.append(f"STAGES: tuple[dict[str, Any], ...] = ({names},)")
    lines.append("# fmt: on")
    OUT.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Render, featurise, train both stages, write the weights."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fields", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stages", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    seeds = list(range(SEED0, SEED0 + args.fields))
    stages: list[dict[str, Any]] = []
    with mp.Pool(args.jobs) as pool:
        for stage in range(1, args.stages + 1):
            t0 = time.time()
            rows = pool.map(field_rows, [(s, stages) for s in seeds], chunksize=4)
            x = np.concatenate([r[0] for r in rows])
            y = np.concatenate([r[1] for r in rows])
            print(f"stage {stage}: {x.shape} rows in {time.time() - t0:.0f} s", flush=True)
            stages.append(train_mlp(x, y, args.hidden, args.epochs, seed=stage))
    note = (
        f"Trained on {args.fields} rendered fields (seeds {SEED0}..{SEED0 + args.fields - 1}), "
        f"{ROWS_PER_FIELD} pixels each;\n{args.stages} stages, hidden units {args.hidden}, "
        f"epochs {args.epochs}."
    )
    write_models(stages, note)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
