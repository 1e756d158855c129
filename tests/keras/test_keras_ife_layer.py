"""IFELayer: the shared layer checks, equality with ife_jax.enhance, shapes and bad arguments.

Backend-agnostic: under ``KERAS_BACKEND=torch`` (see test_keras_torch_backend.py) the layer runs
its ``keras.ops`` path and is compared with the JAX functions on the same NumPy input.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_layer_checks import check_keras_layer

import ife_jax
from ife_jax.keras import IFELayer
from ife_jax.keras import ops as keras_ife

ON_JAX = keras.backend.backend() == "jax"


def separated_features(b=2, h=12, w=13, c=8, seed=0):
    """Features whose channels have well-separated curvature and entropy scores.

    Channel ``c`` of each sample holds uniform noise quantised to its own number of levels
    (entropy grows with the levels) times its own scale (curvature grows with the scale); the
    assignment is permuted per sample so that each sample selects different channels.
    """
    rng = np.random.default_rng(seed)
    x = np.empty((b, h, w, c), np.float32)
    for i in range(b):
        perm = rng.permutation(c)
        for ch in range(c):
            levels = 2 + 3 * perm[ch]
            noise = np.floor(rng.uniform(size=(h, w)) * levels) / levels
            x[i, :, :, ch] = noise * (1.0 + 0.7 * perm[ch])
    return x


def np_out(t):
    return keras.ops.convert_to_numpy(t)


def compiled(fn, **jit_kwargs):
    """``jax.jit(fn)`` on the JAX backend (one compilation instead of one per eager op)."""
    if not ON_JAX:
        return fn
    import jax

    return jax.jit(fn, **jit_kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(criterion="entropy"), dict(criterion="curvature", ratio=0.75, order="selected_first")],
    ids=["entropy", "curvature-selected-first"],
)
def test_shared_layer_checks(kwargs, tmp_path):
    out = check_keras_layer(lambda: IFELayer(**kwargs), (10, 11, 8), tmp_path)
    assert out.shape == (2, 10, 11, 8 + int(kwargs.get("ratio", 0.5) * 8))


@pytest.mark.parametrize("criterion", ["entropy", "curvature"])
@pytest.mark.parametrize("order", ["raw_first", "selected_first"])
def test_output_equals_enhance(criterion, order):
    x = separated_features()
    want = np.asarray(ife_jax.enhance(x, criterion=criterion, ratio=0.5, order=order))
    got = np_out(IFELayer(criterion, ratio=0.5, order=order)(x))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["reference_hist", "reference_unique"])
def test_reference_entropy_modes_equal_enhance(mode):
    x = np.maximum(separated_features(c=6, seed=3) - 0.4, 0.0)  # ReLU-like: repeated zeros
    want = np.asarray(ife_jax.enhance(x, ratio=0.5, entropy_mode=mode))
    np.testing.assert_array_equal(np_out(IFELayer(ratio=0.5, entropy_mode=mode)(x)), want)


@pytest.mark.skipif(not ON_JAX, reason="compares the two implementations on the JAX backend")
@pytest.mark.parametrize("criterion", ["entropy", "curvature"])
def test_ops_implementation_equals_jax_implementation(criterion):
    x = separated_features(b=3, c=10, seed=1)
    a = IFELayer(criterion, ratio=0.6, implementation="jax")(x)
    b = compiled(IFELayer(criterion, ratio=0.6, implementation="ops"))(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ops_scores_match_jax_scores():
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(2, 9, 14, 6)), 0.0).astype(np.float32)
    x[0, :, :, 1] = 0.0  # a constant channel
    x[1, 3, 4, 2] = np.nan  # a non-finite channel
    x[1, 0, 0, 4] = np.inf
    for mode in ["paper", "reference_hist", "reference_unique"]:
        want = np.asarray(ife_jax.entropy_scores(x, mode=mode))
        got = np_out(compiled(lambda v, m=mode: keras_ife.entropy_scores(v, mode=m))(x))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=mode)
        assert np.isnan(got[1, 2]) and np.isnan(got[1, 4])
    want_counts, _, _ = ife_jax.ops.reference_histogram(x, bins=16)
    got_counts = np_out(compiled(lambda v: keras_ife.reference_histogram(v, bins=16))(x))
    np.testing.assert_array_equal(got_counts, np.asarray(want_counts))
    want = np.asarray(ife_jax.curvature_scores(x))
    got = np_out(compiled(keras_ife.curvature_scores)(x))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5)


def test_ops_fused_values_are_bitwise_the_jax_values():
    """``100 i + j`` is rounded after the product on every backend, as in ``ife_jax.ops``: a fused
    multiply-add would move some values by one ulp and change their histogram bins."""
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(2, 16, 16, 8)), 0.0).astype(np.float32)
    want = np.asarray(ife_jax.ops.fused_pair_values(x))
    got = np_out(compiled(lambda v: keras_ife._fused(v)[0])(x))
    np.testing.assert_array_equal(got, want)


def test_ops_selection_tie_rule():
    scores = np.array(
        [
            [0.3, 0.9, 0.3, 0.1, 0.9],  # ties: lower index first
            [np.nan, 0.2, np.inf, -1.0, 0.2],  # non-finite last, in index order
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all equal: identity order
        ],
        np.float32,
    )
    want = [[1, 4, 0, 2, 3], [1, 4, 3, 0, 2], [0, 1, 2, 3, 4]]
    top = compiled(keras_ife.top_channels, static_argnums=1)
    assert np_out(top(scores, 5)).tolist() == want
    assert np.asarray(ife_jax.top_channels(scores, 5)).tolist() == want
    assert np_out(top(scores, 2)).tolist() == [r[:2] for r in want]


@pytest.mark.parametrize(
    ("channels", "ratio", "added"),
    [(1, 1.0, 1), (3, 0.5, 1), (7, 0.5, 3), (16, 0.75, 12), (10, 0.25, 2), (8, 1.0, 8)],
)
def test_output_shape(channels, ratio, added):
    layer = IFELayer("curvature", ratio=ratio)
    assert layer.compute_output_shape((None, None, None, channels)) == (
        None,
        None,
        None,
        channels + added,
    )
    symbolic = layer(keras.Input((None, None, channels)))
    assert tuple(symbolic.shape) == (None, None, None, channels + added)
    x = separated_features(b=1, h=5, w=6, c=channels)
    assert tuple(IFELayer("curvature", ratio=ratio)(x).shape) == (1, 5, 6, channels + added)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ratio=0), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(ratio="half"), "ratio"),
        (dict(criterion="variance"), "criterion"),
        (dict(order="middle"), "order"),
        (dict(entropy_mode="other"), "entropy_mode"),
        (dict(bins=1), "bins"),
        (dict(implementation="numba"), "implementation"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IFELayer(**kwargs)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((16, 16), "rank 3"),  # (B, H, W): a missing channel axis
        ((16, 16, None), "channels-first"),  # unknown channel count
        ((3, 224, 224), "channels-first"),  # an RGB image stored (C, H, W)
        ((2, 32, 32), "channels-first"),  # H < 3
        ((16, 16, 3), "keeps"),  # int(0.25 * 3) = 0 channels
    ],
)
def test_bad_inputs_fail_at_build_time(shape, match):
    layer = IFELayer(ratio=0.25)
    with pytest.raises(ValueError, match=match):
        layer(keras.Input(shape))
    with pytest.raises(ValueError, match=match):
        IFELayer(ratio=0.25).build((None, *shape))


def test_sequential_and_subclassed_models():
    x = separated_features()
    want = np.asarray(ife_jax.enhance(x, criterion="curvature", ratio=0.5))
    seq = keras.Sequential([keras.Input(x.shape[1:]), IFELayer("curvature")])
    np.testing.assert_array_equal(np_out(seq(x)), want)

    class Wrapper(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ife = IFELayer("curvature")

        def call(self, inputs):
            return self.ife(inputs)

    np.testing.assert_array_equal(np_out(Wrapper()(x)), want)


def test_mixed_bfloat16_policy():
    x = separated_features()
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = IFELayer("entropy")
        out = layer(x)
        symbolic = IFELayer("entropy")(keras.Input(x.shape[1:]))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert symbolic.dtype == "bfloat16"
    # Scores in float32 from the bfloat16 features: the JAX function on the same bf16 input.
    import ml_dtypes

    want = ife_jax.enhance(x.astype(ml_dtypes.bfloat16), criterion="entropy")
    np.testing.assert_array_equal(np_out(out).astype(np.float32), np.asarray(want, np.float32))


def test_gradients_flow_through_selected_channels():
    x = separated_features(b=1, c=4)
    layer = IFELayer("curvature", ratio=0.5)
    idx = np.asarray(ife_jax.enhance(x, criterion="curvature", ratio=0.5, return_indices=True)[1])
    if ON_JAX:
        import jax

        grad = np.asarray(jax.grad(lambda v: layer(v).sum())(x))
    else:
        import torch

        v = torch.tensor(x, requires_grad=True)
        layer(v).sum().backward()
        grad = v.grad.numpy()
    want = np.ones_like(x)
    want[..., idx[0]] += 1.0  # raw copy + selected copy
    np.testing.assert_array_equal(grad, want)


@pytest.mark.slow
def test_shared_layer_checks_on_the_flax_module_layer(tmp_path):
    """The same checks for the other public layer, the Flax wrapper (JAX backend only)."""
    if not ON_JAX:
        pytest.skip("FlaxModule runs on the JAX backend")
    from ife_jax.keras import export
    from ife_jax.nn import UNet

    def make():
        return export.FlaxModule(UNet(widths=(2, 2, 2, 2, 2)))

    check_keras_layer(make, (16, 16, 3), tmp_path)
