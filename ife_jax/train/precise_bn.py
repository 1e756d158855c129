"""Precise BatchNorm statistics: the running averages replaced by the exact mean and variance of
each BatchNorm's input over a fixed set of images.

During training each BatchNorm keeps an exponential average of its batch statistics
(``ra = 0.9 ra + 0.1 batch``: about the last 20 batches count). At batch 4 those batches are
few and small, so the averages a validation sees wander from epoch to epoch even when the
weights no longer move, and the validation Dice wanders with them. :func:`precise_batch_stats`
instead runs the network in training mode (each BatchNorm normalising by its batch, as in
training) over fixed batches of fixed images and pools every BatchNorm's batch moments:

.. math::
  \\mu = \\frac{1}{K}\\sum_k \\mu_k,\\qquad
  \\sigma^2 = \\frac{1}{K}\\sum_k \\left(\\sigma_k^2 + \\mu_k^2\\right) - \\mu^2

over the ``K`` batches (all of one size, so each weighs the same): the mean and biased variance
of the layer's input over every position of every batch. The same images give the same
statistics for the same weights, so what validation Dice measures between epochs is the change
of the weights alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh

from ife_jax.nn.norm import BATCH_MOMENTS
from ife_jax.train import input as input_lib
from ife_jax.train.sharding import batch_sharding, local_batch_size, replicated, shard_batch


def make_moments_step(model: nn.Module, mesh: Mesh) -> Callable:
    """Jitted ``(variables, images) -> batch moments``: the training-mode forward of ``model``
    on one global batch (over ``data``), returning each BatchNorm's batch ``mean`` and ``var``
    at the paths of ``batch_stats`` (replicated). Dropout, if the network has any, draws from
    a fixed key, so the same batch always gives the same moments."""

    def moments(variables, images):
        _, mutated = model.apply(
            variables,
            images,
            train=True,
            rngs={"dropout": jax.random.key(0)},
            mutable=["batch_stats", BATCH_MOMENTS],
        )
        return mutated.get(BATCH_MOMENTS, {})

    return jax.jit(moments, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))  # fmt: skip


def precise_batch_stats(
    moments_step: Callable,
    variables: dict,
    images: Sequence[np.ndarray],
    *,
    size: int,
    batch_size: int,
    mesh: Mesh,
) -> dict:
    """Every BatchNorm's mean and biased variance over ``images``, each layer fed as in training.

    Args:
      moments_step: ``make_moments_step(model, mesh)``.
      variables: the network's variables (``params`` and ``batch_stats``).
      images: (H_i, W_i, 3) uint8 images, the same in every process; each goes through the
        evaluation transform at ``size`` (no augmentation).
      size: the square input size.
      batch_size: global batch size of the forward passes (the training batch size: the layers
        after a BatchNorm see what they see in training). Only whole batches are used: a
        padded one would count the padding.
      mesh: the device mesh.

    Returns:
      A tree like ``variables["batch_stats"]`` of float32 NumPy arrays.

    Raises:
      ValueError: fewer images than one batch, or a network whose BatchNorms do not report
        their moments (not :class:`ife_jax.nn.norm.BatchNorm`).
    """
    batches = len(images) // batch_size
    if batches < 1:
        raise ValueError(
            f"precise BatchNorm statistics need at least one batch of {batch_size} images; "
            f"got {len(images)}"
        )
    local = local_batch_size(batch_size, mesh)
    start = jax.process_index() * local
    first: dict[tuple, np.ndarray] = {}  # per layer: sum over batches of the mean
    second: dict[tuple, np.ndarray] = {}  # and of the mean square, var + mean^2
    for k in range(batches):
        chunk = images[k * batch_size : (k + 1) * batch_size]
        batch = np.stack([input_lib.eval_transform(image, size)[0] for image in chunk])
        moments = moments_step(variables, shard_batch(batch[start : start + local], mesh))
        flat = flatten_dict(jax.device_get(moments))
        for path in {key[:-1] for key in flat}:
            mean = np.asarray(flat[(*path, "mean")], np.float64)
            square = np.asarray(flat[(*path, "var")], np.float64) + mean**2
            first[path] = first.get(path, 0.0) + mean
            second[path] = second.get(path, 0.0) + square
    out = {}
    for path in first:
        mean = first[path] / batches
        out[(*path, "mean")] = mean.astype(np.float32)
        out[(*path, "var")] = np.maximum(second[path] / batches - mean**2, 0.0).astype(np.float32)
    expected = set(flatten_dict(variables.get("batch_stats", {})))
    if set(out) != expected:
        raise ValueError(
            "the network's BatchNorms did not all report their batch moments (precise "
            f"statistics need ife_jax.nn.norm.BatchNorm): {len(expected)} arrays of running "
            f"averages, {len(out)} of moments"
        )
    return unflatten_dict(out)
