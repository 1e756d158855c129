"""The nnU-Net plan of a training run: fingerprinted from the training split by
:func:`ife_jax.nnunet.image_plans.make_plan`, kept as ``plan.json`` in the workdir (read back
on resume, evaluation and prediction)."""

from __future__ import annotations

import warnings
from pathlib import Path

import jax

from ife_jax.train.config import TrainConfig

PLAN_FILE = "plan.json"


def _moved(name: str) -> None:
    warnings.warn(
        f"ife_jax.train.plan.{name} is deprecated; use ife_jax.nnunet.image_plans.{name}.",
        DeprecationWarning,
        stacklevel=3,
    )


def dataset_pairs(dataset: str, split: str, **kwargs):
    """Deprecated: :func:`ife_jax.nnunet.image_plans.dataset_pairs`."""
    from ife_jax.nnunet.image_plans import dataset_pairs as pairs

    _moved("dataset_pairs")
    return pairs(dataset, split, **kwargs)


def make_plan(dataset: str, **kwargs):
    """Deprecated: :func:`ife_jax.nnunet.image_plans.make_plan`."""
    from ife_jax.nnunet.image_plans import make_plan as plan

    _moved("make_plan")
    return plan(dataset, **kwargs)


def check_sizes(plan, config: TrainConfig) -> None:
    """Raises ``ValueError`` when a training size is not divisible by the plan's total stride."""
    sy, sx = plan.total_stride
    bad = [s for s in config.train_sizes if s % sy or s % sx]
    if bad:
        raise ValueError(
            f"train_sizes={config.train_sizes}: the nnUNet plan's total stride is "
            f"{sy}x{sx}, so every training size must be a multiple of it (the plan's patch "
            f"is {plan.patch_size[0]}x{plan.patch_size[1]})"
        )


def plan_for_run(
    config: TrainConfig, workdir: str | Path, *, reuse: bool = True, save: bool = True
):
    """The run's plan: ``workdir/plan.json`` if it exists (and ``reuse``), else made from the
    training split (``config.max_train_examples`` of it) and, if ``save``, saved there.
    ``None`` unless the model is nnUNet.
    """
    if config.model != "nnunet":
        return None
    from ife_jax.nnunet.image_plans import NNUNetPlan, make_plan

    path = Path(workdir) / PLAN_FILE
    if reuse and path.exists():
        plan = NNUNetPlan.load(path)
    else:
        plan = make_plan(
            config.dataset,
            split=config.train_split,
            data_dir=config.data_dir,
            limit=config.max_train_examples,
        )
        if save and jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            plan.save(path)
    check_sizes(plan, config)
    return plan
