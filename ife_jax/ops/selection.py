"""Top-k channel selection by score (the paper's eq. 3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ife_jax.ops._checks import check_features, num_selected


def top_channels(scores: jax.Array, k: int) -> jax.Array:
    """Indices of the ``k`` best channels per sample, best first.

    Ties go to the lower channel index; a non-finite score (NaN or +-Inf) ranks below every
    finite one, and non-finite scores tie among themselves.

    Args:
      scores: (B, C) scores.
      k: how many to keep, 1 <= k <= C.

    Returns:
      (B, k) int32 channel indices.
    """
    scores = lax.stop_gradient(jnp.asarray(scores, jnp.float32))
    rank_key = jnp.where(jnp.isfinite(scores), -scores, jnp.inf)
    iota = lax.broadcasted_iota(jnp.int32, scores.shape, 1)
    # A stable sort on (-score) keeps the lower index first among equal scores.
    _, order = lax.sort((rank_key, iota), dimension=1, is_stable=True, num_keys=1)
    return order[:, :k]


@functools.partial(jax.jit, static_argnames=("ratio",))
def select_channels(x: jax.Array, scores: jax.Array, *, ratio: float):
    """Gathers the top ``k = int(ratio * C)`` channels of each sample.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C) features.
      scores: (B, C) per-channel scores (higher is better).
      ratio: fraction of channels to keep, in (0, 1]; ``k = int(ratio * C)`` must be >= 1.

    Returns:
      ``(selected, indices)``: (B, H, W, k) (or (B, D, H, W, k)) features in ``x``'s dtype, in
      descending score order, and their (B, k) int32 channel indices. Gradients flow to the
      gathered features; the indices carry none.

    Raises:
      ValueError: bad ``x``, ``scores`` not (B, C), or a ratio outside (0, 1] that keeps no
        channel.

    Example:
      >>> x = jnp.arange(2 * 3 * 3 * 4.0).reshape(2, 3, 3, 4)
      >>> sel, idx = select_channels(x, jnp.array([[0., 3, 1, 2]] * 2), ratio=0.5)
      >>> idx.tolist()
      [[1, 3], [1, 3]]
    """
    shape = check_features(x)
    b, c = shape[0], shape[-1]
    if tuple(jnp.shape(scores)) != (b, c):
        raise ValueError(f"scores must have shape (B, C) = {(b, c)}; got {jnp.shape(scores)}.")
    k = num_selected(c, ratio)
    indices = top_channels(scores, k)
    return gather_channels(x, indices), indices


@jax.custom_vjp
def gather_channels(x: jax.Array, indices: jax.Array) -> jax.Array:
    """``x[..., indices[b]]`` per sample ``b``: (B, ..., C) and (B, k) distinct indices give
    (B, ..., k). The gradient is a gather too, through the inverse of the selection (a channel
    not selected gets zero), instead of the scatter-add that differentiating the gather makes;
    equal values, as each input channel receives at most one output channel's gradient."""
    return jnp.take_along_axis(x, _channel_index(indices, x.ndim), axis=x.ndim - 1)


def _channel_index(indices: jax.Array, ndim: int) -> jax.Array:
    return indices.reshape(indices.shape[0], *(1 for _ in range(ndim - 2)), indices.shape[1])


def _gather_fwd(x, indices):
    return gather_channels(x, indices), (indices, x.shape[-1])


def _gather_bwd(res, g):
    indices, c = res
    b, k = indices.shape
    # inverse[b, c] = j where indices[b, j] == c, else k (outside g: filled with zero).
    inverse = (
        jnp.full((b, c), k, jnp.int32)
        .at[jnp.arange(b)[:, None], indices]
        .set(jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k)))
    )
    dx = jnp.take_along_axis(
        g, _channel_index(inverse, g.ndim), axis=g.ndim - 1, mode="fill", fill_value=0
    )
    return dx, None


gather_channels.defvjp(_gather_fwd, _gather_bwd)
