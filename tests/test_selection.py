"""Top-k selection: order, ties, non-finite scores, the gradient of the gather."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.ops import select_channels, top_channels


def test_descending_order_and_ties_to_lower_index():
    scores = jnp.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(top_channels(scores, 4), [[1, 2, 4, 3], [0, 1, 2, 3]])


def test_non_finite_scores_rank_last():
    scores = jnp.array([[jnp.nan, 1.0, jnp.inf, -jnp.inf, 0.5, -1e30]])
    np.testing.assert_array_equal(top_channels(scores, 6), [[1, 4, 5, 0, 2, 3]])


@pytest.mark.parametrize(
    ("c", "ratio", "k"), [(16, 0.5, 8), (6, 0.75, 4), (5, 1.0, 5), (7, 0.3, 2)]
)
def test_k_is_floor_of_ratio_times_c(c, ratio, k):
    x = jnp.arange(2 * 3 * 3 * c, dtype=jnp.float32).reshape(2, 3, 3, c)
    scores = jnp.tile(jnp.arange(c, dtype=jnp.float32)[None], (2, 1))
    selected, idx = select_channels(x, scores, ratio=ratio)
    assert selected.shape == (2, 3, 3, k) and idx.shape == (2, k)
    np.testing.assert_array_equal(idx[0], np.arange(c - 1, c - 1 - k, -1))
    np.testing.assert_array_equal(selected, np.asarray(x)[..., np.asarray(idx[0])])


def test_scores_shape_is_checked():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"scores must have shape \(B, C\) = \(2, 3\)"):
        select_channels(x, jnp.zeros((2, 4)), ratio=0.5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 3, 3, 5, 7), (3, 3, 3, 1)])
def test_gradient_of_the_selection_is_the_selected_channels_put_back(shape):
    """d/dx of <selected, g>: g's channel j lands on channel indices[b, j], zero elsewhere
    (a loop written out in NumPy); tied scores included."""
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    c = shape[-1]
    scores = jnp.asarray(rng.integers(0, 3, size=(shape[0], c)), jnp.float32)  # many ties
    ratio = 0.5 if c > 1 else 1.0
    _, idx = select_channels(x, scores, ratio=ratio)
    g = rng.normal(size=(*shape[:-1], idx.shape[1])).astype(np.float32)
    dx = jax.grad(lambda x_: jnp.sum(select_channels(x_, scores, ratio=ratio)[0] * g))(x)
    want = np.zeros(shape, np.float32)
    for b in range(shape[0]):
        for j, ch in enumerate(np.asarray(idx[b])):
            want[b, ..., ch] = g[b, ..., j]
    np.testing.assert_array_equal(np.asarray(dx), want)
    assert np.isfinite(np.asarray(dx)).all()
