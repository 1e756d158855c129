"""``train_and_evaluate(config, workdir)``: the training loop.

Everything a run writes lives in ``workdir``: ``config.json``, ``checkpoints/`` (recent),
``best/`` (best validation Dice), ``metrics.jsonl`` (one JSON object per step, validation and
compilation event) and ``curves.png`` (loss and validation Dice). Running again with the same
workdir resumes from the newest readable checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ife_jax.train import sharding as sharding_lib
from ife_jax.train.checkpointing import Checkpointer
from ife_jax.train.config import TrainConfig
from ife_jax.train.inference import dice, predict_images
from ife_jax.train.models import build_model
from ife_jax.train.plan import plan_for_run
from ife_jax.train.pretrained import load_backbone, record_pretrained_backbone, with_backbone
from ife_jax.train.state import (
    abstract_train_state,
    initialize,
    learning_rate_schedule,
    make_optimizer,
    state_shardings,
)
from ife_jax.train.step import jit_train_step, make_eval_step, make_train_step
from ife_jax.train.workdir import (
    WorkdirLock,
    check_directory,
    has_checkpoints,
    saved_config,
    write_config,
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


def _is_main() -> bool:
    return jax.process_index() == 0


def _log(message: str) -> None:
    if _is_main():
        print(message, flush=True)


class MetricsLog:
    """Append-only JSONL file of training records (written by process 0 only)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drops records after ``step`` (those a crashed run logged past its checkpoint)."""
        if not _is_main() or not self.path.exists():
            return
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def append(self, record: dict) -> None:
        if _is_main():
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _check_config(config: TrainConfig, workdir: Path) -> None:
    """Refuses to train ``config`` in a workdir holding the checkpoints of another run.

    Writes nothing: ``config.json`` is written once set-up has succeeded, so a run that fails
    during set-up never blocks its workdir.
    """
    if not has_checkpoints(workdir):
        return
    saved = saved_config(workdir)
    if saved != config:
        diff = [
            f"{k}: {v!r} -> {getattr(config, k)!r}"
            for k, v in saved.to_dict().items()
            if getattr(config, k) != getattr(saved, k)
        ]
        raise ValueError(
            f"{workdir} holds a run with a different configuration ({'; '.join(diff)}); "
            "use a new workdir"
        )


def _check_train_sizes(model, abstract_state, config: TrainConfig) -> None:
    """Traces the network at every training size (shapes only, nothing runs or compiles), so
    that a size it cannot take fails during set-up, naming the size."""
    for size in config.train_sizes:
        images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
        try:
            jax.eval_shape(
                lambda v, x: model.apply(v, x, train=False), abstract_state.variables, images
            )
        except ValueError as err:
            raise ValueError(f"train_sizes={config.train_sizes}: size {size}: {err}") from None


def _prepare_workdir(workdir: str | Path) -> Path:
    """The workdir as an absolute path, created; raises a one-line error if it cannot be."""
    workdir = check_directory(workdir, must_exist=False)
    if _is_main():
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create workdir {workdir} ({err.strerror})") from None
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise ValueError(f"workdir {workdir} is not writable; training needs to write there")
    return workdir


def fresh_state(init, key: jax.Array, shardings, backbone=None):
    """A new train state: ``init(key)`` placed as ``shardings``, its backbone variables then
    replaced by ``backbone`` (from :func:`~ife_jax.train.pretrained.load_backbone`) if given."""
    state = initialize(init, key, shardings)
    return state if backbone is None else with_backbone(state, backbone, shardings)


def default_inputs(config: TrainConfig):
    """The training input and the validation examples of ``config.dataset`` (TFDS)."""
    from ife_jax.train.datasets import load_inputs

    return load_inputs(config)


def _validate(eval_step, variables, examples, config, mesh) -> float:
    probs = predict_images(
        eval_step,
        variables,
        [ex.image for ex in examples],
        size=config.eval_size,
        batch_size=config.batch_size,
        mesh=mesh,
    )
    scores = [dice(p >= 0.5, ex.mask > 0) for p, ex in zip(probs, examples, strict=True)]
    return float(np.mean(scores))


def plot_curves(records: list[dict], path: Path) -> None:
    """Training loss (per step, and its running mean) and validation Dice (per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_dice" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        x = np.array([r["step"] for r in steps])
        y = np.array([r["loss"] for r in steps])
        ax1.plot(x, y, lw=0.6, alpha=0.4, label="loss")
        w = max(1, len(y) // 20)
        ax1.plot(x[w - 1 :], np.convolve(y, np.ones(w) / w, "valid"), lw=1.5, label=f"mean of {w}")
        ax1.legend()
    ax1.set(xlabel="step", ylabel="structure loss", title="training loss")
    if evals:
        ax2.plot([r["epoch"] for r in evals], [r["val_dice"] for r in evals], "o-")
    ax2.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | Path,
    *,
    inputs: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Trains ``config``'s network, validating and checkpointing each epoch; resumes a run.

    Args:
      config: the run's configuration.
      workdir: where checkpoints, logs and figures go; an existing run there is resumed.
      inputs: ``inputs(config) -> (train_input, validation_examples)`` (default: the dataset
        ``config.dataset`` through TFDS). ``train_input`` yields this process's share of each
        global batch and has ``steps_per_epoch``, ``get_state()`` and ``set_state()``.
      progress: show a progress bar (process 0 only).

    Returns:
      ``{"step", "epoch", "best_val_dice", "best_step", "compile_seconds", "workdir"}``.

    Raises:
      NonFiniteLossError: when a loss is NaN or infinite (the last good checkpoint is kept).
      WorkdirLockedError: when another process trains in ``workdir``.
      ValueError: when ``workdir`` holds another run, or cannot be written.
    """
    sharding_lib.maybe_initialize_distributed()
    config = record_pretrained_backbone(config)
    # A backbone file that does not fit stops the run here, before anything is written.
    backbone = load_backbone(config, (1, config.eval_size, config.eval_size, 3))
    workdir = _prepare_workdir(workdir)
    # Process 0 writes the workdir, so it alone holds the lock.
    with WorkdirLock(workdir) if _is_main() else contextlib.nullcontext():
        return _train(config, workdir, inputs=inputs, progress=progress, backbone=backbone)


def _train(
    config: TrainConfig, workdir: Path, *, inputs: Callable | None, progress: bool, backbone
):
    _check_config(config, workdir)
    resuming = has_checkpoints(workdir)
    mesh = sharding_lib.make_mesh()
    sharding_lib.local_batch_size(config.batch_size, mesh)  # validates divisibility
    train_input, val_examples = (inputs or default_inputs)(config)
    spe = train_input.steps_per_epoch
    total_steps = config.epochs * spe

    model = build_model(config, plan=plan_for_run(config, workdir, reuse=resuming))
    tx = make_optimizer(config, spe)
    schedule = learning_rate_schedule(config, spe)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    abstract, init = abstract_train_state(model, tx, (1, config.eval_size, config.eval_size, 3))
    shardings = state_shardings(abstract, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )

    _check_train_sizes(model, abstract, config)
    if _is_main():  # set-up succeeded: the workdir now holds this run
        write_config(workdir, config)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    log = MetricsLog(workdir / "metrics.jsonl")
    restored = checkpointer.restore(abstract)
    if restored is None:
        state = fresh_state(init, init_key, shardings, backbone)
        meta = {"best_val_dice": -1.0, "best_step": -1}
        log.truncate_after(0)
        start = "from scratch"
        if config.pretrained_backbone is not None:
            start = f"with the backbone of {config.pretrained_backbone}"
        _log(f"training {config.model} (ife={config.ife}) {start} in {workdir}")
    else:
        state, data_state, meta = restored
        train_input.set_state(data_state)
        log.truncate_after(int(state.step))
        _log(f"resumed {workdir} at step {int(state.step)} (epoch {int(state.step) // spe})")

    train_step = jit_train_step(make_train_step(model, tx, base_key=dropout_key), shardings, mesh)
    eval_step = make_eval_step(model, mesh)
    compiled: dict[tuple, Callable] = {}
    compile_seconds: dict[str, float] = {}

    def step_fn(batch):
        shape = tuple(batch["image"].shape)
        if shape not in compiled:
            t0 = time.perf_counter()
            compiled[shape] = train_step.lower(state, batch).compile()
            seconds = time.perf_counter() - t0
            compile_seconds[str(shape[1])] = round(seconds, 3)
            log.append({"step": int(step), "compile_size": shape[1], "compile_seconds": seconds})
            bar_write(f"compiled the train step for {shape[1]}x{shape[2]} in {seconds:.1f} s")
        return compiled[shape]

    bar = None
    if progress and _is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=int(state.step), unit="step", dynamic_ncols=True)

    def bar_write(message):
        (bar.write if bar is not None else _log)(message)

    def save(step_now, *, best=False):
        data_state = train_input.get_state()
        meta_now = dict(meta, step=step_now, epoch=step_now / spe, config=config.to_dict())
        checkpointer.save(step_now, state, data_state, meta_now, best=best)

    step = int(state.step)
    pending = None  # (step, metrics) of the step whose results are not yet read
    clock = {"last": time.perf_counter()}  # when the previous step's results were read

    def flush():
        nonlocal pending
        if pending is None:
            return
        done, metrics = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        rate = config.batch_size / max(now - clock["last"], 1e-9)
        clock["last"] = now
        if not math.isfinite(values["loss"]):
            good = checkpointer.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss ({values['loss']}) at step {done} (epoch {(done - 1) // spe + 1}"
                f"); training stopped, the last good checkpoint is step {good} in {workdir}"
            )
        record = {"step": done, "epoch": (done - 1) // spe + 1, **values}
        record["lr"] = float(schedule(done - 1))
        record["images_per_s"] = rate
        log.append(record)
        if bar is not None:
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}", refresh=False)

    try:
        while step < total_steps:
            local = next(train_input)
            batch = sharding_lib.shard_batch(local, mesh)
            if tuple(batch["image"].shape) not in compiled:
                flush()
                fn = step_fn(batch)
                clock["last"] = time.perf_counter()
            else:
                fn = step_fn(batch)
            state, metrics = fn(state, batch)
            step += 1
            flush()
            pending = (step, metrics)
            if bar is not None:
                bar.update(1)
            epoch_end = step % spe == 0
            periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            if epoch_end:
                flush()
                epoch = step // spe
                if epoch % config.eval_every_epochs == 0 or epoch == config.epochs:
                    val = _validate(eval_step, state.variables, val_examples, config, mesh)
                    log.append({"step": step, "epoch": epoch, "val_dice": val})
                    bar_write(f"epoch {epoch}: validation Dice {val:.4f}")
                    if val > meta["best_val_dice"]:
                        meta.update(best_val_dice=val, best_step=step)
                        save(step, best=True)
                save(step)
                clock["last"] = time.perf_counter()
            elif periodic:
                flush()
                save(step)
                clock["last"] = time.perf_counter()
        flush()
    finally:
        if bar is not None:
            bar.close()
        checkpointer.close()

    if _is_main():
        plot_curves(log.read(), workdir / "curves.png")
    summary = {
        "step": step,
        "epoch": step // spe,
        "best_val_dice": meta["best_val_dice"],
        "best_step": meta["best_step"],
        "compile_seconds": compile_seconds,
        "workdir": str(workdir),
    }
    _log(
        f"done: {step} steps, best validation Dice {meta['best_val_dice']:.4f} at step "
        f"{meta['best_step']}; compile seconds per size {compile_seconds}"
    )
    return summary
