"""The flat-drawn initialisers, dropout masks and noise against JAX's and Flax's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.nn import init
from ife_jax.nn.conv import Conv, ConvTranspose
from ife_jax.nn.layers import Dropout, conv_init
from ife_jax.nn.nnunet import he_init

SCALINGS = [
    (2.0, "fan_out", "normal", (3, 3, 16, 32)),
    (1.0, "fan_in", "truncated_normal", (2, 2, 16, 32)),
    (1.0, "fan_avg", "uniform", (3, 3, 3, 16, 32)),
    (0.5, "fan_geo_avg", "truncated_normal", (1, 1, 16, 32)),
]


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: f"{s[1]}-{s[2]}")
def test_variance_scaling_equals_jax(scaling):
    *args, shape = scaling
    ours, jaxs = init.variance_scaling(*args), jax.nn.initializers.variance_scaling(*args)
    for key in (jax.random.key(3), jax.random.PRNGKey(4)):  # typed and raw keys
        same(ours(key, shape), jaxs(key, shape))
    same(ours(key, shape, jnp.bfloat16), jaxs(key, shape, jnp.bfloat16))
    same(ours(key, (7, 32)), jaxs(key, (7, 32)))


def test_draw_is_flat():
    """The lowered draw holds no 4-D array of random bits: it is made flat and reshaped."""
    lowered = jax.jit(lambda k: init.variance_scaling(2.0, "fan_out", "normal")(k, (3, 3, 8, 16)))
    text = lowered.lower(jax.random.key(0)).as_text()
    assert "1152xui32" in text and "3x3x8x16xui32" not in text and "3x3x8x16xf32" in text
    shaped = jax.jit(lambda k: jax.random.normal(k, (3, 3, 8, 16))).lower(jax.random.key(0))
    assert "3x3x8x16xui32" in shaped.as_text()  # what the check above would find otherwise


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_every_generator_draws_the_same_flat(impl, partitionable):
    scaling = init.variance_scaling(2.0, "fan_out", "normal")
    jaxs = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    shape = (3, 3, 16, 32)
    with jax.threefry_partitionable(partitionable):
        key = jax.random.key(5, impl=impl)
        same(scaling(key, shape), jaxs(key, shape))
        same(init.normal(key, (2, 5, 32)), jax.random.normal(key, (2, 5, 32)))


def test_normal_and_bernoulli_equal_jax():
    key = jax.random.key(7)
    for shape in [(2, 5, 6, 32), (4,), ()]:
        same(init.normal(key, shape), jax.random.normal(key, shape))
        same(init.normal(key, shape, jnp.bfloat16), jax.random.normal(key, shape, jnp.bfloat16))
        np.testing.assert_array_equal(
            init.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape)
        )


def test_network_initialisers_equal_flax_defaults():
    x = jnp.ones((1, 6, 6, 16))
    key = jax.random.key(8)
    kernel = Conv(32, (3, 3)).init(key, x)["params"]["kernel"]
    same(kernel, nn.Conv(32, (3, 3)).init(key, x)["params"]["kernel"])
    up = ConvTranspose(32, (2, 2), strides=(2, 2)).init(key, x)["params"]["kernel"]
    same(up, nn.ConvTranspose(32, (2, 2), strides=(2, 2)).init(key, x)["params"]["kernel"])
    want = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    same(conv_init(key, (3, 3, 16, 32)), want(key, (3, 3, 16, 32)))
    want = jax.nn.initializers.variance_scaling(2.0 / (1.0 + 0.01**2), "fan_in", "normal")
    same(he_init(key, (3, 3, 3, 16, 32)), want(key, (3, 3, 3, 16, 32)))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("broadcast_dims", [(), (1, 2)])
def test_dropout_equals_flax(rate, broadcast_dims):
    x = jax.random.normal(jax.random.key(9), (2, 5, 7, 32))

    class Net(nn.Module):
        layer: type

        @nn.compact
        def __call__(self, x, train):
            return self.layer(rate, broadcast_dims=broadcast_dims, deterministic=not train)(x)

    rngs = {"dropout": jax.random.key(10)}
    for train in (True, False):
        ours, flax = (Net(layer).apply({}, x, train, rngs=rngs) for layer in (Dropout, nn.Dropout))
        same(ours, flax)
    if 0.0 < rate < 1.0:  # a mask was drawn
        dropped = np.asarray(Net(Dropout).apply({}, x, True, rngs=rngs)) == 0
        assert dropped.any() and not dropped.all()
