"""Max pooling over non-overlapping windows with a gradient that trains fast on CPU.

``flax.linen.max_pool``'s gradient is XLA's ``select_and_scatter``, which XLA:CPU runs as a
scalar loop on one core: at UNet's first level (batch 4, 224 x 224 x 64) it takes about 25 times
as long as the pooling itself. When the window equals the stride and there is no padding
(UNet's 2x2/stride-2 downsampling), every input pixel lies in exactly one window, so the
pooling is a reshape and a max, and its gradient a comparison and a select, both elementwise
passes that XLA fuses and threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def _windows(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """``(B, *S, C) -> (B, S1/k1, k1, ..., Sn/kn, kn, C)``, the remainder of each S dropped."""
    n = len(window)
    crop = tuple(slice(0, (s // k) * k) for s, k in zip(x.shape[1:-1], window, strict=True))
    x = x[(slice(None), *crop)]
    shape = [x.shape[0]]
    for s, k in zip(x.shape[1 : 1 + n], window, strict=True):
        shape += [s // k, k]
    return x.reshape(*shape, x.shape[-1])


def _window_axes(n: int) -> tuple[int, ...]:
    return tuple(2 + 2 * i for i in range(n))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    return jnp.max(_windows(x, window), axis=_window_axes(len(window)))


def _max_pool_fwd(x, window):
    y = _max_pool(x, window)
    return y, (x, y)


def _max_pool_bwd(window, res, g):
    x, y = res
    n = len(window)
    axes = _window_axes(n)
    xw = _windows(x, window)
    # Row-major position of each element inside its window (shape broadcastable to xw).
    pos_shape = [1] * xw.ndim
    for a, k in zip(axes, window, strict=True):
        pos_shape[a] = k
    pos = jnp.asarray(np.arange(int(np.prod(window)), dtype=np.int32).reshape(pos_shape))
    hit = xw == jnp.expand_dims(y, axes)
    first = jnp.min(jnp.where(hit, pos, np.int32(np.prod(window))), axis=axes, keepdims=True)
    dxw = jnp.where(pos == first, jnp.expand_dims(g, axes), jnp.zeros((), g.dtype))
    cropped = tuple(s * k for s, k in zip(y.shape[1:-1], window, strict=True))
    dx = dxw.reshape(x.shape[0], *cropped, x.shape[-1])
    if cropped != x.shape[1:-1]:  # the dropped remainder gets no gradient
        rest = [(0, s - c) for s, c in zip(x.shape[1:-1], cropped, strict=True)]
        dx = jnp.pad(dx, [(0, 0), *rest, (0, 0)])
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int | Sequence[int]) -> jax.Array:
    """Max over non-overlapping windows: ``flax.linen.max_pool(x, window, strides=window)``.

    ``y[b, i, j, c] = max_{p < k1, q < k2} x[b, k1 i + p, k2 j + q, c]`` (and likewise in 1-D
    or 3-D); a remainder of the spatial size that fills no whole window is dropped ('VALID').
    Outputs equal Flax's bit for bit, and so do the gradients: each window's gradient goes to
    its first maximum in row-major order, as XLA's ``select_and_scatter`` gives it.

    Args:
      x: ``(B, *spatial, C)`` float.
      window: the window (= stride) per spatial axis, or one int for all of them.

    Returns:
      (B, *(spatial // window), C) of ``x``'s dtype.

    Raises:
      ValueError: when ``window`` does not have one positive entry per spatial axis.
    """
    n = x.ndim - 2
    window = (int(window),) * n if isinstance(window, (int, np.integer)) else tuple(window)
    if len(window) != n or any(int(k) < 1 for k in window):
        raise ValueError(
            f"max_pool: window {window} needs one positive entry per spatial axis of an input "
            f"of shape {x.shape}."
        )
    return _max_pool(x, tuple(int(k) for k in window))


__all__ = ["max_pool"]
