"""IFELayer on volumes (B, D, H, W, C): scores against the slow NumPy oracles, equality with
ife_jax.enhance, and a Keras model of Conv3D layers that fits, saves and reloads.

Backend-agnostic: under ``KERAS_BACKEND=torch`` (see test_keras_torch_backend.py) the layer runs
its ``keras.ops`` path.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _oracles import curvature_3d_numpy, paper_entropy_3d_numpy
from keras_layer_checks import check_keras_layer

import ife_jax
from ife_jax.keras import IFELayer
from ife_jax.keras import ops as keras_ife

ON_JAX = keras.backend.backend() == "jax"
EPS32 = float(np.finfo(np.float32).eps)


def volume(shape=(2, 4, 5, 6, 3), seed=0):
    return np.maximum(np.random.default_rng(seed).normal(size=shape), 0.0).astype(np.float32)


def np_out(t):
    return keras.ops.convert_to_numpy(t)


@pytest.mark.parametrize(
    "kwargs",
    [dict(criterion="entropy"), dict(criterion="curvature", order="selected_first")],
    ids=["entropy", "curvature-selected-first"],
)
def test_shared_layer_checks_on_volumes(kwargs, tmp_path):
    out = check_keras_layer(lambda: IFELayer(**kwargs), (4, 5, 6, 4), tmp_path)
    assert out.shape == (2, 4, 5, 6, 6)


def test_ops_scores_match_the_numpy_oracles():
    x = volume()
    got = np_out(keras_ife.curvature_scores(x))
    want = curvature_3d_numpy(x)
    # 27 rounded terms per window, summed over the (D-2)(H-2)(W-2) windows.
    atol = 2 * 3 * 4 * 28 * EPS32 * np.abs(ife_jax.CURVATURE_KERNEL_3D).sum() * x.max()
    np.testing.assert_allclose(got, want, rtol=want.size * EPS32, atol=atol)
    got = np_out(keras_ife.entropy_scores(x))
    np.testing.assert_allclose(got, paper_entropy_3d_numpy(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(criterion="entropy"),
        dict(criterion="curvature"),
        dict(criterion="curvature", curvature_mode="slices", ratio=0.75),
    ],
    ids=["entropy", "curvature", "curvature-slices"],
)
def test_layer_equals_enhance(kwargs):
    x = volume((2, 5, 6, 7, 4), seed=1)
    got = np_out(IFELayer(**kwargs)(x))
    want = np.asarray(ife_jax.enhance(x, **kwargs))
    np.testing.assert_array_equal(got, want)


def test_conv3d_model_fits_saves_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 8, 1))
    h = keras.layers.Conv3D(6, 3, padding="same", activation="relu")(inputs)
    h = IFELayer("entropy", ratio=0.5)(h)
    h = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(h)
    h = IFELayer("curvature", ratio=0.5, order="selected_first")(h)
    outputs = keras.layers.Conv3D(1, 1)(h)
    model = keras.Model(inputs, outputs)
    assert tuple(model.layers[2].output.shape) == (None, 8, 8, 8, 9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    y = (rng.uniform(size=(2, 8, 8, 8, 1)) > 0.5).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    pred = model.predict(x, verbose=0)
    path = tmp_path / "ife3d.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0), pred)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((None, 2, 8, 8, 4), "D=2"),
        ((None, 3, 4, 4, 4, 2), "rank 6"),
        ((None, 8, 4), "rank 3"),
    ],
)
def test_bad_volume_inputs_fail_at_build_time(shape, match):
    with pytest.raises(ValueError, match=match):
        IFELayer().build(shape)
