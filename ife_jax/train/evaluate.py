"""Evaluation of a trained run: predictions at the original size, the nine metrics in both
conventions, the report and figures, all written to the workdir."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np

from ife_jax.train import sharding as sharding_lib
from ife_jax.train.checkpointing import Checkpointer
from ife_jax.train.config import TrainConfig
from ife_jax.train.inference import predict_images
from ife_jax.train.models import build_model
from ife_jax.train.state import abstract_train_state, make_optimizer, state_shardings
from ife_jax.train.step import make_eval_step

METRICS = ("con", "dsc", "jc", "f1", "hce", "mae", "hd", "asd", "rvd")
CONVENTIONS = ("standard", "paper")
#: Shown x100 in the tables, as the paper does.
PERCENT = ("con", "dsc", "jc", "f1")


def load_config(workdir: str | Path) -> TrainConfig:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} holds no training run (no config.json)")
    return TrainConfig.from_json(path.read_text())


def load_model(workdir: str | Path, *, checkpoint: str = "best"):
    """``(config, model, variables, mesh, step)`` of a trained run.

    Args:
      workdir: the run's directory.
      checkpoint: ``"best"`` (best validation Dice) or ``"latest"``.
    """
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint={checkpoint!r}: must be 'best' or 'latest'")
    config = load_config(workdir)
    mesh = sharding_lib.make_mesh()
    model = build_model(config)
    tx = make_optimizer(config, 1)
    abstract, _ = abstract_train_state(model, tx, (1, config.eval_size, config.eval_size, 3))
    shardings = state_shardings(abstract, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore(abstract, best=checkpoint == "best")
        if restored is None and checkpoint == "best":
            restored = checkpointer.restore(abstract)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir} holds no checkpoint")
    state = restored[0]
    return config, model, state.variables, mesh, int(state.step)


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each metric over ``rows``."""
    out = {}
    for key in METRICS:
        values = np.array([r[key] for r in rows], np.float64)
        out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def format_row(name: str, summary: dict) -> str:
    cells = []
    for key in METRICS:
        scale = 100.0 if key in PERCENT else 1.0
        cells.append(f"{summary[key]['mean'] * scale:8.2f}")
    return f"{name:<14}" + "".join(cells)


def format_header() -> str:
    return f"{'model':<14}" + "".join(f"{k.upper():>8}" for k in METRICS)


def evaluate(
    workdir: str | Path,
    *,
    split: str = "test",
    checkpoint: str = "best",
    max_examples: int | None = None,
    output: str | Path | None = None,
    examples=None,
) -> dict:
    """Evaluates a run on ``split`` and writes the report to ``output`` (default
    ``<workdir>/eval_<split>``).

    Writes ``per_image_<convention>.csv``, ``summary.json``, ``table.txt`` and, where the
    metrics report module provides them, its tables and figures.

    Args:
      workdir: the training run.
      split: dataset split to evaluate.
      checkpoint: ``"best"`` or ``"latest"``.
      max_examples: evaluate only the first n examples.
      output: the report folder.
      examples: evaluate these ``Example`` s instead of the dataset split.

    Returns:
      ``{"standard": summary, "paper": summary, "n": images, "step": checkpoint step,
      "output": folder}`` where a summary maps each metric to its mean and std.
    """
    from ife_jax import metrics as metrics_lib

    config, model, variables, mesh, step = load_model(workdir, checkpoint=checkpoint)
    if examples is None:
        from ife_jax.train.datasets import load_examples

        examples = load_examples(
            config.dataset, split, data_dir=config.data_dir, limit=max_examples
        )
    examples = list(examples)
    if not examples:
        raise ValueError(f"split={split!r} holds no examples")
    probs = predict_images(
        make_eval_step(model, mesh),
        variables,
        [ex.image for ex in examples],
        size=config.eval_size,
        batch_size=config.batch_size,
        mesh=mesh,
    )
    output = Path(output) if output is not None else Path(workdir) / f"eval_{split}"
    result = {"n": len(examples), "step": step, "output": str(output)}
    rows_by_convention = {}
    for convention in CONVENTIONS:
        rows = []
        for ex, prob in zip(examples, probs, strict=True):
            values = metrics_lib.compute_all(prob, ex.mask, convention=convention)
            rows.append(
                {
                    "image_id": ex.image_id,
                    "modality": ex.modality,
                    "anatomy": ex.anatomy,
                    **{k: float(values[k]) for k in METRICS},
                }
            )
        rows_by_convention[convention] = rows
        result[convention] = summarize(rows)
    if jax.process_index() == 0:
        _write(output, config, result, rows_by_convention, examples, probs)
    return result


def _write(output: Path, config, result, rows_by_convention, examples, probs) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for convention, rows in rows_by_convention.items():
        with (output / f"per_image_{convention}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (output / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    name = f"{config.model}" + ({"curvature": "+C", "entropy": "+E"}.get(config.ife, ""))
    lines = []
    for convention in CONVENTIONS:
        lines += [
            f"{convention} convention ({result['n']} images)",
            format_header(),
            format_row(name, result[convention]),
            "",
        ]
    (output / "table.txt").write_text("\n".join(lines))
    save_overlays(output / "overlays.png", examples[:8], probs[:8])


def save_overlays(path: Path, examples, probs) -> None:
    """A grid of images with the prediction in red and the ground truth in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(examples)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    for ax, ex, prob in zip(axes[0], examples, probs, strict=True):
        ax.imshow(overlay(ex.image, prob >= 0.5, ex.mask > 0))
        ax.set_title(ex.image_id[:18], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image with ``pred`` tinted red and ``gt`` (if given) green."""
    out = image.astype(np.float32).copy()
    out[pred] = 0.5 * out[pred] + 0.5 * np.array([255, 0, 0], np.float32)
    if gt is not None:
        out[gt] = 0.5 * out[gt] + 0.5 * np.array([0, 255, 0], np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
