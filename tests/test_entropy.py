"""Paper-mode entropy against a slow NumPy oracle, and its invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import paper_entropy_numpy

from ife_jax.ops import entropy_scores

SHAPES = [(2, 9, 13, 5), (1, 7, 7, 1), (3, 5, 11, 2), (1, 16, 16, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_paper_entropy_matches_numpy(shape, relu):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    if relu:
        x = np.maximum(x, 0)  # many exact zeros, as after a ReLU
    got = np.asarray(entropy_scores(jnp.asarray(x)))
    np.testing.assert_allclose(got, paper_entropy_numpy(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bins", [2, 7, 64])
def test_paper_entropy_other_bins(bins):
    x = np.random.default_rng(bins).standard_normal((2, 8, 9, 3)).astype(np.float32)
    got = np.asarray(entropy_scores(jnp.asarray(x), bins=bins))
    np.testing.assert_allclose(got, paper_entropy_numpy(x, bins), rtol=1e-5, atol=1e-5)


def test_entropy_bounds_and_hand_cases():
    h = w = 12
    zeros = np.zeros((h, w), np.float32)
    const = np.full((h, w), 0.5, np.float32)
    noise = np.random.default_rng(0).standard_normal((h, w)).astype(np.float32)
    x = np.stack([zeros, const, noise], -1)[None]
    e = np.asarray(entropy_scores(jnp.asarray(x)))[0]
    assert e[0] == 0.0  # one cell holds every pixel
    # A constant channel: interior pixels share one cell; the border (zero padding) adds a
    # few cells: corners (3 of 8 neighbours), edges (5 of 8) and the interior.
    n = h * w
    cells = np.array([4, 4 * (h - 2), (h - 2) * (w - 2)], np.float64) / n
    np.testing.assert_allclose(e[1], -(cells * np.log2(cells)).sum(), rtol=1e-6)
    assert e[1] < 0.5 * e[2]
    assert e[2] <= np.log2(n) + 1e-6  # at most log2(H*W): every pixel in its own cell


def test_chunking_does_not_change_results():
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), (3, 10, 12, 6)))
    want = entropy_scores(x)
    # The counts are integers and do not depend on the chunking; each score is then a mean of
    # H*W non-negative terms, which XLA may sum in another order for another chunk shape: at most
    # H*W*u relative apart (u = 2^-24). A row mixed up with another moves it by far more.
    rtol = 10 * 12 * 2.0**-24
    for rows in (1, 2, 5, 6, 7, 18, 100):
        np.testing.assert_allclose(entropy_scores(x, chunk_rows=rows), want, rtol=rtol, atol=0)
    # A budget too small for even one histogram still works, one row at a time.
    np.testing.assert_allclose(entropy_scores(x, memory_budget_bytes=1), want, rtol=rtol, atol=0)


def test_reference_unique_with_repeated_values():
    # Two channels of a sample: all-distinct values, and a ReLU-like one with many zeros.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 8, 8, 1)).astype(np.float32)
    b = np.maximum(a, 0)
    e = np.asarray(entropy_scores(jnp.asarray(np.concatenate([a, b], -1)), mode="reference_unique"))
    p = np.full(64, 1 / 100.0)  # 64 distinct values, p = 1 / ((H+2)(W+2))
    np.testing.assert_allclose(e[0, 0], -(p * np.log2(p)).sum(), rtol=1e-6)
    assert e[0, 1] < e[0, 0]


@pytest.mark.parametrize("span", [3.7, 0.1, 1e-3, 123.456])
def test_values_on_bin_edges_land_in_the_upper_bin(span):
    from ife_jax.ops.entropy import _quantise

    span = np.float32(span)
    k = np.arange(257, dtype=np.float32)
    v = (k * span) / np.float32(256)  # exact multiples of span / 256 where representable
    q = np.asarray(_quantise(jnp.asarray(v), np.float32(0), span, 256))
    t = v * np.float32(256)
    edges = np.arange(257, dtype=np.float32) * span
    want = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, 255)
    np.testing.assert_array_equal(q, want)
    assert q[-1] == 255 and q[0] == 0 and q[32] == 32  # max -> last bin; span/8 -> bin 32


def _maps_with_non_finite(shape, seed):
    """ReLU-like maps; channel 0 of sample 1 holds a NaN, channel C-1 of sample 0 an Inf."""
    x = np.maximum(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), 0)
    x[min(1, shape[0] - 1), 2, 3, 0] = np.nan
    x[0, -1, 0, -1] = np.inf
    want = paper_entropy_numpy(np.where(np.isfinite(x), x, 0))
    want[~np.isfinite(x).all(axis=(1, 2))] = np.nan
    return jnp.asarray(x), want


@pytest.mark.parametrize(
    ("shape", "rows"), [((4, 9, 11, 3), 8), ((3, 7, 6, 1), 1), ((1, 8, 5, 4), 3)]
)
def test_cpu_and_row_block_layouts_match_numpy(shape, rows):
    # Both 2-D layouts of "paper" mode, whichever entropy_scores picks on this platform: the
    # CPU one (keys of whole samples channels-last, transposed into rows) for every number of
    # samples per group, and row blocks cut from the map (the other platforms' XLA path).
    from ife_jax.ops.entropy import _cpu_sample_bytes, _map_row_blocks, _paper_block, _paper_cpu

    x, want = _maps_with_non_finite(shape, sum(shape) + rows)
    one_sample = _cpu_sample_bytes(shape[1:3], shape[3])
    for per_group in sorted({1, 2, shape[0]}):  # samples per group; 2 of 3 leaves groups of 1
        got = jax.jit(lambda x_, g=per_group: _paper_cpu(x_, 256, rows, g * one_sample))(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = _map_row_blocks(lambda r: _paper_block(r, 256), x, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_budget_between_one_sample_and_the_batch():
    # A budget holding one sample's keys but not the batch's: groups of samples on CPU, the
    # same scores as one group (integer counts; only the order of the mean's sum may differ,
    # at most H*W*u relative).
    from ife_jax.ops.entropy import _cpu_sample_bytes, _row_bytes

    x, want = _maps_with_non_finite((4, 10, 12, 6), 7)
    budget = 2 * _cpu_sample_bytes((10, 12), 6) + 8 * _row_bytes((10, 12), 256)
    got = entropy_scores(x, memory_budget_bytes=budget)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, entropy_scores(x), rtol=10 * 12 * 2.0**-24, atol=0)
