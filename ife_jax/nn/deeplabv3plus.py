"""DeepLabV3+ on a torchvision-layout ResNet, with optional IFE in the decoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.concat import concat_channels
from ife_jax.nn.ife import IFE
from ife_jax.nn.layers import (
    ConvBNReLU,
    Dropout,
    Dtype,
    check_ife,
    check_input,
    conv,
    resize_bilinear_align_corners,
)
from ife_jax.nn.resnet import MULTI_GRID, RESNET_BLOCKS, ResNet


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, projected.

    Each branch is conv + BN + ReLU with ``features`` channels; the ``5 * features``
    concatenation is projected by 1x1 conv + BN + ReLU and dropout ``dropout``.
    """

    features: int = 256
    rates: tuple[int, int, int] = (6, 12, 18)
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        branches = [ConvBNReLU(self.features, 1, name="branch0", **kw)(x, train)]
        for i, rate in enumerate(self.rates):
            branches.append(
                ConvBNReLU(self.features, 3, dilation=rate, name=f"branch{i + 1}", **kw)(x, train)
            )
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = ConvBNReLU(self.features, 1, name="pool", **kw)(pooled, train)
        branches.append(jnp.broadcast_to(pooled, branches[0].shape))
        y = ConvBNReLU(self.features, 1, name="project", **kw)(
            jnp.concatenate(branches, axis=-1), train
        )
        return Dropout(self.dropout, deterministic=not train)(y)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (Chen et al. 2018) with Instructive Feature Enhancement in the decoder.

    ResNet backbone (torchvision layout) at ``output_stride`` 16 or 8, layer4 with the
    multi-grid dilations of the reference (2, 4, 8 at stride 16; 4, 8, 16 at 8); ASPP with dilations
    6/12/18 (doubled at stride 8). Decoder: layer1 -> 1x1 conv to 48 + BN + ReLU (low level);
    with ``ife`` set, IFE(``ratios[0]``) on the low-level features and IFE(``ratios[1]``) on
    the ASPP output, both ``[top_k(f), f]`` (selected first); the ASPP output is upsampled
    bilinearly (corners aligned) to the low-level size, concatenated ``[aspp, low]``, then
    3x3 conv 256 + BN + ReLU + dropout 0.5, 3x3 conv 256 + BN + ReLU + dropout 0.1, 1x1 conv
    to the logits and a bilinear upsampling to the input size. IFE changes only the first
    decoder conv's input, ``48 (1 + r0) + 256 (1 + r1)`` channels instead of 304. A ratio of 0
    leaves that input without IFE: ``ratios=(0.75, 0.0)`` (the authors' test script) enhances
    the low-level features only.

    Attributes:
      num_classes: logit channels.
      backbone: ``"resnet50"`` or ``"resnet101"``.
      output_stride: 16 or 8.
      ife: ``None``, ``"curvature"`` or ``"entropy"``.
      ratios: (r0, r1) for the low-level and the ASPP features, each in [0, 1] (0: no IFE there).
      entropy_mode, bins: passed to the entropy criterion.
      base_width: the backbone's first bottleneck width (64 for the real network).
      multi_grid: layer4's unit rates (:data:`~ife_jax.nn.resnet.MULTI_GRID`, the reference's),
        or ``None`` for torchvision's dilation layout (1, 2, 2 at stride 16), e.g. to match a
        torchvision segmentation model. Either way the parameters are the same.
      aspp_features, low_level_features, decoder_features: 256, 48, 256 in the reference.
      dtype: compute dtype; param_dtype: parameter dtype.

    Call: ``(B, H, W, C) -> (B, H, W, num_classes)`` logits, H and W divisible by
    ``output_stride``. ``train=True`` needs ``rngs={"dropout": key}`` and
    ``mutable=["batch_stats"]``.
    """

    num_classes: int = 1
    backbone: str = "resnet50"
    output_stride: int = 16
    ife: str | None = None
    ratios: tuple[float, float] = (0.75, 0.75)
    entropy_mode: str = "paper"
    bins: int = 256
    base_width: int = 64
    multi_grid: tuple[int, ...] | None = MULTI_GRID
    aspp_features: int = 256
    low_level_features: int = 48
    decoder_features: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        """The factor H and W must be divisible by."""
        return self.output_stride

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        name = "DeepLabV3Plus"
        check_ife(self.ife, tuple(self.ratios), 2, name=name)
        if self.backbone not in RESNET_BLOCKS:
            raise ValueError(
                f"{name}: backbone must be one of {sorted(RESNET_BLOCKS)}; got {self.backbone!r}."
            )
        if self.output_stride not in (8, 16):
            raise ValueError(f"{name}: output_stride must be 8 or 16; got {self.output_stride!r}.")
        check_input(x, stride=self.stride, name=name)
        if self.ife is not None and self.ratios[1] > 0 and min(x.shape[1:3]) < 3 * self.stride:
            raise ValueError(
                f"{name}: with IFE the input must be at least {3 * self.stride} pixels on each "
                f"side (IFE needs 3 x 3 ASPP features); got {x.shape[1]} x {x.shape[2]}."
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        size = x.shape[1:3]
        x = x.astype(self.dtype)

        low, _, _, deep = ResNet(
            self.backbone,
            self.output_stride,
            self.base_width,
            multi_grid=None if self.multi_grid is None else tuple(self.multi_grid),
            name="backbone",
            **kw,
        )(x, train)
        scale = 16 // self.output_stride
        aspp = ASPP(
            self.aspp_features, rates=(6 * scale, 12 * scale, 18 * scale), name="aspp", **kw
        )(deep, train)
        low = ConvBNReLU(self.low_level_features, 1, name="low_level", **kw)(low, train)

        if self.ife is not None:
            ife = dict(
                criterion=self.ife, order="selected_first", bins=self.bins,
                entropy_mode=self.entropy_mode,
            )  # fmt: skip
            if self.ratios[0] > 0:
                low = IFE(ratio=float(self.ratios[0]), name="ife_low", **ife)(low, lazy=True)
            if self.ratios[1] > 0:
                aspp = IFE(ratio=float(self.ratios[1]), name="ife_aspp", **ife)(aspp)

        aspp = resize_bilinear_align_corners(aspp, low.shape[1:3])
        y = concat_channels(aspp, low)
        y = ConvBNReLU(self.decoder_features, 3, name="decoder1", **kw)(y, train)
        y = Dropout(0.5, deterministic=not train)(y)
        y = ConvBNReLU(self.decoder_features, 3, name="decoder2", **kw)(y, train)
        y = Dropout(0.1, deterministic=not train)(y)
        y = conv(self.num_classes, 1, use_bias=True, name="head", **kw)(y)
        return resize_bilinear_align_corners(y, size)
