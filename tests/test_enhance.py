"""enhance(): the guarantees of the public API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ife_jax
from ife_jax import curvature_scores, enhance, entropy_scores

CRITERIA = ["curvature", "entropy"]


def features(shape=(2, 12, 10, 8), seed=0):
    return jax.nn.relu(jax.random.normal(jax.random.key(seed), shape))


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("order", ["raw_first", "selected_first"])
def test_output_is_raw_and_selected_channels(criterion, order):
    x = features()
    out, idx = enhance(x, criterion=criterion, ratio=0.5, order=order, return_indices=True)
    assert out.shape == (2, 12, 10, 12) and idx.shape == (2, 4)
    scores = ife_jax.channel_scores(x, criterion=criterion)
    np.testing.assert_array_equal(idx, jnp.argsort(-scores, axis=1, stable=True)[:, :4])
    sel = np.take_along_axis(np.asarray(x), np.asarray(idx)[:, None, None, :], axis=3)
    raw, extra = (
        (out[..., :8], out[..., 8:]) if order == "raw_first" else (out[..., 4:], out[..., :4])
    )
    np.testing.assert_array_equal(raw, x)
    np.testing.assert_array_equal(extra, sel)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_channel_permutation_equivariance(criterion):
    x = features((1, 11, 9, 7), seed=4)
    perm = np.array([3, 0, 6, 1, 5, 2, 4])
    s = ife_jax.channel_scores(x, criterion=criterion)
    sp = ife_jax.channel_scores(x[..., perm], criterion=criterion)
    np.testing.assert_allclose(sp, s[:, perm], rtol=1e-6)
    _, idx = enhance(x, criterion=criterion, ratio=0.5, return_indices=True)
    _, idxp = enhance(x[..., perm], criterion=criterion, ratio=0.5, return_indices=True)
    np.testing.assert_array_equal(perm[np.asarray(idxp)], idx)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_jit_does_not_recompile_and_is_deterministic(criterion):
    f = jax.jit(lambda x: enhance(x, criterion=criterion, ratio=0.5))
    a, b = f(features(seed=1)), f(features(seed=2))
    assert f._cache_size() == 1
    np.testing.assert_array_equal(a, f(features(seed=1)))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_vmap_matches_batch(criterion):
    x = features((3, 9, 9, 6))
    batched = enhance(x, criterion=criterion, ratio=0.5)
    mapped = jax.vmap(lambda s: enhance(s[None], criterion=criterion, ratio=0.5)[0])(x)
    np.testing.assert_array_equal(mapped, batched)
    # vmap over an extra leading axis of the whole function too.
    stacked = jax.vmap(lambda s: enhance(s, criterion=criterion, ratio=0.5))(x[:, None])
    np.testing.assert_array_equal(stacked[:, 0], batched)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_grad_flows_through_selected_channels_only(criterion):
    x = features((1, 8, 8, 6), seed=3)
    _, idx = enhance(x, criterion=criterion, ratio=0.5, return_indices=True)
    w = jnp.arange(1.0, 10.0)  # a distinct weight for each of the 6 + 3 output channels
    g = jax.grad(lambda x: jnp.sum(enhance(x, criterion=criterion, ratio=0.5) * w))(x)
    assert np.isfinite(np.asarray(g)).all()
    # d/dx_c = w[c] from the raw copy, plus w[6 + j] if channel c was selected j-th.
    want = np.asarray(w[:6]).copy()
    for j, c in enumerate(np.asarray(idx[0])):
        want[c] += float(w[6 + j])
    np.testing.assert_allclose(g[0, 0, 0], want)
    # The scores themselves carry no gradient.
    for fn in (curvature_scores, entropy_scores):
        np.testing.assert_array_equal(jax.grad(lambda x, fn=fn: fn(x).sum())(x), 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32, jnp.uint8])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_dtypes(dtype, criterion):
    x32 = jnp.round(features((2, 8, 9, 4), seed=5) * 20)  # exactly representable in every dtype
    x = x32.astype(dtype)
    out = enhance(x, criterion=criterion, ratio=0.5)
    assert out.dtype == dtype
    s = ife_jax.channel_scores(x, criterion=criterion)
    assert s.dtype == jnp.float32
    np.testing.assert_allclose(s, ife_jax.channel_scores(x32, criterion=criterion), rtol=1e-6)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_channel_ranks_last_and_leaves_others_alone(criterion, bad):
    x = np.array(features((2, 8, 8, 6), seed=6))
    clean = ife_jax.channel_scores(jnp.asarray(x), criterion=criterion)
    x[0, 3, 4, 2] = bad  # poison channel 2 of sample 0
    s = ife_jax.channel_scores(jnp.asarray(x), criterion=criterion)
    assert not np.isfinite(s[0, 2])
    keep = np.ones((2, 6), bool)
    keep[0, 2] = False
    np.testing.assert_array_equal(np.asarray(s)[keep], np.asarray(clean)[keep])
    _, idx = enhance(jnp.asarray(x), criterion=criterion, ratio=1.0, return_indices=True)
    assert idx[0, -1] == 2


def test_reference_hist_range_ignores_non_finite_channels():
    x = np.array(features((2, 8, 8, 4), seed=7))
    clean = entropy_scores(jnp.asarray(x), mode="reference_hist")
    x[1, 0, 0, 3] = np.nan
    s = np.asarray(entropy_scores(jnp.asarray(x), mode="reference_hist"))
    assert np.isnan(s[1, 3])
    # The batch-global range is taken over finite channels only; the other scores may move
    # with the range (that is the reference's definition) but stay finite.
    assert np.isfinite(np.delete(s.ravel(), 7)).all()
    assert np.isfinite(np.asarray(clean)).all()


BAD = [
    (jnp.zeros((4, 4, 3)), {}, "rank 3"),
    (jnp.zeros((1, 2, 5, 3)), {}, "H=2"),
    (jnp.zeros((1, 5, 5, 0)), {}, "C=0"),
    (jnp.zeros((1, 5, 5, 3), bool), {}, "booleans"),
    (jnp.zeros((1, 5, 5, 4)), {"ratio": 0.0}, "ratio must be in"),
    (jnp.zeros((1, 5, 5, 4)), {"ratio": 1.5}, "ratio must be in"),
    (jnp.zeros((1, 5, 5, 4)), {"ratio": 0.2}, "keeps int"),
    (jnp.zeros((1, 5, 5, 4)), {"bins": 1}, "bins must be"),
    (jnp.zeros((1, 5, 5, 4)), {"criterion": "gradient"}, "Unknown criterion 'gradient'"),
    (jnp.zeros((1, 5, 5, 4)), {"entropy_mode": "fast"}, "Unknown entropy mode 'fast'"),
    (jnp.zeros((1, 5, 5, 4)), {"order": "middle"}, "Unknown order 'middle'"),
]


@pytest.mark.parametrize(("x", "kwargs", "message"), BAD)
def test_bad_arguments_raise_at_trace_time(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda x: enhance(x, **kwargs), x)


@pytest.mark.parametrize("criterion", ["entropy", "curvature"])
@pytest.mark.parametrize("order", ["raw_first", "selected_first"])
@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["direct", "jit"])
def test_enhance_on_an_empty_batch_returns_an_empty_result_of_the_right_shape(
    criterion, order, wrap
):
    def run(x):
        return enhance(x, criterion=criterion, ratio=0.4, order=order, return_indices=True)

    one, one_idx = wrap(run)(jnp.ones((1, 7, 5, 6), jnp.bfloat16))  # k = int(0.4 * 6) = 2
    out, idx = wrap(run)(jnp.ones((0, 7, 5, 6), jnp.bfloat16))
    assert one.shape == (1, 7, 5, 8) and one_idx.shape == (1, 2)
    assert out.shape == (0, 7, 5, 8) and out.dtype == jnp.bfloat16
    assert idx.shape == (0, 2) and idx.dtype == one_idx.dtype
    scores = ife_jax.channel_scores(jnp.ones((0, 7, 5, 6)), criterion=criterion)
    assert scores.shape == (0, 6) and scores.dtype == jnp.float32
