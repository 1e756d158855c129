"""Small helpers shared by the training tests; also a script that runs one tiny training.

``python tinyrun.py WORKDIR [--epochs N] [--inject-nan-at I] [--hang-at I] [--checkpoint-every N]
[--train-sizes S ...]``

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
from pathlib import Path

import numpy as np

from ife_jax.train.config import TrainConfig, preset
from ife_jax.train.input import ArrayInput, Example


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


class _Poisoned:
    """Wraps a training input so that batch ``nan_at`` (0-based) holds a NaN image, and so that
    fetching batch ``hang_at`` touches ``marker`` and blocks (until the process is killed)."""

    def __init__(self, inner, nan_at, hang_at=None, marker=None):
        self.inner, self.at, self.hang_at, self.marker = inner, nan_at, hang_at, marker
        self.steps_per_epoch = inner.steps_per_epoch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def __next__(self):
        index = self.inner.get_state()["step"]
        if index == self.hang_at:
            Path(self.marker).touch()
            time.sleep(600)
        batch = next(self.inner)
        if index == self.at:
            batch["image"][0, 0, 0, 0] = np.nan
        return batch


def params_digest(workdir) -> dict:
    """The best and latest checkpoint's parameters as flat float64 NumPy arrays (for comparing)."""
    import jax

    from ife_jax.train.checkpointing import Checkpointer

    ck = Checkpointer(workdir)
    state, _, _ = ck.read()
    ck.close()
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in leaves}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--inject-nan-at", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--dump", default=None, help="write the final parameters to this .npz")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=None)
    args = parser.parse_args(argv)

    from ife_jax.train.loop import train_and_evaluate

    config = tiny_config(
        epochs=args.epochs,
        max_train_examples=args.examples,
        checkpoint_every_steps=args.checkpoint_every,
        **({"train_sizes": tuple(args.train_sizes)} if args.train_sizes else {}),
    )
    summary = train_and_evaluate(
        config,
        args.workdir,
        inputs=lambda c: array_inputs(
            c,
            nan_at=args.inject_nan_at,
            hang_at=args.hang_at,
            marker=Path(args.workdir) / "hanging",
        ),
        progress=False,
    )
    if args.dump:
        import jax

        params = params_digest(args.workdir)  # every process: the checkpoint reader syncs them
        if jax.process_index() == 0:
            np.savez(args.dump, **params)
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
