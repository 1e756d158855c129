"""Sharded inference on examples of any size: evaluation transform, model, inverse transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from ife_jax.metrics.overlap import dice as dice  # the one Dice; kept here for callers
from ife_jax.train import input as input_lib
from ife_jax.train.sharding import gather, shard_batch


def predict_images(
    eval_step: Callable,
    variables,
    images: Sequence[np.ndarray],
    *,
    size: int,
    batch_size: int,
    mesh: Mesh,
) -> list[np.ndarray]:
    """Foreground probability maps at each image's original size.

    Every process passes the same ``images``; each feeds its share of every batch to the
    devices and all of them get every map back.

    Args:
      eval_step: ``make_eval_step(model, mesh)``.
      variables: the model's variables.
      images: (H_i, W_i, 3) uint8 RGB images.
      size: the evaluation size.
      batch_size: global batch size (rounded up to a multiple of the device count).
      mesh: the device mesh.

    Returns:
      One (H_i, W_i) float32 map in [0, 1] per image.
    """
    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices
    local = batch_size // jax.process_count()
    start = jax.process_index() * local
    out = []
    for first in range(0, len(images), batch_size):
        chunk = images[first : first + batch_size]
        batch = np.zeros((batch_size, size, size, 3), np.float32)
        metas = []
        for i, image in enumerate(chunk):
            batch[i], meta = input_lib.eval_transform(image, size)
            metas.append(meta)
        probs = gather(eval_step(variables, shard_batch(batch[start : start + local], mesh)))
        for prob, meta in zip(probs, metas, strict=False):
            out.append(input_lib.invert_eval_transform(prob[..., 0], meta))
    return out
