"""Sharded inference on images of any size: evaluation transform, model, inverse transform.

This is the one evaluation path: validation during training, ``evaluate`` and ``predict`` all
call it. It streams (one global batch of images is read and held at a time), maps each image
to the model's square input with :func:`ife_jax.data.transforms.eval_transform` (pad to a
square, resize) and brings each prediction back to the image's own size with its exact inverse,
:func:`ife_jax.data.transforms.invert_eval`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from ife_jax.metrics.overlap import dice as dice  # the one Dice; kept here for callers
from ife_jax.train import input as input_lib
from ife_jax.train.sharding import gather, shard_batch


def iter_predictions(
    eval_step: Callable,
    variables,
    images: Iterable[np.ndarray],
    *,
    size: int,
    batch_size: int,
    mesh: Mesh,
) -> Iterator[np.ndarray]:
    """Foreground probability maps at each image's original size, in ``images``' order.

    ``images`` is read one global batch at a time, so a lazy sequence or a generator is never
    held whole. Every process passes the same ``images``; each feeds its share of every batch to
    the devices and all of them get every map back.

    Args:
      eval_step: ``make_eval_step(model, mesh)``.
      variables: the model's variables.
      images: (H_i, W_i, 3) uint8 RGB images (any iterable).
      size: the evaluation size.
      batch_size: global batch size (rounded up to a multiple of the device count); the last
        batch is padded with zeros and the padding's outputs dropped.
      mesh: the device mesh.

    Yields:
      One (H_i, W_i) float32 map in [0, 1] per image.
    """
    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices
    local = batch_size // jax.process_count()
    start = jax.process_index() * local
    images = iter(images)
    while chunk := list(itertools.islice(images, batch_size)):
        batch = np.zeros((batch_size, size, size, 3), np.float32)
        metas = []
        for i, image in enumerate(chunk):
            batch[i], meta = input_lib.eval_transform(image, size)
            metas.append(meta)
        probs = gather(eval_step(variables, shard_batch(batch[start : start + local], mesh)))
        for prob, meta in zip(probs, metas, strict=False):
            yield input_lib.invert_eval_transform(prob[..., 0], meta)


def predict_images(*args, **kwargs) -> list[np.ndarray]:
    """The maps of :func:`iter_predictions` as a list (same arguments)."""
    return list(iter_predictions(*args, **kwargs))
