"""A 3-D UNet for volumes (NDHWC) with optional IFE on the skip features c2 and c3."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.ife import IFE
from ife_jax.nn.layers import DoubleConv, Dtype, check_ife, conv_init
from ife_jax.nn.pool import max_pool

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
      ratios: (r0, r1), the fraction of channels IFE appends to c2 and c3.
      widths: the encoder widths, at least 4 stages.
      curvature_mode: ``"volume"`` (the 3x3x3 kernel) or ``"slices"`` (the 2-D kernel per D
        slice, for anisotropic volumes); see :func:`ife_jax.curvature_scores`.
      bins: passed to the entropy criterion (see :func:`ife_jax.entropy_scores`).
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
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)

        skips = []
        for i, width in enumerate(self.widths):
            if i:
                x = max_pool(x, 2)
            x = DoubleConv(width, spatial_dims=3, name=f"down{i + 1}", **kw)(x, train)
            skips.append(x)

        if self.ife is not None:
            for level, ratio in ((1, self.ratios[0]), (2, self.ratios[1])):  # c2, c3
                skips[level] = IFE(
                    criterion=self.ife,
                    ratio=float(ratio),
                    order="raw_first",
                    bins=self.bins,
                    curvature_mode=self.curvature_mode,
                    name=f"ife_c{level + 1}",
                )(skips[level])

        x = skips[-1]
        for j, level in enumerate(range(len(self.widths) - 2, -1, -1)):
            width = self.widths[level]
            x = nn.ConvTranspose(
                width, (2, 2, 2), strides=(2, 2, 2), kernel_init=conv_init, name=f"up{j + 1}", **kw
            )(x)
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = DoubleConv(width, spatial_dims=3, name=f"dec{j + 1}", **kw)(x, train)

        return nn.Conv(self.num_classes, (1, 1, 1), name="head", **kw)(x)
