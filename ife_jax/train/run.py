"""A saved training run, read-only: its configuration, its network and its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn

from ife_jax.train.checkpointing import Checkpointer
from ife_jax.train.config import TrainConfig
from ife_jax.train.evaluate import load_config
from ife_jax.train.models import build_model
from ife_jax.train.plan import plan_for_run


class Run:
    """The run in ``workdir``, opened read-only (nothing on disk changes).

    Attributes:
      workdir: the run's folder.
      config: its :class:`~ife_jax.train.config.TrainConfig`.
      model: the network it trains, built from ``config`` (and its saved plan, for nnU-Net).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.config: TrainConfig = load_config(self.workdir)
        self.model: nn.Module = build_model(
            self.config, plan=plan_for_run(self.config, self.workdir, save=False)
        )
        self._checkpointer = Checkpointer(self.workdir, read_only=True)

    def steps(self) -> list[int]:
        """The steps of the recent checkpoints, in order."""
        return sorted(int(s) for s in self._checkpointer.recent.all_steps())

    def variables(self, step: int) -> dict[str, Any]:
        """The variables ``model.apply`` takes, from the checkpoint of ``step``."""
        state, _, _ = self._checkpointer.read(step)
        if state.get("batch_stats"):
            return {"params": state["params"], "batch_stats": state["batch_stats"]}
        return {"params": state["params"]}

    def close(self) -> None:
        self._checkpointer.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_run(workdir: str | Path) -> Run:
    """Opens the training run in ``workdir`` read-only.

    Raises:
      FileNotFoundError: if ``workdir`` holds no run.
      ValueError: if its configuration cannot be read.

    Example::

        with load_run("runs/unet_e") as run:
            logits = run.model.apply(run.variables(run.steps()[-1]), images, train=False)
    """
    return Run(workdir)
