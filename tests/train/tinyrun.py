"""Small helpers shared by the training tests (tiny data, ``ArrayInput``, a tiny config); also a
script that runs one tiny training.

``python tinyrun.py WORKDIR [--epochs N] [--inject-nan-at I] [--hang-at I] [--checkpoint-every N]
[--checkpoint-every-epochs N] [--keep N] [--val-dice V1,V2,...] [--dump FILE] [--dump-init FILE]
[--bug dup-row|no-allreduce] [--reverse-rows]
[--train-sizes S ...] [--precise-bn N]``

The network is the tiny preset's UNet with curvature IFE on two skips, trained with SGD with
momentum: the tests compare runs across device counts, and Adam would turn the rounding noise of
gradients that are zero in exact arithmetic (the conv biases before BatchNorm) into full
learning-rate steps of either sign.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from ife_jax.data import transforms
from ife_jax.train.config import TrainConfig, preset
from ife_jax.train.input import Example


def blob_examples(n: int, *, seed: int = 0, size: tuple[int, int] = (40, 36)) -> list[Example]:
    """``n`` images with one bright disc each (its mask), random position and radius."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = rng.uniform(0.15, 0.3) * min(h, w)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        image = rng.normal(90, 20, (h, w, 3)) + 90 * mask[..., None]
        out.append(Example(np.clip(image, 0, 255).astype(np.uint8), mask, f"img{i}", "M", "A"))
    return out


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)


class ArrayInput:
    """Resumable training batches from in-memory examples, split over processes.

    Each epoch visits the examples in a fresh random order (incomplete last batch dropped);
    each batch is resized to one size drawn from ``sizes``; images and masks share a random
    horizontal and vertical flip. Process ``p`` of ``n`` gets rows ``[p*b, (p+1)*b)`` of every
    global batch of ``n*b`` rows.

    Args:
      examples: the training examples.
      global_batch_size: rows of a global batch.
      sizes: square training sizes.
      seed: order, sizes and flips.
      process_index, process_count: this process and how many read the data.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        global_batch_size: int,
        sizes: Sequence[int],
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch_size={global_batch_size} must be divisible by the number of processes "
                f"({process_count})"
            )
        if len(examples) < global_batch_size:
            raise ValueError(
                f"batch_size={global_batch_size} exceeds the {len(examples)} training examples"
            )
        self.examples = list(examples)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.sizes = tuple(int(s) for s in sizes)
        self.seed = seed
        self.process_index = process_index
        self.steps_per_epoch = len(self.examples) // global_batch_size
        self._step = 0

    def first_images(self, n: int) -> list[np.ndarray]:
        """The images of the first ``n`` examples (for precise BatchNorm statistics)."""
        return [ex.image for ex in self.examples[:n]]

    def get_state(self) -> dict:
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        self._step = int(state["step"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self._step)
        self._step += 1
        return batch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        flips = rng.random((self.global_batch_size, 2)) < 0.5
        images, masks = [], []
        for row in range(self.local_batch_size):
            ex = self.examples[int(order[start + row])]
            image, _, _ = transforms.pad_to_square(ex.image)
            mask, _, _ = transforms.pad_to_square(ex.mask.astype(np.float32))
            flip = flips[self.process_index * self.local_batch_size + row]
            if flip[0]:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if flip[1]:
                image, mask = image[::-1], mask[::-1]
            images.append(transforms.normalize(_resize(np.ascontiguousarray(image), size)))
            masks.append(_resize(np.ascontiguousarray(mask), size)[..., None])
        return {"image": np.stack(images), "mask": np.stack(masks)}


def tiny_config(**changes) -> TrainConfig:
    """The tiny preset with one training size (each size compiles the step once), curvature IFE
    and SGD with momentum."""
    defaults = {"train_sizes": (32,), "ife": "curvature", "optimizer": "sgd"}
    return preset("tiny", **{**defaults, **changes})


def array_inputs(
    config: TrainConfig, *, nan_at: int | None = None, hang_at: int | None = None, marker=None
):
    import jax

    examples = blob_examples(config.max_train_examples or 8)
    train = ArrayInput(
        examples,
        global_batch_size=config.batch_size,
        sizes=config.train_sizes,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if nan_at is not None or hang_at is not None:
        train = _Poisoned(train, nan_at, hang_at, marker)
    return train, blob_examples(config.max_eval_examples or 4, seed=1)


def _reverse_rows(batch):
    """The batch's rows in reverse order: the same training, every batch sum in another order."""
    return {k: v[::-1].copy() for k, v in batch.items()}


def _duplicate_last_row(batch):
    """The last row replaced by the one before it when the batch is split over several devices:
    the last device's shard loses one example and holds another twice (a deliberate defect)."""
    import jax

    if jax.device_count() > 1:
        for key in ("image", "mask"):
            batch[key][-1] = batch[key][-2]
    return batch


class _EditedRows:
    """Wraps a training input so that ``edit(batch)`` is applied to every batch it yields."""

    def __init__(self, inner, edit):
        self.inner, self.edit = inner, edit
        self.steps_per_epoch = inner.steps_per_epoch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def __next__(self):
        return self.edit(next(self.inner))


class _Poisoned(_EditedRows):
    """Wraps a training input so that batch ``nan_at`` (0-based) holds a NaN image, and so that
    fetching batch ``hang_at`` touches ``marker`` and blocks (until the process is killed)."""

    def __init__(self, inner, nan_at, hang_at=None, marker=None):
        super().__init__(inner, edit=None)  # __next__ below replaces the edit
        self.at, self.hang_at, self.marker = nan_at, hang_at, marker

    def __next__(self):
        index = self.inner.get_state()["step"]
        if index == self.hang_at:
            Path(self.marker).touch()
            time.sleep(600)
        batch = next(self.inner)
        if index == self.at:
            batch["image"][0, 0, 0, 0] = np.nan
        return batch


def make_local_gradient_step(model, tx, *, base_key):
    """A deliberately wrong train step: each device updates the state with the gradient of its own
    shard of the batch, never all-reduced over the ``data`` axis (the loss and the BatchNorm
    statistics stay global). On one device it is the correct step."""
    import jax
    import optax
    from jax.sharding import PartitionSpec as P

    from ife_jax.train.sharding import make_mesh
    from ife_jax.train.step import apply_gradients, training_loss

    mesh = make_mesh()

    def train_step(state, batch):
        key = jax.random.fold_in(base_key, state.step)
        loss, (updates, _) = training_loss(model, state, batch, key)(state.params)
        local_grad = jax.shard_map(
            lambda params, batch: jax.grad(lambda p: training_loss(model, state, batch, key)(p)[0])(
                params
            ),
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=P(),
            check_vma=False,
        )
        grads = local_grad(state.params, batch)
        new_state = apply_gradients(state, tx, grads, updates)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def _digest_key(path) -> str:
    """A leaf's path as one string, the same for a saved checkpoint (nested dicts and lists) and a
    live ``TrainState`` (a dataclass of dicts, tuples and named tuples)."""
    import jax

    return jax.tree_util.keystr(path).replace(".", "").replace("'", "").replace('"', "")


def initial_digest(config: TrainConfig) -> dict:
    """The state a run of ``config`` starts from, as ``params_digest`` gives a checkpoint."""
    import flax.serialization
    import jax

    from ife_jax.train.models import build_model
    from ife_jax.train.sharding import make_mesh
    from ife_jax.train.state import (
        abstract_train_state,
        initialize,
        make_optimizer,
        state_shardings,
    )

    model = build_model(config, plan=None)
    tx = make_optimizer(config, steps_per_epoch=1)
    init_key, _ = jax.random.split(jax.random.key(config.seed))
    abstract, init = abstract_train_state(model, tx, (1, config.eval_size, config.eval_size, 3))
    state = initialize(init, init_key, state_shardings(abstract, make_mesh()))
    state = flax.serialization.to_state_dict(state)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {_digest_key(k): np.asarray(v, np.float64) for k, v in leaves}


def params_digest(workdir) -> dict:
    """The best and latest checkpoint's parameters as flat float64 NumPy arrays (for comparing)."""
    import jax

    from ife_jax.train.checkpointing import Checkpointer

    ck = Checkpointer(workdir)
    state, _, _ = ck.read()
    ck.close()
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {_digest_key(k): np.asarray(v, np.float64) for k, v in leaves}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--inject-nan-at", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--checkpoint-every-epochs", type=int, default=1)
    parser.add_argument("--keep", type=int, default=2, help="recent checkpoints to keep")
    parser.add_argument(
        "--val-dice", default=None, help="validation Dice of epochs 1, 2, ... (not computed)"
    )
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--dump", default=None, help="write the final parameters to this .npz")
    parser.add_argument("--dump-init", default=None, help="write the initial state to this .npz")
    parser.add_argument("--bug", choices=("dup-row", "no-allreduce"), default=None)
    parser.add_argument("--ife", choices=("curvature", "entropy", "none"), default="curvature")
    parser.add_argument(
        "--reverse-rows", action="store_true", help="every batch's rows in reverse order"
    )
    parser.add_argument("--train-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--precise-bn", type=int, default=0, help="precise_bn_examples")
    args = parser.parse_args(argv)

    from ife_jax.train import loop
    from ife_jax.train.loop import train_and_evaluate

    config = tiny_config(
        ife=None if args.ife == "none" else args.ife,
        epochs=args.epochs,
        max_train_examples=args.examples,
        checkpoint_every_steps=args.checkpoint_every,
        checkpoint_every_epochs=args.checkpoint_every_epochs,
        keep_checkpoints=args.keep,
        precise_bn_examples=args.precise_bn,
        **({"train_sizes": tuple(args.train_sizes)} if args.train_sizes else {}),
    )
    if args.dump_init:
        np.savez(args.dump_init, **initial_digest(config))

    def inputs(c):
        train, val = array_inputs(
            c,
            nan_at=args.inject_nan_at,
            hang_at=args.hang_at,
            marker=Path(args.workdir) / "hanging",
        )
        if args.reverse_rows:
            train = _EditedRows(train, _reverse_rows)
        if args.bug == "dup-row":
            train = _EditedRows(train, _duplicate_last_row)
        return train, val

    if args.bug == "no-allreduce":
        loop.make_train_step = make_local_gradient_step
    if args.val_dice:
        scripted = [float(v) for v in args.val_dice.split(",")]
        evaluate = loop._evaluate

        def scripted_evaluate(run, epoch):
            loop._validate = lambda *_: scripted[epoch - 1]
            evaluate(run, epoch)

        loop._evaluate = scripted_evaluate
    summary = train_and_evaluate(config, args.workdir, inputs=inputs, progress=False)
    if args.dump:
        import jax

        params = params_digest(args.workdir)  # every process: the checkpoint reader syncs them
        if jax.process_index() == 0:
            np.savez(args.dump, **params)
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
