"""Building blocks shared by the segmentation networks (NHWC, flax.linen)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ife_jax.nn.conv import Conv
from ife_jax.nn.init import bernoulli, variance_scaling
from ife_jax.nn.norm import BatchNorm
from ife_jax.ops._checks import (
    check_ife as check_ife,  # one check, shared with Keras and the config
)

#: He-normal initialiser over the output fan, as torchvision's ResNet initialises convolutions.
conv_init = variance_scaling(2.0, "fan_out", "normal")

Dtype = Any


#: The running averages' decay of PyTorch's BatchNorm (its momentum 0.1), the reference's.
BN_MOMENTUM = 0.9


class Dropout(nn.Dropout):
    """``flax.linen.Dropout`` (same fields, same masks bit for bit) with its mask drawn flat,
    which XLA:CPU compiles in a fraction of the time (see :mod:`ife_jax.nn.init`)."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(bernoulli(rng, keep, shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def check_bn_momentum(momentum, *, name: str) -> None:
    """A BatchNorm decay must be a number in [0, 1)."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise ValueError(f"{name}: bn_momentum must be a number in [0, 1); got {momentum!r}.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{name}: bn_momentum must be in [0, 1); got {momentum!r}.")


def batch_norm(
    train: bool,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str | None = None,
    momentum: float = BN_MOMENTUM,
):
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, epsilon 1e-5); the
    variables and outputs of ``flax.linen.BatchNorm``, with a closed-form gradient."""
    return BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
    spatial_dims: int = 2,
) -> Conv:
    """A square (or cubic, ``spatial_dims=3``) convolution padded like PyTorch's
    ``padding = dilation * (kernel - 1) // 2``."""
    pad = dilation * (kernel - 1) // 2
    n = spatial_dims
    return Conv(
        features,
        (kernel,) * n,
        strides=(stride,) * n,
        kernel_dilation=(dilation,) * n,
        padding=((pad, pad),) * n,
        use_bias=use_bias,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ConvBNReLU(nn.Module):
    """``conv(k x k, dilation) -> BatchNorm -> ReLU``: (B, H, W, C) -> (B, H/s, W/s, features).

    With ``spatial_dims=3`` the convolution is k x k x k over (B, D, H, W, C).
    """

    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    spatial_dims: int = 2
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(
            self.features,
            self.kernel,
            stride=self.stride,
            dilation=self.dilation,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
            spatial_dims=self.spatial_dims,
        )(x)
        x = batch_norm(train, self.dtype, self.param_dtype, name="bn", momentum=self.bn_momentum)(x)
        return nn.relu(x)


class DoubleConv(nn.Module):
    """Two ``3x3 conv (bias) -> BatchNorm -> ReLU`` blocks, the classic UNet stage (3x3x3 with
    ``spatial_dims=3``)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    spatial_dims: int = 2
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(2):
            x = ConvBNReLU(
                self.features,
                use_bias=True,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
                spatial_dims=self.spatial_dims,
                bn_momentum=self.bn_momentum,
            )(x, train)
        return x


def _align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights with corners aligned (``align_corners=True``)."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    rows = np.arange(n_out)
    m[rows, lo] += 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, H, W, C) to (B, h, w, C) with corner pixels aligned.

    This is PyTorch's ``interpolate(mode="bilinear", align_corners=True)``: output pixel ``o``
    samples input position ``o * (H - 1) / (h - 1)``. It is computed as two small matrix
    products, separable over rows and columns, in ``x``'s dtype.
    """
    h, w = size
    if x.shape[1:3] == (h, w):
        return x
    mh = jnp.asarray(_align_corners_matrix(h, x.shape[1]), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, x.shape[2]), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x)
    return jnp.einsum("pw,bowc->bopc", mw, x)


def check_input(x: jax.Array, *, stride: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, H, W, C) with H and W divisible by ``stride``."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects NHWC images (B, H, W, C); got shape {x.shape}.")
    h, w = x.shape[1], x.shape[2]
    if h % stride or w % stride:
        raise ValueError(
            f"{name} needs an input height and width divisible by {stride}; got {h} x {w} "
            f"(pad or resize to a multiple of {stride})."
        )
