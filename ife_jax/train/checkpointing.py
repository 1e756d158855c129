"""Checkpoints that survive crashes: Orbax managers for the recent and the best train state.

Each checkpoint holds three items: ``state`` (the sharded train state), ``data`` (the training
input's iterator state, so a resumed run reads exactly the next batch) and ``meta`` (epoch,
position in the epoch, best validation Dice). Orbax writes to a temporary directory and renames
it when complete, so a run killed while saving leaves the previous checkpoint intact. A
checkpoint that cannot be read is moved to ``<workdir>/corrupt/`` with a warning and the one
before it is used.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """The recent checkpoints (``<workdir>/checkpoints``) and the best one (``<workdir>/best``).

    Args:
      workdir: the run's directory.
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, workdir: str | Path, *, keep: int = 2):
        self.workdir = Path(workdir).absolute()
        self.recent = _manager(self.workdir / "checkpoints", keep)
        self.best = _manager(self.workdir / "best", 1)

    def save(self, step: int, state, data_state: dict, meta: dict, *, best: bool = False) -> None:
        """Saves under ``step`` (a no-op if that step is already saved) and waits for it."""
        manager = self.best if best else self.recent
        if step in manager.all_steps():
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.recent.latest_step()

    def restore(self, abstract_state, *, best: bool = False) -> tuple[Any, dict, dict] | None:
        """The newest readable checkpoint as ``(state, data_state, meta)``, or ``None`` if none.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings (the target).
          best: restore the best checkpoint instead of the most recent.

        Raises:
          RuntimeError: if checkpoints exist but none of them can be read.
        """
        manager = self.best if best else self.recent
        steps = sorted(manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as err:  # noqa: BLE001 - any failure to read means "corrupt"
                where = Path(manager.directory) / str(step)
                warnings.warn(
                    f"checkpoint {where} cannot be read ({type(err).__name__}: "
                    f"{str(err)[:200]}); moving it to {self.workdir / 'corrupt'} and falling "
                    "back to the previous checkpoint",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._quarantine(manager, step)
                continue
            return restored.state, dict(restored.data or {}), dict(restored.meta or {})
        if steps:
            raise RuntimeError(
                f"no checkpoint in {manager.directory} can be read (tried steps {steps})"
            )
        return None

    def read(self, step: int | None = None, *, best: bool = False) -> tuple[Any, dict, dict]:
        """A checkpoint as saved (nested dicts of arrays), without a target; for inspection.

        Args:
          step: the step (default: the newest).
          best: read from the best checkpoints instead of the recent ones.
        """
        manager = self.best if best else self.recent
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, dict(restored.data or {}), dict(restored.meta or {})

    def _quarantine(self, manager: ocp.CheckpointManager, step: int) -> None:
        source = Path(manager.directory) / str(step)
        if jax.process_index() == 0 and source.exists():
            target = self.workdir / "corrupt" / f"{Path(manager.directory).name}_{step}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(source), str(target))
        _sync(f"ife_jax_quarantine_{step}")
        manager.reload()

    def close(self) -> None:
        self.recent.close()
        self.best.close()
