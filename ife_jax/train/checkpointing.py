"""Checkpoints that survive crashes: Orbax managers for the recent and the best train state.

Each checkpoint holds three items: ``state`` (the sharded train state), ``data`` (the training
input's iterator state, so a resumed run reads exactly the next batch) and ``meta`` (epoch,
position in the epoch, best validation Dice, the run's configuration). Orbax writes to a
temporary directory and renames it when complete, so a run killed while saving leaves the
previous checkpoint intact. When training resumes, a checkpoint that cannot be read is moved to
``<workdir>/corrupt/`` with a warning and the one before it is used; a read-only
``Checkpointer`` (evaluation, prediction) skips it with a warning and changes nothing on disk.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import jax

from ife_jax._extras import missing_extra

try:
    import orbax.checkpoint as ocp
except ModuleNotFoundError as err:
    raise missing_extra(err, "train") from None

ITEMS = ("state", "data", "meta")


def _manager(directory: Path, keep: int, *, read_only: bool) -> ocp.CheckpointManager:
    if read_only:
        options = ocp.CheckpointManagerOptions(
            read_only=True,
            max_to_keep=None,
            save_interval_steps=0,
            create=False,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=False,
        )
    else:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
    quiet = _DropMessage("Given directory is read only")  # says what the caller asked for
    logging.getLogger("absl").addFilter(quiet)
    try:
        return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)
    finally:
        logging.getLogger("absl").removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def saved_steps(directory: str | Path) -> list[int]:
    """The steps of the finished checkpoints in ``directory`` (from the file names; reads
    nothing else and creates nothing)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


class _AbandonedReadNoise(logging.Filter):
    """Drops the asyncio log records of the reads Orbax abandons when a checkpoint fails."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "exception was never retrieved" not in text:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        # A task or future of the abandoned read: its error names the reader or the store.
        return not any(k in text for k in ("deserialize", "OCDBT", "tensorstore", "Event loop"))


_noise_silenced = False


def _silence_abandoned_reads() -> None:
    """Keeps stderr readable when a checkpoint fails to load (installed before reading).

    Orbax reads a checkpoint's arrays as concurrent tasks on an event loop that it closes as
    soon as the first read fails. The other reads still finish in TensorStore's threads and try
    to hand their results to the closed loop: each raises an unraisable ``RuntimeError('Event
    loop is closed')`` (reported as unraisable, or printed through ``sys.excepthook`` when it
    surfaces in a callback of TensorStore's), and each failed task is logged as "exception was
    never retrieved" when collected (hundreds of tracebacks for one bad checkpoint, all
    repeating the error that the caller already reported). This drops exactly those messages,
    from then on.
    """
    global _noise_silenced
    if _noise_silenced:
        return
    _noise_silenced = True
    logging.getLogger("asyncio").addFilter(_AbandonedReadNoise())
    previous = sys.unraisablehook

    def hook(unraisable):
        err = unraisable.exc_value
        if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook
    previous_excepthook = sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_excepthook(kind, value, traceback)

    sys.excepthook = excepthook


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class UnreadableCheckpointsError(RuntimeError):
    """Checkpoints exist but none of them can be read; the message names the directory."""


class Checkpointer:
    """The recent checkpoints (``<workdir>/checkpoints``) and the best one (``<workdir>/best``).

    Args:
      workdir: the run's directory.
      keep: how many recent checkpoints to keep.
      read_only: open for reading only: nothing in ``workdir`` is created, moved, deleted or
        written (``save`` raises), and an unreadable checkpoint is skipped, not moved aside.
    """

    def __init__(self, workdir: str | Path, *, keep: int = 2, read_only: bool = False):
        self.workdir = Path(workdir).absolute()
        self.read_only = read_only
        self.recent = _manager(self.workdir / "checkpoints", keep, read_only=read_only)
        self.best = _manager(self.workdir / "best", 1, read_only=read_only)

    def save(self, step: int, state, data_state: dict, meta: dict, *, best: bool = False) -> None:
        """Saves under ``step`` (a no-op if that step is already saved) and waits for it."""
        if self.read_only:
            raise PermissionError(f"{self.workdir} was opened read-only; cannot save step {step}")
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
          UnreadableCheckpointsError: if checkpoints exist but none of them can be read.
        """
        manager = self.best if best else self.recent
        steps = sorted(manager.all_steps(), reverse=True)
        # Before the first read: a failed read's abandoned reads report from other threads at
        # once, before the failure reaches this frame.
        _silence_abandoned_reads()
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
            except Exception as err:  # any failure to read means "corrupt"
                where = Path(manager.directory) / str(step)
                action = (
                    "skipping it" if self.read_only else f"moving it to {self.workdir / 'corrupt'}"
                )
                warnings.warn(
                    f"checkpoint {where} cannot be read ({type(err).__name__}: "
                    f"{str(err)[:200]}); {action} and falling back to the previous checkpoint",
                    RuntimeWarning,
                    stacklevel=2,
                )
                if not self.read_only:
                    self._quarantine(manager, step)
                continue
            return restored.state, dict(restored.data or {}), dict(restored.meta or {})
        if steps:
            raise UnreadableCheckpointsError(
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

    def steps(self, *, best: bool = False) -> list[int]:
        """The saved steps, oldest first."""
        return sorted((self.best if best else self.recent).all_steps())

    def read_meta(self, step: int, *, best: bool = False) -> dict:
        """The ``meta`` item of one checkpoint (epoch, best Dice, configuration), without its
        arrays.

        Raises:
          ValueError: if it cannot be read.
        """
        manager = self.best if best else self.recent
        try:
            restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # Orbax raises many kinds
            raise ValueError(
                f"{Path(manager.directory) / str(step)}: cannot read its metadata ({err})"
            ) from None
        return dict(restored.meta or {})

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
