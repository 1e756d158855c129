"""Evaluation of a trained run: predictions at the original size, the nine metrics in both
conventions, the report and figures, all written to the workdir."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import numpy as np

from ife_jax.train import sharding as sharding_lib
from ife_jax.train.checkpointing import Checkpointer, UnreadableCheckpointsError
from ife_jax.train.config import TrainConfig
from ife_jax.train.inference import predict_images
from ife_jax.train.models import build_model
from ife_jax.train.plan import plan_for_run
from ife_jax.train.state import abstract_train_state, make_optimizer, state_shardings
from ife_jax.train.step import make_eval_step

METRICS = ("con", "dsc", "jc", "f1", "hce", "mae", "hd", "asd", "rvd")
CONVENTIONS = ("standard", "paper")


def load_config(workdir: str | Path) -> TrainConfig:
    """The configuration of the run in ``workdir`` (see :func:`ife_jax.train.workdir.saved_config`).

    Raises:
      FileNotFoundError: if ``workdir`` holds no run.
      ValueError: if it is a file, or its configuration cannot be read.
    """
    from ife_jax.train.workdir import saved_config

    config = saved_config(workdir)
    if config is None:
        raise FileNotFoundError(f"{workdir} holds no training run (no config.json, no checkpoint)")
    return config


def _restore_newest_readable(checkpointer: Checkpointer, abstract, *, best: bool):
    try:
        return checkpointer.restore(abstract, best=best)
    except UnreadableCheckpointsError:
        return None


def load_model(workdir: str | Path, *, checkpoint: str = "best"):
    """``(config, model, variables, mesh, step)`` of a trained run. Reads only: nothing in
    ``workdir`` is created, moved or written.

    Args:
      workdir: the run's directory.
      checkpoint: ``"best"`` (best validation Dice; if no best checkpoint can be read, the
        newest readable recent one, with a warning) or ``"latest"`` (the newest readable one).

    Raises:
      FileNotFoundError: if the run holds no checkpoint.
      ValueError: if none of its checkpoints can be read.
    """
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint={checkpoint!r}: must be 'best' or 'latest'")
    config = load_config(workdir)
    mesh = sharding_lib.make_mesh()
    model = build_model(config, plan=plan_for_run(config, workdir, save=False))
    tx = make_optimizer(config, 1)
    abstract, _ = abstract_train_state(model, tx, (1, config.eval_size, config.eval_size, 3))
    shardings = state_shardings(abstract, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        restored = None
        if checkpoint == "best":
            restored = _restore_newest_readable(checkpointer, abstract, best=True)
            if restored is None and checkpointer.steps(best=True):
                warnings.warn(
                    f"no best checkpoint of {workdir} can be read; using the newest readable "
                    "recent checkpoint instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if restored is None:
            restored = _restore_newest_readable(checkpointer, abstract, best=False)
        tried = {"best": checkpointer.steps(best=True), "checkpoints": checkpointer.steps()}
    finally:
        checkpointer.close()
    if restored is None:
        if any(tried.values()):
            raise ValueError(
                f"{workdir}: none of its checkpoints can be read "
                f"(best/: steps {tried['best']}, checkpoints/: steps {tried['checkpoints']})"
            )
        raise FileNotFoundError(f"{workdir} holds no checkpoint")
    state = restored[0]
    return config, model, state.variables, mesh, int(state.step)


#: Display names of the networks (the report's ``model`` column).
MODEL_NAMES = {
    "unet": "UNet",
    "deeplabv3plus": "DeepLabV3+",
    "sinetv2": "SINetV2",
    "nnunet": "nnUNet",
}


def run_name(config: TrainConfig) -> str:
    """``"UNet"``, ``"UNet+C"``, ``"UNet+E"``, ... as the paper's tables name the runs."""
    suffix = {"curvature": "+C", "entropy": "+E"}.get(config.ife, "")
    return MODEL_NAMES[config.model] + suffix


def records_for(examples, probs, *, model: str, convention: str) -> list[dict]:
    """One report record per example (see :mod:`ife_jax.metrics.report`)."""
    from ife_jax.metrics import report

    groups = {ex.image_id: (ex.modality or "unknown", ex.anatomy or "unknown") for ex in examples}
    triples = [(ex.image_id, p, ex.mask) for ex, p in zip(examples, probs, strict=True)]
    return report.evaluate_masks(
        triples, model=model, convention=convention, group=groups.__getitem__, progress=False
    )


def summary(records: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample std of each metric over ``records`` (one model)."""
    from ife_jax.metrics import report

    (row,) = report.summarize(records)
    return {k: {"mean": float(row[k][0]), "std": float(row[k][1])} for k in METRICS}


def evaluate(
    workdir: str | Path,
    *,
    split: str = "test",
    checkpoint: str = "best",
    max_examples: int | None = None,
    output: str | Path | None = None,
    examples=None,
    name: str | None = None,
) -> dict:
    """Evaluates a run on ``split`` and writes its report to ``output`` (default
    ``<workdir>/eval_<split>``), one folder per convention (``standard/``, ``paper/``).

    Each folder holds what :func:`ife_jax.metrics.report.write_report` writes: ``per_image.csv``,
    ``summary.txt`` (overall, by modality, by anatomy, empty-mask counts), ``summary.csv``,
    ``dsc_by_group.png`` and ``overlays.png``; ``summary.json`` sums up both conventions.

    Args:
      workdir: the training run.
      split: dataset split to evaluate.
      checkpoint: ``"best"`` or ``"latest"``.
      max_examples: evaluate only the first n examples.
      output: the report folder.
      examples: evaluate these ``Example`` objects instead of the dataset split.
      name: the model's name in the report (default :func:`run_name`).

    Returns:
      a dict with ``"standard"`` and ``"paper"`` (each a summary, mapping every metric to its
      mean and std), ``"records"`` (``{convention: records}``), ``"probs"`` (the maps),
      ``"examples"``, ``"name"``, ``"n"``, ``"step"`` and ``"output"``.
    """
    from ife_jax.train.workdir import check_directory, check_writable_folder

    check_directory(workdir, must_exist=True)
    if output is None:
        output = Path(workdir) / f"eval_{split}"
        what = "the report folder (choose another with output=, or --output)"
    else:
        what = "the report folder"
    output = check_writable_folder(output, what=what)
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
    name = name or run_name(config)
    result = {"name": name, "n": len(examples), "step": step, "output": str(output)}
    result["records"] = {
        c: records_for(examples, probs, model=name, convention=c) for c in CONVENTIONS
    }
    for convention in CONVENTIONS:
        result[convention] = summary(result["records"][convention])
    if jax.process_index() == 0:
        write_reports(output, result["records"], examples, {name: probs})
        brief = {k: result[k] for k in ("name", "n", "step", *CONVENTIONS)}
        (output / "summary.json").write_text(json.dumps(brief, indent=2) + "\n")
    result.update(probs=probs, examples=examples)
    return result


def write_reports(
    output: Path, records: dict[str, list[dict]], examples, probs: dict, *, overlays: int = 6
) -> dict[str, str]:
    """The report of each convention in ``output/<convention>/``; with several models, each
    one after the first is compared with the first (paired t-test on DSC) in ``summary.txt``.

    Args:
      output: the report folder.
      records: convention -> records of every model, each model's in ``examples``' order.
      examples: the evaluated examples (for the overlays).
      probs: model name -> probability maps in ``examples``' order (first: the baseline).
      overlays: how many examples the overlay figure shows.

    Returns:
      ``{convention: the text of its summary.txt}``.
    """
    from ife_jax.metrics import report

    names = list(probs)
    shown = examples[:overlays]
    texts = {}
    for convention in CONVENTIONS:
        dsc = {n: [] for n in names}
        for record in records[convention]:
            if record["model"] in dsc and len(dsc[record["model"]]) < len(shown):
                dsc[record["model"]].append(float(record["dsc"]))
        paths = report.write_report(
            records[convention],
            str(output / convention),
            model_names=names,
            baseline=names[0],
            overlays={
                "images": [ex.image for ex in shown],
                "gts": [ex.mask for ex in shown],
                "preds": {n: probs[n][: len(shown)] for n in names},
                "titles": [ex.image_id for ex in shown],
                "dsc": dsc,
                "convention": convention,
            },
        )
        texts[convention] = Path(paths["summary_txt"]).read_text()
    return texts


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """Deprecated: :func:`ife_jax.metrics.report.overlay` (as uint8: ``round(255 * rgb)``)."""
    from ife_jax.metrics import report

    warnings.warn(
        "ife_jax.train.evaluate.overlay is deprecated; use ife_jax.metrics.report.overlay",
        DeprecationWarning,
        stacklevel=2,
    )
    return np.round(255 * report.overlay(image, pred, gt)).astype(np.uint8)
