"""BatchNorm with the same variables and outputs as ``flax.linen.BatchNorm``, and a closed-form
gradient.

In training mode ``flax.linen.BatchNorm`` is differentiated op by op: the gradient flows back
through the normalisation, the variance ``E[x^2] - E[x]^2`` and both means, several passes and
per-channel reductions over the activation. Here the batch-statistics normalisation is one
``jax.custom_vjp`` whose backward is the textbook formula, two per-channel sums and one
elementwise pass:

.. math::
  \\hat x = (x - \\mu)\\,r,\\quad r = (\\sigma^2 + \\epsilon)^{-1/2},\\quad
  \\frac{\\partial L}{\\partial x} = \\frac{\\gamma r}{N}\\Big(N g - \\sum g
  - \\hat x \\sum g \\hat x\\Big)

(sums over the N = B H W positions of each channel), plus the terms from the cotangents of
the returned mean and variance, which only the running averages use. The forward pass is the
same sequence of operations as Flax's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _stats(x32: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Flax's fast variance: ``mean``, ``max(0, E[x^2] - mean^2)`` over ``axes``."""
    mean = jnp.mean(x32, axes)
    mean2 = jnp.mean(lax.square(x32), axes)
    return mean, jnp.maximum(0.0, mean2 - lax.square(mean))


def _affine(x, mean, var, scale, bias, epsilon):
    """``(x - mean) * (rsqrt(var + eps) * scale) + bias``, in Flax's order of operations."""
    y = x - mean
    mul = lax.rsqrt(var + epsilon) * scale
    return y * mul + bias


@jax.custom_vjp
def batch_norm_train(x, scale, bias, epsilon):
    """Normalise ``x`` (B, ..., C) by its batch statistics per channel; float32 statistics.

    Args:
      x: (B, ..., C) float.
      scale, bias: (C,) float32.
      epsilon: () added to the variance.

    Returns:
      (y, mean, var): y float32 of ``x``'s shape, the (C,) batch mean and (biased) variance.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _stats(x32, axes)
    y = _affine(x, mean, var, scale, bias, epsilon)
    return (y, mean, var), (x, mean, var, scale, epsilon)


def _batch_norm_bwd(res, cotangents):
    x, mean, var, scale, epsilon = res
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    x32 = x.astype(jnp.float32)
    g = g.astype(jnp.float32)
    rstd = lax.rsqrt(var + epsilon)
    xhat = (x32 - mean) * rstd
    g_bias = jnp.sum(g, axes)
    g_scale = jnp.sum(g * xhat, axes)
    # d var / d x = 2 (x - mean) / N where the variance is not clipped at 0.
    g_var = jnp.where(var > 0, g_var, 0.0)
    dx = (scale * rstd / n) * (n * g - g_bias - xhat * g_scale)
    dx = dx + g_mean / n + (2.0 / n) * g_var * (x32 - mean)
    return (
        dx.astype(x.dtype),
        g_scale.astype(scale.dtype),
        g_bias.astype(scale.dtype),
        jnp.zeros_like(epsilon),
    )


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


#: A collection that, when ``apply`` makes it mutable, receives each training-mode BatchNorm's
#: batch ``mean`` and (biased) ``var``, at the same paths as its running averages in
#: ``batch_stats`` (:mod:`ife_jax.train.precise_bn` pools them over many batches).
BATCH_MOMENTS = "batch_moments"


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis (same variables, same outputs), closed-form
    gradient.

    Variables: params ``scale`` (ones) and ``bias`` (zeros), batch_stats ``mean`` (zeros) and
    ``var`` (ones), all (C,) float32 statistics as in Flax, so checkpoints of either load in
    the other. Training mode normalises by the batch statistics and updates the running
    averages ``ra = momentum * ra + (1 - momentum) * batch``; otherwise the running averages
    normalise. When ``apply`` makes the :data:`BATCH_MOMENTS` collection mutable, training mode
    also stores the batch's mean and variance there. Only the defaults Flax's ``BatchNorm`` is
    used with here are supported (last feature axis, scale and bias, fast variance, no mask, no
    cross-device axis name).

    Attributes:
      use_running_average: normalise by the running averages instead of the batch.
      momentum: decay of the running averages.
      epsilon: added to the variance.
      dtype: output dtype (default: promoted from input and parameters).
      param_dtype: parameter dtype.
    Call: (B, ..., C) -> (B, ..., C).
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
        scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
        out_dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        if self.use_running_average:
            y = _affine(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
            return jnp.asarray(y, out_dtype)
        eps = jnp.asarray(self.epsilon, jnp.float32)
        y, mean, var = batch_norm_train(x, scale, bias, eps)
        if not self.is_initializing():
            if self.is_mutable_collection(BATCH_MOMENTS):
                self.put_variable(BATCH_MOMENTS, "mean", mean)
                self.put_variable(BATCH_MOMENTS, "var", var)
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var
        return jnp.asarray(y, out_dtype)


__all__ = ["BATCH_MOMENTS", "BatchNorm", "batch_norm_train"]
