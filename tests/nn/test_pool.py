"""ife_jax.nn.pool.max_pool against flax.linen.max_pool and a NumPy loop."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.nn.pool import max_pool

CASES = [
    ((2, 8, 6, 3), (2, 2)),
    ((1, 9, 7, 1), (2, 2)),  # odd sizes: the remainder row and column are dropped
    ((3, 12, 5), (3,)),  # 1-D
    ((1, 4, 6, 5, 2), (2, 2, 2)),  # 3-D
    ((2, 6, 9, 2), (3, 2)),  # unequal window
]


def numpy_max_pool_vjp(x, g, window):
    """Forward max and the gradient sent to each window's first maximum, by loops."""
    y = np.zeros(g.shape, x.dtype)
    dx = np.zeros_like(x)
    for idx in np.ndindex(*g.shape):
        b, out, c = idx[0], idx[1:-1], idx[-1]
        best = None
        for off in itertools.product(*(range(k) for k in window)):
            src = (b, *(o * k + d for o, k, d in zip(out, window, off, strict=True)), c)
            if best is None or x[src] > x[best]:
                best = src
        y[idx] = x[best]
        dx[best] += g[idx]
    return y, dx


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(("shape", "window"), CASES)
def test_max_pool_and_its_gradient_equal_flax_with_ties(shape, window, jit):
    rng = np.random.default_rng(0)
    # Values from {0, 1, 2}: most windows hold tied maxima, which decide where gradients go.
    x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)
    ours = jax.jit(max_pool, static_argnums=1) if jit else max_pool
    y, vjp = jax.vjp(lambda x_: ours(x_, window), x)
    y_ref, vjp_ref = jax.vjp(lambda x_: nn.max_pool(x_, window, strides=window), x)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
    y_np, dx_np = numpy_max_pool_vjp(np.asarray(x), np.asarray(g), window)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(vjp(g)[0], dx_np)


def test_int_window_means_every_axis_and_keeps_bfloat16():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 4, 3)), jnp.bfloat16)
    y = max_pool(x, 2)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("window", [(2,), (2, 0), (2, 2, 2)])
def test_bad_window_is_named(window):
    with pytest.raises(ValueError, match=r"window \("):
        max_pool(jnp.zeros((1, 4, 4, 1)), window)
