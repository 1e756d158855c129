"""The classic UNet with optional IFE on the skip features c2 and c3."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.concat import concat_channels
from ife_jax.nn.conv import Conv, ConvTranspose
from ife_jax.nn.ife import IFE
from ife_jax.nn.layers import (
    BN_MOMENTUM,
    DoubleConv,
    Dtype,
    check_bn_momentum,
    check_ife,
    check_input,
    conv_init,
)
from ife_jax.nn.pool import max_pool


class UNet(nn.Module):
    """UNet (Ronneberger et al. 2015) with Instructive Feature Enhancement on two skips.

    Encoder: double conv blocks (3x3 conv + BN + ReLU, twice) of ``widths`` with 2x2 max-pool
    between them, giving c1 (full resolution) ... c5 (1/16). Decoder: 2x2 stride-2 transposed
    conv, concatenation with the skip, double conv; a 1x1 conv gives the logits. With ``ife``
    set, the skips c2 and c3 are enhanced as ``[c, top_k(c)]`` (raw first) with ratios
    ``ratios[0]`` and ``ratios[1]``, so the decoder blocks that consume them take
    ``w3 * (2 + r1)`` and ``w2 * (2 + r0)`` channels; a ratio of 0 leaves that skip without
    IFE (and its decoder block at ``2 w``). The enhanced skips reach the decoder unbuilt; on
    CPU, where it pays, its first convolution reads the copies through its kernel
    (:func:`~ife_jax.nn.conv.concat_conv`), with the same parameters. With the default
    widths, 3 input channels and ``ife=None`` it has 31,043,521 parameters.

    Attributes:
      num_classes: logit channels.
      ife: ``None`` (plain UNet), ``"curvature"`` or ``"entropy"``.
      ratios: (r0, r1), the fraction of channels IFE appends to c2 and c3, each in [0, 1]
        (0: no IFE on that skip).
      widths: the five encoder widths.
      entropy_mode, bins: passed to the entropy criterion (see :func:`ife_jax.entropy_scores`).
      bn_momentum: decay of BatchNorm's running averages, in [0, 1) (default 0.9, PyTorch's
        0.1). With small batches a decay closer to 1 averages the statistics over more of
        them, so that evaluation does not follow the last few batches.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); param_dtype: parameter dtype.

    Call: ``(B, H, W, C) -> (B, H, W, num_classes)`` logits; H and W divisible by 16.
    ``train=True`` uses batch statistics (pass ``mutable=["batch_stats"]``).
    """

    num_classes: int = 1
    ife: str | None = None
    ratios: tuple[float, float] = (0.5, 0.5)
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    entropy_mode: str = "paper"
    bins: int = 256
    bn_momentum: float = BN_MOMENTUM
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        """The factor H and W must be divisible by."""
        return 2 ** (len(self.widths) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_ife(self.ife, tuple(self.ratios), 2, name="UNet")
        if len(self.widths) != 5:
            raise ValueError(f"UNet: widths must have 5 entries; got {self.widths!r}.")
        check_input(x, stride=self.stride, name="UNet")
        check_bn_momentum(self.bn_momentum, name="UNet")
        return unet_body(self, x, train, spatial_dims=2, entropy_mode=self.entropy_mode)


def unet_body(module: nn.Module, x: jax.Array, train: bool, *, spatial_dims: int, **ife_options):
    """The UNet of ``module`` (its ``widths``, ``ife``, ``ratios``, ``bins``, ``num_classes``,
    ``bn_momentum``, ``dtype``, ``param_dtype``) on 2-D or 3-D inputs, called from its compact
    ``__call__``: the encoder, IFE on the skips c2 and c3 (none where the ratio is 0;
    ``ife_options`` go to :class:`IFE`), the decoder and the 1x1 head. ``UNet`` and ``UNet3D``
    differ only in ``spatial_dims`` and their IFE options."""
    n = spatial_dims
    kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
    bn = dict(bn_momentum=module.bn_momentum)
    x = x.astype(module.dtype)

    skips = []
    for i, width in enumerate(module.widths):
        if i:
            x = max_pool(x, 2)
        x = DoubleConv(width, spatial_dims=n, name=f"down{i + 1}", **kw, **bn)(x, train)
        skips.append(x)

    if module.ife is not None:
        for level, ratio in ((1, module.ratios[0]), (2, module.ratios[1])):  # c2, c3
            if ratio == 0:
                continue
            skips[level] = IFE(
                criterion=module.ife,
                ratio=float(ratio),
                order="raw_first",
                bins=module.bins,
                name=f"ife_c{level + 1}",
                **ife_options,
            )(skips[level], lazy=True)

    x = skips[-1]
    for j, level in enumerate(range(len(module.widths) - 2, -1, -1)):
        width = module.widths[level]
        x = ConvTranspose(
            width, (2,) * n, strides=(2,) * n, kernel_init=conv_init, name=f"up{j + 1}", **kw
        )(x)
        x = concat_channels(skips[level], x)
        x = DoubleConv(width, spatial_dims=n, name=f"dec{j + 1}", **kw, **bn)(x, train)

    return Conv(module.num_classes, (1,) * n, name="head", **kw)(x)
