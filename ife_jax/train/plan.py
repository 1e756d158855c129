"""The nnU-Net plan of a training run: fingerprinted from the training split, kept as
``plan.json`` in the workdir (read back on resume, evaluation and prediction)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from ife_jax.train.config import TrainConfig

PLAN_FILE = "plan.json"


def dataset_pairs(
    dataset: str, split: str, *, data_dir: str | None = None, limit: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(image (H, W, 3) uint8, mask (H, W) uint8)`` pairs of a TFDS dataset's split."""
    from ife_jax.train.datasets import load_examples

    for ex in load_examples(dataset, split, data_dir=data_dir, limit=limit):
        yield ex.image, ex.mask


def make_plan(
    dataset: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    limit: int | None = None,
    **plan_kwargs,
):
    """Fingerprints ``dataset`` (a folder of ``X.png``/``X_mask.png`` pairs, or a TFDS dataset
    name) and returns its :class:`~ife_jax.nn.nnunet_plan.NNUNetPlan`.

    ``plan_kwargs`` go to :func:`ife_jax.nn.nnunet_plan.plan_from_fingerprint` (``memory_gb``,
    ``modality``, ...).
    """
    from ife_jax.nn import nnunet_plan

    if Path(dataset).is_dir():
        return nnunet_plan.plan_dataset(dataset, **plan_kwargs)
    pairs = dataset_pairs(dataset, split, data_dir=data_dir, limit=limit)
    return nnunet_plan.plan_dataset(pairs, **plan_kwargs)


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
    from ife_jax.nn.nnunet_plan import NNUNetPlan

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
