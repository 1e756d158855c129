"""Curvature score of each feature channel (the paper's eq. 1)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ife_jax.ops._checks import as_float32, check_choice, check_features

_A, _B, _G = -1.0 / 16.0, 5.0 / 16.0, -1.0
#: The fixed 3x3 mean-curvature kernel of Gong (alpha, beta, gamma = -1/16, 5/16, -1). It is
#: symmetric, so correlation and convolution agree, and it sums to zero.
CURVATURE_KERNEL = np.array([[_A, _B, _A], [_B, _G, _B], [_A, _B, _A]], dtype=np.float32)

CURVATURE_METHODS = ("auto", "conv", "rows")


def _response(x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = jnp.broadcast_to(jnp.asarray(CURVATURE_KERNEL)[:, :, None, None], (3, 3, 1, c))
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )


@jax.jit
def curvature_response(x: jax.Array) -> jax.Array:
    """The mean-curvature map of every channel: (B, H, W, C) -> (B, H-2, W-2, C) float32.

    A depthwise ``lax.conv_general_dilated`` with :data:`CURVATURE_KERNEL` and no padding (the
    paper's Fig. 2 shows such maps). :func:`curvature_scores` is the sum of its absolute values.
    """
    check_features(x)
    return _response(lax.stop_gradient(as_float32(x)))


def _scores_conv(x: jax.Array) -> jax.Array:
    """Depthwise ``lax.conv_general_dilated`` with the kernel, VALID padding; sum of |response|."""
    return jnp.sum(jnp.abs(_response(x)), axis=(1, 2))


def _scores_rows(x: jax.Array) -> jax.Array:
    """The same stencil, one output row at a time under ``lax.scan``.

    Each step touches three input rows only, which keeps the working set in cache: on CPUs this
    is several times faster than the fused whole-array stencil or the depthwise convolution.
    """
    b, h, w, c = x.shape

    def step(total, i):
        r = lax.dynamic_slice_in_dim(x, i, 3, axis=1)  # (B, 3, W, C)
        left, mid, right = r[:, :, : w - 2], r[:, :, 1 : w - 1], r[:, :, 2:]
        corners = left[:, 0] + right[:, 0] + left[:, 2] + right[:, 2]
        edges = mid[:, 0] + mid[:, 2] + left[:, 1] + right[:, 1]
        response = _A * corners + _B * edges + _G * mid[:, 1]
        return total + jnp.sum(jnp.abs(response), axis=1), None

    total, _ = lax.scan(step, jnp.zeros((b, c), jnp.float32), jnp.arange(h - 2))
    return total


@functools.partial(jax.jit, static_argnames=("method",))
def curvature_scores(x: jax.Array, *, method: str = "auto") -> jax.Array:
    r"""Curvature score of every channel: :math:`S_{b,c} = \sum_{h,w} |(K \star x_{b,c})_{h,w}|`.

    ``K`` is :data:`CURVATURE_KERNEL`, applied to each channel on its own with no padding, so the
    response map is (H-2, W-2). Constant and linear-ramp channels score ~0; edges and texture
    score high. Scores are computed in float32 whatever ``x``'s dtype and carry no gradient.

    Args:
      x: (B, H, W, C) features, NHWC, any real dtype; H, W >= 3.
      method: ``"conv"`` (a depthwise ``lax.conv_general_dilated``), ``"rows"`` (the same sum
        row by row, faster on CPU) or ``"auto"`` (``rows`` when lowered for CPU, ``conv``
        elsewhere). All three give the same scores up to float32 rounding.

    Returns:
      (B, C) float32 scores. A channel holding NaN or +-Inf gets a non-finite score (every
      pixel lies in some valid window); the other channels are unaffected.

    Raises:
      ValueError: if ``x`` is not a (B, H, W, C) array with H, W >= 3 and C >= 1, is boolean, or
        ``method`` is unknown.

    Example:
      >>> curvature_scores(jnp.ones((2, 8, 8, 4))).shape
      (2, 4)

    Reference: Liu et al., "Instructive Feature Enhancement for Dichotomous Medical Image
    Segmentation", MICCAI 2023, eq. (1).
    """
    check_features(x)
    check_choice(method, CURVATURE_METHODS, name="curvature method")
    x = lax.stop_gradient(as_float32(x))
    if method == "conv":
        return _scores_conv(x)
    if method == "rows":
        return _scores_rows(x)
    return lax.platform_dependent(x, cpu=_scores_rows, default=_scores_conv)
