"""Training losses and the training-time Dice, as pure JAX functions (NHWC).

The Keras objects in ``ife_jax.keras`` and the Flax training loop both call these, so the two
front ends optimise and report exactly the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Side of the average-pooling window that finds the mask's boundary region.
BOUNDARY_WINDOW = 31


def _box_sum_matrix(n: int, k: int) -> np.ndarray:
    """(n, n) 0/1 band ``A[i, j] = |i - j| <= k // 2``: ``A @ v`` sums v over a centred window of
    ``k`` with zero padding."""
    i = np.arange(n)
    return (np.abs(i[:, None] - i[None, :]) <= k // 2).astype(np.float32)


def boundary_weights(masks: jax.Array) -> jax.Array:
    """``1 + 5 |avgpool31(m) - m|``: pixels near the object's boundary weigh up to 6 times more.

    The pooling divides by the full window (zero padding counted), as the reference does. For
    volumes (B, D, H, W, 1) the window is a 31x31x31 cube. The window sum is separable: one
    product with a 0/1 band matrix per spatial axis (a sum of 31 terms each, exact sums for binary
    masks; within ``2 * 31 * eps`` per axis of the float64 average for soft ones).

    Args:
      masks: (B, H, W, 1) or (B, D, H, W, 1) float targets in [0, 1].

    Returns:
      float32 weights of the masks' shape.
    """
    m = masks.astype(jnp.float32)
    k = BOUNDARY_WINDOW
    pooled = m
    for axis in range(1, m.ndim - 1):
        band = jnp.asarray(_box_sum_matrix(m.shape[axis], k))
        summed = jnp.tensordot(band, pooled, axes=([1], [axis]), precision=lax.Precision.HIGHEST)
        pooled = jnp.moveaxis(summed, 0, axis)
    pooled = pooled / float(k ** (m.ndim - 2))
    return 1.0 + 5.0 * jnp.abs(pooled - m)


def structure_loss(logits: jax.Array, masks: jax.Array, *, weighted_bce: bool = False) -> jax.Array:
    r"""The F3Net "structure loss" the reference trains with: BCE + weighted IoU.

    .. math::
      w = 1 + 5|\mathrm{avgpool}_{31}(m) - m|,\quad
      L = \mathrm{BCE}(z, m) + 1 - \frac{\sum w\,\sigma(z)\,m + 1}
          {\sum w\,(\sigma(z) + m) - \sum w\,\sigma(z)\,m + 1}

    The BCE term is the plain mean over pixels, as in the reference (whose per-pixel BCE
    weighting is lost to a deprecated argument); ``weighted_bce=True`` weights it by ``w`` too.
    Sums run per image; the loss is the mean over the batch.

    Args:
      logits: (B, H, W, 1) logits, or (B, D, H, W, 1) for volumes.
      masks: targets in [0, 1] of the logits' shape (soft edges allowed).
      weighted_bce: weight the BCE term by ``w`` as well.

    Returns:
      Scalar float32 loss.
    """
    if logits.shape != masks.shape:
        raise ValueError(f"logits {logits.shape} and masks {masks.shape} must have the same shape.")
    z = logits.astype(jnp.float32)
    m = masks.astype(jnp.float32)
    w = boundary_weights(m)
    bce = jnp.maximum(z, 0.0) - z * m + jnp.log1p(jnp.exp(-jnp.abs(z)))
    axes = tuple(range(1, m.ndim))
    if weighted_bce:
        bce = jnp.sum(w * bce, axes) / jnp.sum(w, axes)
    else:
        bce = jnp.mean(bce, axes)
    p = jax.nn.sigmoid(z)
    inter = jnp.sum(p * m * w, axes)
    union = jnp.sum((p + m) * w, axes)
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return jnp.mean(bce + wiou)


def dice_per_image(logits: jax.Array, masks: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """Hard Dice of ``sigmoid(logits) >= threshold`` against ``masks > 0.5``, per image.

    Both empty scores 1; exactly one empty scores 0 (the project's empty-mask policy).

    Args:
      logits: (B, H, W, 1) logits.
      masks: (B, H, W, 1) targets in [0, 1].

    Returns:
      (B,) float32 Dice.
    """
    pred = jax.nn.sigmoid(logits.astype(jnp.float32)) >= threshold
    gt = masks > 0.5
    axes = tuple(range(1, logits.ndim))
    inter = jnp.sum(pred & gt, axes).astype(jnp.float32)
    total = (jnp.sum(pred, axes) + jnp.sum(gt, axes)).astype(jnp.float32)
    return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1.0), 1.0)
