"""Random draws that equal JAX's and compile fast: kernel initialisers, dropout masks, noise.

``jax.random`` draws a convolution kernel's ``(kh, kw, cin, cout)`` numbers as a 4-D array,
and XLA:CPU takes seconds to compile that draw on some x86-64 CPUs (2.2 s for one
``(3, 3, 8, 8)`` normal draw against 0.3 s for the same 576 numbers drawn flat, on a 2-core AMD
EPYC; a small UNet's ``init`` took 19 s, 5 s with these). JAX's generators (threefry in either
form of ``jax_threefry_partitionable``, rbg, unsafe_rbg) draw the same numbers for a shape as
for its flat size, in row-major order, so drawing flat and reshaping changes nothing: the tests
check it against JAX's own draws for each generator.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_JAX_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")


def _flat(draw, key, shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return draw(key, shape)
    return draw(key, (math.prod(shape),)).reshape(shape)


def bernoulli(key, p, shape) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, the same booleans, drawn flat."""
    return _flat(lambda k, s: jax.random.bernoulli(k, p, s), key, shape)


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, the same numbers, drawn flat."""
    return _flat(lambda k, s: jax.random.normal(k, s, dtype), key, shape)


def variance_scaling(scale: float, mode: str, distribution: str):
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution)`` (fans over the last
    two axes, the kernel layout of ``flax.linen`` convolutions), drawn flat. Other dtypes
    (complex) are drawn as JAX draws them."""
    if mode not in _JAX_MODES:
        raise ValueError(f"variance_scaling: mode must be one of {_JAX_MODES}; got {mode!r}.")
    shaped = jax.nn.initializers.variance_scaling(scale, mode, distribution)

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or not jnp.issubdtype(dtype, jnp.floating):
            return shaped(key, shape, dtype)
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        denominator = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": (fan_in * fan_out) ** 0.5,
        }[mode]
        # A (1, n) array has fan_in 1, so "fan_in" with scale / denominator gives the variance
        # JAX computes for the real shape (the same Python float).
        flat = jax.nn.initializers.variance_scaling(scale / denominator, "fan_in", distribution)
        return flat(key, (1, math.prod(shape)), dtype).reshape(shape)

    return init


#: ``flax.linen``'s default convolution kernel initialiser (LeCun normal, truncated).
lecun_normal = variance_scaling(1.0, "fan_in", "truncated_normal")
