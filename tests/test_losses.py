"""ife_jax.losses.boundary_weights against a float64 NumPy window sum and XLA's reduce_window.

Error model: the pooled mask is one sum of 31 terms in [0, 31^j] per spatial axis j, so each
axis adds at most 31 * eps times the running magnitude; after dividing by 31^n the average is
within 2 * n * 31 * eps of the float64 one, and the weight 1 + 5 |pooled - m| within five times
that (plus its own roundings). Binary masks sum integers below 2^24: the window sums are exact,
and only the last few operations round.
"""

import jax
import numpy as np
import pytest
from jax import lax
from numpy.lib.stride_tricks import sliding_window_view

from ife_jax.losses import BOUNDARY_WINDOW, boundary_weights

SHAPES = [(2, 40, 37, 1), (1, 9, 50, 1), (1, 12, 7, 20, 1)]
EPS32 = float(np.finfo(np.float32).eps)


def numpy_weights(m: np.ndarray) -> np.ndarray:
    """float64: zero-pad by 15, sum every 31^n window, divide by 31^n."""
    k, p = BOUNDARY_WINDOW, BOUNDARY_WINDOW // 2
    n = m.ndim - 2
    m64 = m.astype(np.float64)
    padded = np.pad(m64, [(0, 0), *((p, p),) * n, (0, 0)])
    windows = sliding_window_view(padded, (k,) * n, axis=tuple(range(1, n + 1)))
    pooled = windows.sum(axis=tuple(range(-n, 0))) / k**n
    return 1.0 + 5.0 * np.abs(pooled - m64)


def reduce_window_weights(m):
    """The previous definition, XLA's windowed sum."""
    k, p = BOUNDARY_WINDOW, BOUNDARY_WINDOW // 2
    n = m.ndim - 2
    pooled = lax.reduce_window(
        m, 0.0, lax.add, (1, *(k,) * n, 1), (1,) * m.ndim, ((0, 0), *((p, p),) * n, (0, 0))
    ) / float(k**n)
    return 1.0 + 5.0 * abs(pooled - m)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_binary_masks_are_exact(shape, jit):
    rng = np.random.default_rng(0)
    m = (rng.uniform(size=shape) > 0.6).astype(np.float32)
    fn = jax.jit(boundary_weights) if jit else boundary_weights
    w = np.asarray(fn(m))
    # The sums are exact; then a division, |pooled - m|, * 5 and + 1 each round once (w <= 6;
    # XLA may turn the division into a product with the reciprocal, one rounding more).
    np.testing.assert_allclose(w, numpy_weights(m), rtol=0, atol=16 * EPS32)
    np.testing.assert_allclose(w, np.asarray(reduce_window_weights(m)), rtol=0, atol=32 * EPS32)


@pytest.mark.parametrize("shape", SHAPES)
def test_soft_masks_within_the_error_model(shape):
    m = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
    n = m.ndim - 2
    tol = (5 * 2 * n * BOUNDARY_WINDOW + 8) * EPS32
    np.testing.assert_allclose(np.asarray(boundary_weights(m)), numpy_weights(m), rtol=0, atol=tol)


def test_empty_and_full_masks():
    empty = np.zeros((1, 20, 20, 1), np.float32)
    np.testing.assert_array_equal(boundary_weights(empty), 1.0)
    full = np.ones((1, 40, 40, 1), np.float32)
    w = np.asarray(boundary_weights(full))
    # The centre pixel's window lies inside the image (pooled 1, weight 1); the corner's
    # window covers 16 x 16 of the 31 x 31 (pooled 256/961).
    assert w[0, 20, 20, 0] == 1.0
    np.testing.assert_allclose(w[0, 0, 0, 0], 1 + 5 * (1 - 256 / 961), rtol=4 * EPS32)
