"""Copying a Flax UNet's variables into the Keras UNet gives the same logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from ife_jax.keras import load_flax_unet_weights, unet
from ife_jax.nn.unet import UNet

TINY = (4, 8, 16, 32, 64)
ON_JAX = keras.backend.backend() == "jax"


def random_variables(flax_model, x, seed=0):
    """Random values for every Flax variable (non-zero biases and non-trivial BatchNorm stats).

    Shapes come from ``jax.eval_shape``; values are NumPy draws scaled like He-normal, so
    activations stay O(1) through the network and nothing needs compiling.
    """
    shapes = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.asarray(x))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
        if "kernel" in name:
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return rng.normal(scale=0.1, size=s.shape).astype(np.float32)  # biases, scales, means

    return jax.tree.map_with_path(draw, shapes)


@pytest.mark.skipif(not ON_JAX, reason="the Flax model runs on JAX")
def test_flax_weights_give_the_same_logits():
    # IFE with unequal ratios: the widened decoder inputs must line up as well.
    ife, ratios = "curvature", (0.25, 0.75)
    flax_model = UNet(ife=ife, ratios=ratios, widths=TINY)
    x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype(np.float32)
    variables = random_variables(flax_model, x)
    want = np.asarray(jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, x))

    model = unet((None, None, 3), ife=ife, ratios=ratios, widths=TINY, kernel_initializer="zeros")
    load_flax_unet_weights(model, variables)
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_mismatched_models_are_rejected():
    flax_model = UNet(ife="curvature", widths=TINY)
    shapes = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    plain = unet((None, None, 3), widths=TINY, kernel_initializer="zeros")  # narrower decoder
    wide = unet((None, None, 3), widths=(4, 8, 16, 32, 128), kernel_initializer="zeros")
    with pytest.raises(ValueError, match="Shape mismatch"):
        load_flax_unet_weights(plain, variables)
    with pytest.raises(ValueError, match="Shape mismatch"):
        load_flax_unet_weights(wide, variables)
