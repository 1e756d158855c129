"""A 3-D UNet for volumes (NDHWC) with optional IFE on the skip features c2 and c3."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.layers import BN_MOMENTUM, Dtype, check_bn_momentum, check_ife
from ife_jax.nn.unet import unet_body

#: nnU-Net's 3-D widths: 32 doubling per stage, capped at 320.
NNUNET_3D_WIDTHS = (32, 64, 128, 256, 320, 320)


def check_volume_input(x: jax.Array, *, stride: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, D, H, W, C) with D, H, W divisible by ``stride``."""
    if x.ndim != 5:
        raise ValueError(f"{name} expects NDHWC volumes (B, D, H, W, C); got shape {x.shape}.")
    d, h, w = x.shape[1:4]
    if d % stride or h % stride or w % stride:
        raise ValueError(
            f"{name} needs a depth, height and width divisible by {stride}; got {d} x {h} x {w} "
            f"(pad or crop to a multiple of {stride})."
        )


class UNet3D(nn.Module):
    """A 3-D UNet with Instructive Feature Enhancement on the skips c2 and c3.

    The 2-D :class:`~ife_jax.nn.UNet` in three dimensions: encoder stages of two
    ``3x3x3 conv (bias) + BN + ReLU`` blocks of ``widths`` with 2x2x2 max-pooling between them,
    giving c1 (full resolution) ... c_n; decoder stages of a 2x2x2 stride-2 transposed conv,
    concatenation with the skip and a double conv; a 1x1x1 conv gives the logits. With ``ife``
    set, c2 and c3 are enhanced as ``[c, top_k(c)]`` (raw first) with the 3-D criteria of
    :func:`ife_jax.enhance`, so the decoder stages that consume them take ``w3 * (2 + r1)`` and
    ``w2 * (2 + r0)`` channels. The default widths are nnU-Net's for 3-D (32 ... 320, six
    stages); with them, 1 input channel and ``ife=None`` it has 31,194,017 parameters.

    Attributes:
      num_classes: logit channels.
      ife: ``None`` (plain 3-D UNet), ``"curvature"`` or ``"entropy"``.
      ratios: (r0, r1), the fraction of channels IFE appends to c2 and c3, each in [0, 1]
        (0: no IFE on that skip).
      widths: the encoder widths, at least 4 stages.
      curvature_mode: ``"volume"`` (the 3x3x3 kernel) or ``"slices"`` (the 2-D kernel per D
        slice, for anisotropic volumes); see :func:`ife_jax.curvature_scores`.
      bins: passed to the entropy criterion (see :func:`ife_jax.entropy_scores`).
      bn_momentum: decay of BatchNorm's running averages, as in :class:`UNet`.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); param_dtype: parameter dtype.

    Call: ``(B, D, H, W, C) -> (B, D, H, W, num_classes)`` logits; D, H and W divisible by
    ``2 ** (len(widths) - 1)``. ``train=True`` uses batch statistics (pass
    ``mutable=["batch_stats"]``).
    """

    num_classes: int = 1
    ife: str | None = None
    ratios: tuple[float, float] = (0.5, 0.5)
    widths: tuple[int, ...] = NNUNET_3D_WIDTHS
    curvature_mode: str = "volume"
    bins: int = 256
    bn_momentum: float = BN_MOMENTUM
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        """The factor D, H and W must be divisible by."""
        return 2 ** (len(self.widths) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_ife(self.ife, tuple(self.ratios), 2, name="UNet3D")
        if len(self.widths) < 4:
            raise ValueError(f"UNet3D: widths must have at least 4 entries; got {self.widths!r}.")
        check_volume_input(x, stride=self.stride, name="UNet3D")
        check_bn_momentum(self.bn_momentum, name="UNet3D")
        return unet_body(self, x, train, spatial_dims=3, curvature_mode=self.curvature_mode)
