"""The Pallas entropy kernel (interpret mode on CPU) against the XLA path of paper-mode entropy."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.ops import entropy as entropy_module
from ife_jax.ops import entropy_pallas, entropy_scores, top_channels

GOLDEN = Path(__file__).resolve().parent / "golden" / "ife_golden.npz"
U = 2.0**-24  # float32 unit roundoff
INTERPRET = {"block": 1, "interpret": True}


def kernel_scores(x, bins=256, programs=3):
    return np.asarray(
        entropy_module._paper_pallas(jnp.asarray(x), bins, programs=programs, **INTERPRET)
    )


def rtol_for(n):
    """Both paths average the same n non-negative terms log2(n / count), count an integer.

    Each sum is within (n - 1) u of the exact sum of its computed terms, whatever the order;
    each term's log2 is within a few ulp (taken as 4 u) of the exact value on any backend; the
    final division by n rounds once in each. So the scores are at most 2 (n - 1) u + 8 u + 2 u
    apart, relative to either.
    """
    return 2 * (n - 1) * U + 10 * U


def keys_of(x, bins=256):
    b, h, w, c = x.shape
    rows = jnp.transpose(jnp.asarray(x), (0, 3, 1, 2)).reshape(b * c, h, w)
    keys, _ = entropy_module._paper_keys(rows, bins)
    return keys


def counts_numpy(keys):
    """The count of each pixel's cell, row by row, with np.unique."""
    out = []
    for row in np.asarray(keys):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        out.append(counts[inverse])
    return np.stack(out)


def relu_maps(shape, seed):
    return np.maximum(np.random.default_rng(seed).standard_normal(shape), 0).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 9, 13, 5), (1, 7, 7, 1), (1, 16, 16, 3)])
def test_counts_identical_to_numpy(shape):
    x = relu_maps(shape, sum(shape))
    keys = keys_of(x)
    n = shape[1] * shape[2]
    _, counts = entropy_pallas.row_entropy(
        keys, n=n, cells=256 * 256, programs=2, with_counts=True, **INTERPRET
    )
    np.testing.assert_array_equal(np.asarray(counts), counts_numpy(keys))


@pytest.mark.parametrize(
    "shape, programs", [((2, 9, 13, 5), 1), ((3, 5, 11, 2), 4), ((1, 16, 16, 3), 64)]
)
def test_scores_match_xla_path(shape, programs):
    x = relu_maps(shape, programs + sum(shape))
    want = np.asarray(entropy_scores(jnp.asarray(x)))
    got = kernel_scores(x, programs=programs)
    np.testing.assert_allclose(got, want, rtol=rtol_for(shape[1] * shape[2]), atol=0)


@pytest.mark.parametrize("bins", [2, 7, 64])
def test_other_bins(bins):
    x = np.random.default_rng(bins).standard_normal((1, 8, 9, 3)).astype(np.float32)
    want = np.asarray(entropy_scores(jnp.asarray(x), bins=bins))
    np.testing.assert_allclose(kernel_scores(x, bins), want, rtol=rtol_for(72), atol=0)


def test_edge_values_constant_and_non_finite_channels():
    h, w = 8, 10
    edge = np.zeros((h, w), np.float32)
    edge[::2, ::3] = 1.0  # ReLU-like: neighbour means land on multiples of 1/8, bin edges
    x = np.stack(
        [
            edge,
            np.zeros((h, w), np.float32),
            np.full((h, w), 0.5, np.float32),
            np.where(edge > 0, np.nan, 1.0).astype(np.float32),
            np.where(edge > 0, np.inf, 0.0).astype(np.float32),
            relu_maps((h, w), 5),
        ],
        -1,
    )[None]
    want = np.asarray(entropy_scores(jnp.asarray(x)))
    got = kernel_scores(x)
    assert np.isnan(got[0, 3]) and np.isnan(got[0, 4])
    assert got[0, 1] == 0.0  # every pixel in one cell
    finite = [0, 1, 2, 5]
    np.testing.assert_allclose(got[:, finite], want[:, finite], rtol=rtol_for(h * w), atol=0)
    counts = entropy_pallas.row_entropy(
        keys_of(x), n=h * w, cells=256 * 256, programs=2, with_counts=True, **INTERPRET
    )[1]
    np.testing.assert_array_equal(np.asarray(counts), counts_numpy(keys_of(x)))


@pytest.mark.parametrize("case", ["case_a", "case_c"])
def test_selected_channels_identical_on_golden_cases(case):
    with np.load(GOLDEN) as golden:
        x = np.transpose(golden[f"{case}/input"], (0, 2, 3, 1))
    c = x.shape[-1]
    for features in (x, np.maximum(x, 0)):
        want = entropy_scores(jnp.asarray(features))
        got = jnp.asarray(kernel_scores(features))
        for k in (c // 2, (3 * c) // 4):
            np.testing.assert_array_equal(top_channels(got, k), top_channels(want, k))


@pytest.mark.parametrize("seed", range(3))
def test_selected_channels_identical_on_relu_maps(seed):
    x = relu_maps((2, 12, 12, 16), seed)
    want = entropy_scores(jnp.asarray(x))
    got = jnp.asarray(kernel_scores(x))
    np.testing.assert_array_equal(top_channels(got, 8), top_channels(want, 8))


def test_rows_of_65536_pixels_use_full_words():
    # 256 x 256 = 65,536 pixels: a count may reach 2^16, so one 32-bit word per cell.
    n = 256 * 256
    assert entropy_pallas.packs_half_words(n - 1) and not entropy_pallas.packs_half_words(n)
    # Sample 0 is all zeros: its one cell holds 2^16 pixels, which 16 bits would wrap to 0.
    # Sample 1 has a small blob: several cells, one of them holding almost every pixel.
    x = np.zeros((2, 256, 256, 1), np.float32)
    x[1, 100:103, 50:60, 0] = 1.0
    keys = keys_of(x)
    scores, counts = entropy_pallas.row_entropy(
        keys, n=n, cells=256 * 256, programs=1, with_counts=True, **INTERPRET
    )
    want_counts = counts_numpy(keys)
    assert want_counts[0].min() == n
    np.testing.assert_array_equal(np.asarray(counts), want_counts)
    want = np.asarray(entropy_scores(jnp.asarray(x)))[:, 0]
    assert scores[0] == 0.0
    np.testing.assert_allclose(np.asarray(scores), want, rtol=rtol_for(n), atol=0)


def test_cuda_lowering_calls_the_triton_kernel(monkeypatch):
    # Lowering for CUDA needs no GPU: it checks that the kernel is expressible in Triton and
    # that entropy_scores routes the CUDA platform to it, and the CPU platform to XLA.
    monkeypatch.setattr(entropy_module, "_pallas_available", lambda shape, bins: True)
    x = jax.ShapeDtypeStruct((2, 16, 16, 4), jnp.bfloat16)
    cuda = jax.jit(entropy_scores).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    cpu = jax.jit(entropy_scores).trace(x).lower(lowering_platforms=("cpu",)).as_text()
    assert "__gpu$xla.gpu.triton" in cuda
    assert "triton" not in cpu


def test_the_kernel_is_opt_in(monkeypatch):
    # Without IFE_JAX_PALLAS_ENTROPY=1 the CUDA platform keeps the XLA path.
    monkeypatch.delenv(entropy_module.PALLAS_ENV, raising=False)
    assert not entropy_module._pallas_available((2, 16, 16, 4), 256)
    x = jax.ShapeDtypeStruct((2, 16, 16, 4), jnp.float32)
    cuda = jax.jit(entropy_scores).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" not in cuda


def test_bad_keys_and_interpret_block():
    keys = jnp.zeros((2, 10), jnp.int32)
    with pytest.raises(ValueError, match=r"\(2, 12\) int32"):
        entropy_pallas.row_entropy(keys, n=12, cells=4, **INTERPRET)
    with pytest.raises(ValueError, match="block=8"):
        entropy_pallas.row_entropy(keys, n=10, cells=4, block=8, interpret=True)


def _has_cuda():
    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:
        return False


@pytest.mark.skipif(
    not _has_cuda(), reason="needs a CUDA GPU: the compiled kernel, not interpreted"
)
@pytest.mark.parametrize("shape", [(2, 37, 29, 6), (1, 256, 256, 2)])
def test_compiled_kernel_on_gpu(shape, monkeypatch):
    monkeypatch.setenv(entropy_module.PALLAS_ENV, "1")
    x = relu_maps(shape, 7)
    x[0, ..., 1] = 0.0  # a constant channel: one cell holds every pixel (2^16 at 256 x 256)
    keys = keys_of(x)
    n = shape[1] * shape[2]
    scores, counts = entropy_pallas.row_entropy(keys, n=n, cells=256 * 256, with_counts=True)
    np.testing.assert_array_equal(np.asarray(counts), counts_numpy(keys))
    rows = jnp.transpose(jnp.asarray(x), (0, 3, 1, 2)).reshape(-1, shape[1], shape[2])
    want = np.asarray(entropy_module._paper_block(rows, 256))
    np.testing.assert_allclose(np.asarray(scores), want, rtol=rtol_for(n), atol=0)
    got = entropy_scores(jnp.asarray(x))  # the kernel, chosen for the CUDA platform
    np.testing.assert_allclose(np.asarray(got).ravel(), want, rtol=rtol_for(n), atol=0)
