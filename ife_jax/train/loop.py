"""``train_and_evaluate(config, workdir)``: the training loop.

Everything a run writes lives in ``workdir``: ``config.json``, ``checkpoints/`` (recent),
``best/`` (best validation Dice), ``metrics.jsonl`` (one JSON object per step, validation and
compilation event) and ``curves.png`` (loss and validation Dice). Running again with the same
workdir resumes from the newest readable checkpoint.

The run reads top to bottom as its steps: :func:`_set_up` (configuration, data, network,
optimiser, compiled steps), :func:`_restore` (the newest checkpoint, or a fresh state),
:func:`_train_epoch` (the steps up to the next epoch's end, with the periodic checkpoints),
:func:`_evaluate` (validation Dice), :func:`_checkpoint` and :func:`_finish` (the curves and the
summary). :class:`_Run` holds what they share.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
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
from ife_jax.train.datasets import KEEP_DECODED_BYTES
from ife_jax.train.inference import dice, iter_predictions
from ife_jax.train.models import build_model
from ife_jax.train.plan import plan_for_run
from ife_jax.train.precise_bn import make_moments_step, precise_batch_stats
from ife_jax.train.pretrained import load_backbone, record_pretrained_backbone, with_backbone
from ife_jax.train.state import (
    abstract_train_state,
    host_learning_rate,
    initialize,
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


class _DecodedOnce:
    """The validation examples: read lazily, as given, until one whole pass has shown that their
    images and masks fit ``budget`` bytes (default
    :data:`ife_jax.train.datasets.KEEP_DECODED_BYTES`, the training records' budget); from then
    on the examples of that pass. A larger split stays lazy (one batch held at a time)."""

    def __init__(self, examples, budget: int | None = None):
        self.examples, self.kept, self.too_big = examples, None, False
        self.budget = KEEP_DECODED_BYTES if budget is None else budget

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        kept, size = [], 0
        for ex in self.examples:
            if not self.too_big:
                size += ex.image.nbytes + ex.mask.nbytes
                if size > self.budget:
                    self.too_big, kept = True, []
                else:
                    kept.append(ex)
            yield ex
        if not self.too_big:
            self.kept = kept


def _validate(eval_step, variables, examples, config, mesh) -> float:
    """Mean Dice of the thresholded predictions over the validation examples, streamed: one
    batch of images, masks and maps is held at a time, and each example is read once (a lazy
    sequence decodes its image and mask on every access)."""
    masks = collections.deque()

    def images():
        for ex in examples:
            masks.append(ex.mask)
            yield ex.image

    probs = iter_predictions(
        eval_step, variables, images(), size=config.eval_size, batch_size=config.batch_size,
        mesh=mesh,
    )  # fmt: skip
    scores = [dice(p >= 0.5, masks.popleft() > 0) for p in probs]
    if masks or len(scores) != len(examples):
        raise RuntimeError(f"{len(scores)} validation maps for {len(examples)} examples")
    return float(np.mean(scores))


def plot_curves(records: list[dict], path: Path) -> None:
    """Training loss (per step, and its running mean) and validation Dice (per epoch) as a PNG.

    Drawn on a :class:`matplotlib.figure.Figure` of its own: the process's plotting backend and
    pyplot's figures are left alone.
    """
    from matplotlib.figure import Figure

    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_dice" in r]
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
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


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | Path,
    *,
    inputs: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Trains ``config``'s network, validating and checkpointing at the end of epochs (every
    ``eval_every_epochs`` and ``checkpoint_every_epochs``, and after the last); resumes a run.

    Args:
      config: the run's configuration.
      workdir: where checkpoints, logs and figures go; an existing run there is resumed.
      inputs: ``inputs(config) -> (train_input, validation_examples)`` (default: the dataset
        ``config.dataset`` through TFDS). ``train_input`` yields this process's share of each
        global batch and has ``steps_per_epoch``, ``get_state()`` and ``set_state()`` (and
        ``first_images(n)``, the first ``n`` training images, with ``precise_bn_examples``).
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
        run = _set_up(config, workdir, inputs or default_inputs)
        try:
            _restore(run, backbone)
            run.bar = _progress_bar(run) if progress else None
            while run.step < run.total_steps:
                _train_epoch(run)
                epoch = run.step // run.steps_per_epoch
                if epoch % config.eval_every_epochs == 0 or epoch == config.epochs:
                    _evaluate(run, epoch)
                if epoch % config.checkpoint_every_epochs == 0 or epoch == config.epochs:
                    _checkpoint(run)
            run.log_steps.flush()
        finally:
            if run.bar is not None:
                run.bar.close()
            run.checkpointer.close()
        return _finish(run)


@dataclasses.dataclass
class _Run:
    """What the steps of one training run share: set up once, then updated step by step."""

    config: TrainConfig
    workdir: Path
    mesh: jax.sharding.Mesh
    train_input: object
    val_examples: object
    steps_per_epoch: int
    model: object
    rate: Callable[[int], float]  # the step's learning rate, for the log
    init: Callable
    init_key: jax.Array
    shardings: object
    abstract: object
    train_step: Callable  # jitted, compiled once per batch shape into ``compiled``
    eval_step: Callable
    checkpointer: Checkpointer
    log: MetricsLog
    log_steps: _StepRecords | None = None
    state: object = None
    meta: dict = dataclasses.field(default_factory=dict)
    step: int = 0
    compiled: dict[tuple, Callable] = dataclasses.field(default_factory=dict)
    compile_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    bar: object = None
    #: A new best not yet written: ``(step, state copy, data state, meta)``, written to ``best/``
    #: before the next recent checkpoint.
    pending_best: tuple | None = None
    #: ``make_moments_step`` and the images it reads (read once) when
    #: ``config.precise_bn_examples`` asks for precise statistics.
    moments_step: Callable | None = None
    bn_images: list | None = None

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def write(self, message: str) -> None:
        """A line for the user: above the progress bar if there is one."""
        (self.bar.write if self.bar is not None else _log)(message)


def _set_up(config: TrainConfig, workdir: Path, inputs: Callable) -> _Run:
    """Checks the workdir, reads the data, builds the network, optimiser and jitted steps.

    Nothing is written unless all of it succeeds; then ``config.json`` marks the workdir as
    this run's.
    """
    _check_config(config, workdir)
    resuming = has_checkpoints(workdir)
    mesh = sharding_lib.make_mesh()
    sharding_lib.local_batch_size(config.batch_size, mesh)  # validates divisibility
    train_input, val_examples = inputs(config)
    spe = train_input.steps_per_epoch
    bn_images = _precise_bn_images(config, train_input)

    model = build_model(config, plan=plan_for_run(config, workdir, reuse=resuming))
    tx = make_optimizer(config, spe)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    abstract, init = abstract_train_state(model, tx, (1, config.eval_size, config.eval_size, 3))
    shardings = state_shardings(abstract, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    _check_train_sizes(model, abstract, config)
    if _is_main():  # set-up succeeded: the workdir now holds this run
        write_config(workdir, config)
    run = _Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        train_input=train_input,
        val_examples=_DecodedOnce(val_examples),
        steps_per_epoch=spe,
        model=model,
        rate=host_learning_rate(config, spe),
        init=init,
        init_key=init_key,
        shardings=shardings,
        abstract=abstract,
        # ``make_train_step`` is looked up here at run time, so that it can be replaced.
        train_step=jit_train_step(
            make_train_step(model, tx, base_key=dropout_key), shardings, mesh
        ),
        eval_step=make_eval_step(model, mesh),
        checkpointer=Checkpointer(workdir, keep=config.keep_checkpoints),
        log=MetricsLog(workdir / "metrics.jsonl"),
    )
    run.log_steps = _StepRecords(run)
    if bn_images is not None and not abstract.batch_stats:
        _log(f"precise_bn_examples={config.precise_bn_examples}: {config.model} has no BatchNorm")
    elif bn_images is not None:
        run.moments_step, run.bn_images = make_moments_step(model, mesh), bn_images
    return run


def _precise_bn_images(config: TrainConfig, train_input) -> list | None:
    """The images precise BatchNorm statistics are computed over, read once (None when
    ``precise_bn_examples`` is 0); refuses an input without ``first_images`` or with fewer
    images than one batch."""
    n = config.precise_bn_examples
    if not n:
        return None
    if not callable(getattr(train_input, "first_images", None)):
        raise ValueError(
            f"precise_bn_examples={n}: the training input {type(train_input).__name__} has no "
            "first_images(n), which precise BatchNorm statistics read their images from"
        )
    images = train_input.first_images(n)
    if len(images) < config.batch_size:
        raise ValueError(
            f"precise_bn_examples={n}: the training input gave {len(images)} images, fewer "
            f"than one batch of {config.batch_size}"
        )
    return images


def _restore(run: _Run, backbone) -> None:
    """The newest readable checkpoint with its data position, or a fresh state (with the
    pretrained backbone, if any); drops log records past the step the run restarts from."""
    config, workdir = run.config, run.workdir
    restored = run.checkpointer.restore(run.abstract)
    if restored is None:
        run.state = fresh_state(run.init, run.init_key, run.shardings, backbone)
        run.meta = {"best_val_dice": -1.0, "best_step": -1}
        run.log.truncate_after(0)
        start = "from scratch"
        if config.pretrained_backbone is not None:
            start = f"with the backbone of {config.pretrained_backbone}"
        _log(f"training {config.model} (ife={config.ife}) {start} in {workdir}")
    else:
        run.state, data_state, run.meta = restored
        run.train_input.set_state(data_state)
        run.log.truncate_after(int(run.state.step))
        step = int(run.state.step)
        _log(f"resumed {workdir} at step {step} (epoch {step // run.steps_per_epoch})")
    run.step = int(run.state.step)
    run.log_steps.restart_clock()


def _progress_bar(run: _Run):
    """A progress bar over the run's steps (process 0 only; None on the others)."""
    if not _is_main():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.total_steps, initial=run.step, unit="step", dynamic_ncols=True)


def _compiled_step(run: _Run, batch: dict) -> Callable:
    """The train step compiled for the batch's shape; compiles (and logs the time) the first
    time a shape comes, after reading the previous step's results so that they are not timed."""
    shape = tuple(batch["image"].shape)
    if shape in run.compiled:
        return run.compiled[shape]
    run.log_steps.flush()
    t0 = time.perf_counter()
    run.compiled[shape] = run.train_step.lower(run.state, batch).compile()
    seconds = time.perf_counter() - t0
    run.compile_seconds[str(shape[1])] = round(seconds, 3)
    run.log.append({"step": run.step, "compile_size": shape[1], "compile_seconds": seconds})
    run.write(f"compiled the train step for {shape[1]}x{shape[2]} in {seconds:.1f} s")
    run.log_steps.restart_clock()
    return run.compiled[shape]


def _train_epoch(run: _Run) -> None:
    """Trains up to the end of the current epoch, saving the periodic checkpoints on the way.

    Each step is dispatched before the previous one's results are read (:class:`_StepRecords`),
    so the host does not wait for the devices between steps.
    """
    every = run.config.checkpoint_every_steps
    while True:
        batch = sharding_lib.shard_batch(next(run.train_input), run.mesh)
        step_fn = _compiled_step(run, batch)
        run.state, metrics = step_fn(run.state, batch)
        run.step += 1
        run.log_steps.push(run.step, metrics)
        if run.bar is not None:
            run.bar.update(1)
        if run.step % run.steps_per_epoch == 0:
            run.log_steps.flush()
            return
        if every and run.step % every == 0:
            run.log_steps.flush()
            _save(run)
            run.log_steps.restart_clock()


def _evaluate(run: _Run, epoch: int) -> None:
    """Validation Dice of the current state, logged; a new best goes to ``best/``, at once if
    this epoch is checkpointed, otherwise with the next checkpoint (:attr:`_Run.pending_best`).
    With ``precise_bn_examples``, the BatchNorm statistics are recomputed first
    (:func:`_precise_statistics`)."""
    record = {"step": run.step, "epoch": epoch}
    if run.moments_step is not None:
        record["precise_bn_seconds"] = _precise_statistics(run)
    val = _validate(run.eval_step, run.state.variables, run.val_examples, run.config, run.mesh)
    record["val_dice"] = val
    run.log.append(record)
    run.write(f"epoch {epoch}: validation Dice {val:.4f}")
    if val > run.meta["best_val_dice"]:
        run.meta.update(best_val_dice=val, best_step=run.step)
        # The train step donates the state's buffers: the held best is a copy.
        state = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), run.state)
        run.pending_best = (run.step, state, run.train_input.get_state(), _meta(run))


def _precise_statistics(run: _Run) -> float:
    """Replaces the state's BatchNorm running averages by their exact values over the first
    ``precise_bn_examples`` training images (:mod:`ife_jax.train.precise_bn`); returns the
    seconds it took. The train step never reads the running averages, so the weights train as
    they would without."""
    t0 = time.perf_counter()
    config = run.config
    stats = precise_batch_stats(
        run.moments_step, run.state.variables, run.bn_images, size=config.eval_size,
        batch_size=config.batch_size, mesh=run.mesh,
    )  # fmt: skip
    stats = jax.device_put(stats, run.shardings.batch_stats)
    run.state = run.state.replace(batch_stats=stats)
    return time.perf_counter() - t0


def _checkpoint(run: _Run) -> None:
    """The end-of-epoch checkpoint; the time it takes is not counted in the next step's rate."""
    _save(run)
    run.log_steps.restart_clock()


def _meta(run: _Run) -> dict:
    return dict(
        run.meta,
        step=run.step,
        epoch=run.step / run.steps_per_epoch,
        config=run.config.to_dict(),
    )


def _save(run: _Run) -> None:
    """A recent checkpoint of the current state, after the pending best (if any): the best a
    checkpoint's ``meta`` names is on disk before the checkpoint is."""
    if run.pending_best is not None:
        step, state, data_state, meta = run.pending_best
        run.checkpointer.save(step, state, data_state, meta, best=True)
        run.pending_best = None
    run.checkpointer.save(run.step, run.state, run.train_input.get_state(), _meta(run))


class _StepRecords:
    """Logs each step's loss, learning rate and throughput, one step late.

    The metrics of step ``t`` are read (which waits for the devices) only after step ``t + 1``
    has been dispatched, or at a checkpoint, evaluation or compilation. A non-finite loss stops
    the run there, naming the step.
    """

    def __init__(self, run: _Run):
        self.run = run
        self.pending = None  # (step, metrics) of the step whose results are not yet read
        self.last = time.perf_counter()  # when the previous step's results were read

    def restart_clock(self) -> None:
        self.last = time.perf_counter()

    def push(self, step: int, metrics) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        run = self.run
        done, metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        rate = run.config.batch_size / max(now - self.last, 1e-9)
        self.last = now
        epoch = (done - 1) // run.steps_per_epoch + 1
        if not math.isfinite(values["loss"]):
            good = run.checkpointer.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss ({values['loss']}) at step {done} (epoch {epoch}); training "
                f"stopped, the last good checkpoint is step {good} in {run.workdir}"
            )
        record = {"step": done, "epoch": epoch, **values}
        record["lr"] = run.rate(done - 1)
        record["images_per_s"] = rate
        run.log.append(record)
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}", refresh=False)


def _finish(run: _Run) -> dict:
    """Draws ``curves.png`` and returns the run's summary."""
    if _is_main():
        plot_curves(run.log.read(), run.workdir / "curves.png")
    meta = run.meta
    summary = {
        "step": run.step,
        "epoch": run.step // run.steps_per_epoch,
        "best_val_dice": meta["best_val_dice"],
        "best_step": meta["best_step"],
        "compile_seconds": run.compile_seconds,
        "workdir": str(run.workdir),
    }
    _log(
        f"done: {run.step} steps, best validation Dice {meta['best_val_dice']:.4f} at step "
        f"{meta['best_step']}; compile seconds per size {run.compile_seconds}"
    )
    return summary
