"""Curvature score of each feature channel (the paper's eq. 1), in 2-D and in 3-D.

2-D feature maps (B, H, W, C) are scored with the paper's 3x3 kernel :data:`CURVATURE_KERNEL`.
3-D feature maps (B, D, H, W, C) are scored with :data:`CURVATURE_KERNEL_3D`, the mean of the
2-D kernel over the three orthogonal planes through the centre voxel:

- the centre lies in all three planes with weight -1: mean -1;
- a face neighbour (one step along one axis) lies in two of the planes with weight 5/16:
  mean 2 * (5/16) / 3 = 5/24;
- an edge neighbour (one step along two axes) lies in one plane with weight -1/16:
  mean -1/48;
- a corner (one step along all three axes) lies in none: 0.

It sums to -1 + 6 * 5/24 - 12/48 = 0 and is symmetric under every reflection of an axis, so
like the 2-D kernel it gives 0 on constant and linear-ramp volumes. A volume constant along D,
``x[d, h, w] = f(h, w)``, has the response ``(K f) / 3 + (L f) / 16`` on every slice, with ``K``
the 2-D kernel and ``L f = f(h-1, w) + f(h+1, w) + f(h, w-1) + f(h, w+1) - 4 f(h, w)`` the
5-point Laplacian: the (D, H) and (D, W) planes each contribute ``3/16`` of the second
difference along H or W.
"""

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

#: Centre, face, edge and corner weights of the 3x3x3 kernel (see the module docstring).
_C3, _F3, _E3 = -1.0, 5.0 / 24.0, -1.0 / 48.0


def _kernel_3d() -> np.ndarray:
    steps = np.abs(np.indices((3, 3, 3)) - 1).sum(axis=0)  # 0 centre, 1 face, 2 edge, 3 corner
    return np.choose(steps, [_C3, _F3, _E3, 0.0]).astype(np.float32)


#: The 3x3x3 curvature kernel for volumes: the mean of :data:`CURVATURE_KERNEL` over the three
#: orthogonal planes through the centre (centre -1, faces 5/24, edges -1/48, corners 0).
CURVATURE_KERNEL_3D = _kernel_3d()

CURVATURE_METHODS = ("auto", "conv", "rows")
CURVATURE_MODES = ("volume", "slices")


def _response(x: jax.Array) -> jax.Array:
    """Depthwise VALID correlation of every channel with the 2-D or 3-D kernel, by rank."""
    c = x.shape[-1]
    if x.ndim == 4:
        kernel, dims = jnp.asarray(CURVATURE_KERNEL), ("NHWC", "HWIO", "NHWC")
    else:
        kernel, dims = jnp.asarray(CURVATURE_KERNEL_3D), ("NDHWC", "DHWIO", "NDHWC")
    kernel = jnp.broadcast_to(kernel[..., None, None], (*kernel.shape, 1, c))
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,) * (x.ndim - 2),
        padding="VALID",
        dimension_numbers=dims,
        feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )


def _as_slices(x: jax.Array) -> jax.Array:
    """(B, D, H, W, C) -> (B * D, H, W, C): the D slices as a batch of 2-D maps (no copy)."""
    b, d, h, w, c = x.shape
    return x.reshape(b * d, h, w, c)


@functools.partial(jax.jit, static_argnames=("mode",))
def curvature_response(x: jax.Array, *, mode: str = "volume") -> jax.Array:
    """The mean-curvature map of every channel, float32, no padding.

    (B, H, W, C) -> (B, H-2, W-2, C) with the 2-D kernel; (B, D, H, W, C) ->
    (B, D-2, H-2, W-2, C) with the 3-D kernel (``mode="volume"``) or (B, D, H-2, W-2, C) with
    the 2-D kernel on every D slice (``mode="slices"``). A depthwise ``lax.conv_general_dilated``
    (the paper's Fig. 2 shows such maps); :func:`curvature_scores` is the sum of its absolute
    values.
    """
    check_features(x)
    check_choice(mode, CURVATURE_MODES, name="curvature mode")
    x = lax.stop_gradient(as_float32(x))
    if x.ndim == 5 and mode == "slices":
        b, d = x.shape[:2]
        out = _response(_as_slices(x))
        return out.reshape(b, d, *out.shape[1:])
    return _response(x)


def _scores_conv(x: jax.Array) -> jax.Array:
    """Depthwise ``lax.conv_general_dilated`` with the kernel, VALID padding; sum of |response|."""
    return jnp.sum(jnp.abs(_response(x)), axis=tuple(range(1, x.ndim - 1)))


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


def _scores_rows_3d(x: jax.Array) -> jax.Array:
    """The 3-D stencil one output row (fixed d, h) at a time under ``lax.scan``.

    Each step reads a (B, 3, 3, W, C) block. With ``S4`` the sum of a slice's four in-plane
    face neighbours, the response is ``-c + 5/24 (S4[d] + c[d-1] + c[d+1])
    - 1/48 (diagonals[d] + S4[d-1] + S4[d+1])``: the out-of-plane edges of the 3x3x3 window
    are the in-plane faces of the slices before and after.
    """
    b, d, h, w, c = x.shape
    rows = h - 2

    def step(total, i):
        r = lax.dynamic_slice(x, (0, i // rows, i % rows, 0, 0), (b, 3, 3, w, c))
        left, mid, right = r[..., : w - 2, :], r[..., 1 : w - 1, :], r[..., 2:, :]
        centre = mid[:, :, 1]  # (B, 3, W-2, C): the centre row of each of the three slices
        faces = mid[:, :, 0] + mid[:, :, 2] + left[:, :, 1] + right[:, :, 1]
        diagonals = left[:, 1, 0] + right[:, 1, 0] + left[:, 1, 2] + right[:, 1, 2]
        response = (
            _C3 * centre[:, 1]
            + _F3 * (faces[:, 1] + centre[:, 0] + centre[:, 2])
            + _E3 * (diagonals + faces[:, 0] + faces[:, 2])
        )
        return total + jnp.sum(jnp.abs(response), axis=1), None

    total, _ = lax.scan(step, jnp.zeros((b, c), jnp.float32), jnp.arange((d - 2) * rows))
    return total


def _scores(x: jax.Array, method: str) -> jax.Array:
    rows = _scores_rows if x.ndim == 4 else _scores_rows_3d
    if method == "conv":
        return _scores_conv(x)
    if method == "rows":
        return rows(x)
    return lax.platform_dependent(x, cpu=rows, default=_scores_conv)


@functools.partial(jax.jit, static_argnames=("method", "mode"))
def curvature_scores(x: jax.Array, *, method: str = "auto", mode: str = "volume") -> jax.Array:
    r"""Curvature score of every channel: :math:`S_{b,c} = \sum |(K \star x_{b,c})|`.

    For 2-D maps ``K`` is :data:`CURVATURE_KERNEL` and the sum runs over the valid
    (H-2, W-2) region. For 3-D maps ``K`` is :data:`CURVATURE_KERNEL_3D` (the mean of the 2-D
    kernel over the three orthogonal planes; derivation in the module docstring) and the sum
    runs over the valid (D-2, H-2, W-2) region; ``mode="slices"`` instead sums the 2-D score of
    every D slice, for anisotropic volumes whose D neighbours are far apart (put the coarse
    axis first). The kernel is applied to each channel on its own with no padding. Constant
    and linear-ramp channels score ~0; edges and texture score high. Scores are computed in
    float32 whatever ``x``'s dtype and carry no gradient.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C) features, NHWC / NDHWC, any real dtype;
        D, H, W >= 3.
      method: ``"conv"`` (a depthwise ``lax.conv_general_dilated``), ``"rows"`` (the same sum
        row by row, faster on CPU) or ``"auto"`` (``rows`` when lowered for CPU, ``conv``
        elsewhere). All three give the same scores up to float32 rounding.
      mode: for 3-D maps, ``"volume"`` (the 3x3x3 kernel) or ``"slices"`` (the 2-D kernel on
        each D slice, summed). Ignored for 2-D maps.

    Returns:
      (B, C) float32 scores. A channel holding NaN or +-Inf gets a non-finite score (every
      pixel lies in some valid window); the other channels are unaffected.

    Raises:
      ValueError: if ``x`` is not a (B, H, W, C) or (B, D, H, W, C) array with D, H, W >= 3
        and C >= 1, is boolean, or ``method`` or ``mode`` is unknown.

    Example:
      >>> curvature_scores(jnp.ones((2, 8, 8, 4))).shape
      (2, 4)
      >>> curvature_scores(jnp.ones((2, 5, 8, 8, 4))).shape
      (2, 4)

    Reference: Liu et al., "Instructive Feature Enhancement for Dichotomous Medical Image
    Segmentation", MICCAI 2023, eq. (1); the 3-D kernel is this library's extension.
    """
    check_features(x)
    check_choice(method, CURVATURE_METHODS, name="curvature method")
    check_choice(mode, CURVATURE_MODES, name="curvature mode")
    x = lax.stop_gradient(as_float32(x))
    if x.ndim == 5 and mode == "slices":
        b, d, _, _, c = x.shape
        return _scores(_as_slices(x), method).reshape(b, d, c).sum(axis=1)
    return _scores(x, method)
