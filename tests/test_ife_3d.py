"""IFE on volumes (B, D, H, W, C): 3-D scores against slow NumPy oracles and hand-worked cases."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import (
    KERNEL,
    curvature_3d_numpy,
    curvature_kernel_3d_numpy,
    curvature_numpy,
    paper_entropy_3d_numpy,
)

from ife_jax.ops import (
    CURVATURE_KERNEL_3D,
    curvature_response,
    curvature_scores,
    enhance,
    entropy_scores,
    select_channels,
)

EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(2, 5, 7, 9, 3), (1, 3, 3, 3, 1), (1, 4, 6, 5, 2), (2, 3, 8, 4, 1)]
CRITERIA = ["curvature", "entropy"]


def volume(shape, seed=0, relu=False):
    x = np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)
    return np.maximum(x, 0) if relu else x


def curvature_atol(x):
    """Bound on the float32 error of a score: every window's response is a sum of 27 rounded
    terms (error <= 28 eps sum|K| max|x|), and the score adds the windows' magnitudes."""
    windows = np.prod([s - 2 for s in x.shape[1:-1]])
    return windows * 28 * EPS32 * np.abs(CURVATURE_KERNEL_3D).sum() * np.abs(x).max()


def test_kernel_is_the_mean_of_the_2d_kernel_over_three_planes():
    np.testing.assert_allclose(CURVATURE_KERNEL_3D, curvature_kernel_3d_numpy(), rtol=1e-7)
    steps = np.abs(np.indices((3, 3, 3)) - 1).sum(axis=0)
    weights = {0: Fraction(-1), 1: Fraction(5, 24), 2: Fraction(-1, 48), 3: Fraction(0)}
    for n, wgt in weights.items():
        np.testing.assert_allclose(CURVATURE_KERNEL_3D[steps == n], float(wgt), rtol=1e-7)
    # In exact arithmetic the kernel sums to 0: 1 centre, 6 faces, 12 edges, 8 corners.
    assert sum(weights[n] * int((steps == n).sum()) for n in weights) == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["conv", "rows", "auto"])
def test_curvature_matches_numpy(shape, method):
    x = volume(shape)
    got = np.asarray(curvature_scores(jnp.asarray(x), method=method))
    want = curvature_3d_numpy(x)
    np.testing.assert_allclose(got, want, rtol=want.size * EPS32, atol=curvature_atol(x))


@pytest.mark.parametrize("method", ["conv", "rows"])
def test_constant_and_ramp_volumes_score_zero(method):
    d, h, w = 5, 6, 7
    zz, yy, xx = np.mgrid[:d, :h, :w].astype(np.float32)
    x = np.stack([np.full((d, h, w), 3.0, np.float32), 0.5 * xx - 2 * yy + 1.5 * zz], -1)[None]
    got = np.asarray(curvature_scores(jnp.asarray(x), method=method))
    np.testing.assert_allclose(got, 0.0, atol=curvature_atol(x))


@pytest.mark.parametrize("method", ["conv", "rows"])
def test_z_constant_volume_has_the_closed_form(method):
    # x[d, h, w] = f(h, w): every slice responds with K f / 3 + L f / 16 (module docstring).
    d, h, w = 6, 7, 9
    f = np.random.default_rng(5).standard_normal((h, w)).astype(np.float64)
    k2 = sum(KERNEL[a, b] * f[a : a + h - 2, b : b + w - 2] for a in range(3) for b in range(3))
    lap = f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:] - 4 * f[1:-1, 1:-1]
    slice_response = k2 / 3 + lap / 16
    x = np.broadcast_to(f[None, :, :, None], (1, d, h, w, 1)).astype(np.float32)
    resp = np.asarray(curvature_response(jnp.asarray(x)))[0, ..., 0]
    assert resp.shape == (d - 2, h - 2, w - 2)
    for z in range(d - 2):
        np.testing.assert_allclose(resp[z], slice_response, atol=1e-5)
    got = np.asarray(curvature_scores(jnp.asarray(x), method=method))[0, 0]
    want = (d - 2) * np.abs(slice_response).sum()
    np.testing.assert_allclose(got, want, atol=curvature_atol(x))


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 3), (1, 3, 3, 3, 1)])
@pytest.mark.parametrize("method", ["conv", "rows"])
def test_slices_mode_sums_the_2d_score_of_every_slice(shape, method):
    x = volume(shape, seed=1)
    got = np.asarray(curvature_scores(jnp.asarray(x), method=method, mode="slices"))
    want = sum(curvature_numpy(x[:, z]) for z in range(shape[1]))
    np.testing.assert_allclose(got, want, rtol=want.size * EPS32, atol=curvature_atol(x))
    resp = curvature_response(jnp.asarray(x), mode="slices")
    assert resp.shape == (shape[0], shape[1], shape[2] - 2, shape[3] - 2, shape[4])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_entropy_matches_numpy(shape, relu):
    x = volume(shape, seed=2, relu=relu)
    got = np.asarray(entropy_scores(jnp.asarray(x)))
    # The oracle follows the same float32 rounding; only the final log-sum differs.
    np.testing.assert_allclose(got, paper_entropy_3d_numpy(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bins", [2, 7])
def test_entropy_other_bins(bins):
    x = volume((2, 4, 5, 6, 2), seed=3, relu=True)
    got = np.asarray(entropy_scores(jnp.asarray(x), bins=bins))
    np.testing.assert_allclose(got, paper_entropy_3d_numpy(x, bins), rtol=1e-5, atol=1e-5)


def test_entropy_of_zero_and_constant_volumes():
    d, h, w = 4, 5, 6
    x = np.stack([np.zeros((d, h, w), np.float32), np.full((d, h, w), 0.5, np.float32)], -1)
    e = np.asarray(entropy_scores(jnp.asarray(x[None])))[0]
    assert e[0] == 0.0  # one cell holds every voxel
    # A constant volume: j = 0.5 * (in-volume neighbours) / 26, one cell per neighbour count:
    # corners (7), edges (11), faces (17), interior (26).
    edges = 4 * ((d - 2) + (h - 2) + (w - 2))
    faces = 2 * ((d - 2) * (h - 2) + (d - 2) * (w - 2) + (h - 2) * (w - 2))
    cells = np.array([8, edges, faces, (d - 2) * (h - 2) * (w - 2)], np.float64) / (d * h * w)
    assert cells.sum() == 1.0
    np.testing.assert_allclose(e[1], -(cells * np.log2(cells)).sum(), rtol=1e-6)


def test_entropy_chunking_and_budget():
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), (3, 4, 5, 6, 4)))
    want = entropy_scores(x)
    for rows in (1, 2, 5, 12, 100):
        np.testing.assert_array_equal(entropy_scores(x, chunk_rows=rows), want)
    row = 4 * 256 * 256 + 6 * 4 * (4 * 5 * 6)  # one row's histogram and temporaries
    np.testing.assert_array_equal(entropy_scores(x, memory_budget_bytes=row), want)
    with pytest.raises(ValueError, match=rf"\(3, 4, 5, 6, 4\).*memory_budget_bytes={row - 1}"):
        entropy_scores(x, memory_budget_bytes=row - 1)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_enhance_volume_is_raw_and_selected_channels(criterion):
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 4, 6, 5, 6)))
    out, idx = enhance(x, criterion=criterion, ratio=0.5, return_indices=True)
    assert out.shape == (2, 4, 6, 5, 9)
    np.testing.assert_array_equal(out[..., :6], x)
    scores = curvature_scores(x) if criterion == "curvature" else entropy_scores(x)
    want_idx = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(idx, want_idx)
    for b in range(2):
        np.testing.assert_array_equal(out[b, ..., 6:], np.asarray(x)[b][..., want_idx[b]])
    sel, sidx = select_channels(x, scores, ratio=0.5)
    np.testing.assert_array_equal(sel, out[..., 6:])
    np.testing.assert_array_equal(sidx, idx)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_enhance_volume_jit_vmap_grad(criterion):
    f = jax.jit(lambda x: enhance(x, criterion=criterion, ratio=0.5))
    x1 = jax.nn.relu(jax.random.normal(jax.random.key(3), (2, 3, 5, 4, 4)))
    x2 = jax.nn.relu(jax.random.normal(jax.random.key(4), (2, 3, 5, 4, 4)))
    a = f(x1)
    f(x2)
    assert f._cache_size() == 1
    np.testing.assert_array_equal(a, f(x1))
    mapped = jax.vmap(lambda s: enhance(s[None], criterion=criterion, ratio=0.5)[0])(x1)
    np.testing.assert_array_equal(mapped, a)
    # d/dx_c = w[c] from the raw copy, plus w[4 + j] if channel c was selected j-th.
    _, idx = enhance(x1[:1], criterion=criterion, ratio=0.5, return_indices=True)
    w = jnp.arange(1.0, 7.0)
    g = jax.grad(lambda x: jnp.sum(enhance(x, criterion=criterion, ratio=0.5) * w))(x1[:1])
    want = np.asarray(w[:4]).copy()
    for j, c in enumerate(np.asarray(idx[0])):
        want[c] += float(w[4 + j])
    np.testing.assert_allclose(g[0, 1, 2, 3], want)
    for fn in (curvature_scores, entropy_scores):
        np.testing.assert_array_equal(jax.grad(lambda x, fn=fn: fn(x).sum())(x1), 0.0)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_channel_ranks_last(criterion, bad):
    x = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(5), (1, 3, 5, 5, 4))))
    x = x.copy()
    x[0, 1, 2, 2, 1] = bad
    _, idx = enhance(jnp.asarray(x), criterion=criterion, ratio=1.0, return_indices=True)
    assert int(idx[0, -1]) == 1


BAD = [
    (jnp.zeros((4, 4, 3)), {}, "rank 3"),
    (jnp.zeros((1, 3, 4, 4, 3, 2)), {}, "rank 6"),
    (jnp.zeros((1, 2, 5, 5, 3)), {}, "D=2"),
    (jnp.zeros((1, 3, 2, 5, 3)), {}, "H=2"),
    (jnp.zeros((1, 3, 5, 5, 4)), {"entropy_mode": "reference_hist"}, "'reference_hist'.*3-D"),
    (jnp.zeros((1, 3, 5, 5, 4)), {"criterion": "curvature", "curvature_mode": "x"}, "'x'"),
    (jnp.zeros((1, 3, 5, 5, 4)), {"memory_budget_bytes": 1000}, r"\(1, 3, 5, 5, 4\).*=1000"),
]


@pytest.mark.parametrize(("x", "kwargs", "message"), BAD)
def test_bad_volumes_raise_at_trace_time(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda x: enhance(x, **kwargs), x)
