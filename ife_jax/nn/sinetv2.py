"""SINetV2 (Fan et al., "Concealed Object Detection", TPAMI 2022) with optional IFE.

Architecture (NHWC, flax.linen):

* a Res2Net-50 v1b (26w x 4s) backbone (:class:`~ife_jax.nn.res2net.Res2Net`);
* three texture-enhanced modules (TEM, receptive-field blocks) reducing the stage 2-4 features
  (512, 1024, 2048 channels at strides 8, 16, 32) to ``channels`` (32);
* the neighbour connection decoder (NCD) fusing the three into a coarse map ``S_g`` at
  stride 8;
* three reverse stages, deep to shallow, each refining the previous map with three
  group-reversal attention (GRA) blocks of 1, ``channels / 8`` and ``channels`` groups.

With ``ife`` set, IFE (ratios ``r`` per TEM output, selected channels first as the reference
does) enhances the three TEM outputs, and only the reverse stages consume the enhanced
features, through a new 3x3 convolution from ``channels + int(r * channels)`` back to
``channels``; the NCD keeps the raw features, so ``S_g`` does not depend on IFE. A ratio of
0 switches IFE off at that TEM output: its reverse stage then takes the raw features directly,
without the extra convolution.

Outputs (logits, all at input resolution): ``(S_g, S_5, S_4, S_3)`` in training mode (the
loss is summed over all four, weights in :attr:`SINetV2.output_weights`), the final ``S_3``
only in evaluation mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.conv import Conv
from ife_jax.nn.ife import IFE
from ife_jax.nn.layers import Dtype, batch_norm, check_ife, resize_bilinear_align_corners
from ife_jax.nn.res2net import RES2NET50_BLOCKS, Res2Net

#: Default IFE ratios for the TEM outputs of stages 2, 3 and 4 (the reference's).
SINET_RATIOS = (0.75, 0.75, 1.0)


def _resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize with half-pixel centres and no anti-aliasing.

    This is PyTorch's ``interpolate(mode="bilinear", align_corners=False)``, which SINetV2 uses
    between stages (also when shrinking ``S_g`` by 4).
    """
    if x.shape[1:3] == tuple(size):
        return x
    return jax.image.resize(
        x, (x.shape[0], *size, x.shape[3]), method="linear", antialias=False
    ).astype(x.dtype)


class ConvBN(nn.Module):
    """``conv (no bias, kh x kw, dilation, 'same' padding) -> BatchNorm``, no activation.

    SINetV2's basic convolution: the activation is left to the caller (the TEM adds one after
    its residual sum; the NCD has none).
    """

    features: int
    kernel: tuple[int, int] = (3, 3)
    dilation: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kh, kw = self.kernel
        d = self.dilation
        x = Conv(
            self.features,
            (kh, kw),
            kernel_dilation=(d, d),
            padding=((d * (kh - 1) // 2,) * 2, (d * (kw - 1) // 2,) * 2),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        return batch_norm(train, self.dtype, self.param_dtype, name="bn")(x)


class TEM(nn.Module):
    """Texture-enhanced module: four receptive-field branches and a projected residual.

    Branch 0 is a 1x1 convolution; branch ``k`` (1..3) is 1x1, 1 x n, n x 1 and a 3x3 with
    dilation n, for n = 2k + 1. The branches are concatenated, fused by a 3x3 convolution and
    added to a 1x1 projection of the input, then ReLU: ``(B, H, W, C) -> (B, H, W, features)``.
    """

    features: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        f, kw = self.features, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        branches = [ConvBN(f, (1, 1), name="branch0_0", **kw)(x, train)]
        for k in (1, 2, 3):
            n = 2 * k + 1
            y = ConvBN(f, (1, 1), name=f"branch{k}_0", **kw)(x, train)
            y = ConvBN(f, (1, n), name=f"branch{k}_1", **kw)(y, train)
            y = ConvBN(f, (n, 1), name=f"branch{k}_2", **kw)(y, train)
            y = ConvBN(f, (3, 3), dilation=n, name=f"branch{k}_3", **kw)(y, train)
            branches.append(y)
        y = ConvBN(f, (3, 3), name="conv_cat", **kw)(jnp.concatenate(branches, -1), train)
        return nn.relu(y + ConvBN(f, (1, 1), name="conv_res", **kw)(x, train))


class NCD(nn.Module):
    """Neighbour connection decoder: (deep, middle, shallow) features -> one logit map.

    With ``up(a, b)`` = ``a`` bilinearly resized (corners aligned) to ``b``'s size:
    ``m = conv1(up(d, m)) * m``; ``s = conv2(up(m', s)) * conv3(up(m, s)) * s`` (``m'`` the new
    ``m``); ``m2 = concat_conv2([m', conv4(up(d, m))])``; ``s2 = concat_conv3([s',
    conv5(up(m2, s))])``; out = 1x1 conv(conv4(s2)). Output at the shallow features' size.
    """

    channels: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deep, middle, shallow, train: bool = False) -> jax.Array:
        c, kw = self.channels, dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def up(a, b):
            return resize_bilinear_align_corners(a, b.shape[1:3])

        def cbn(features, name):
            return lambda t: ConvBN(features, (3, 3), name=name, **kw)(t, train)

        m1 = cbn(c, "conv_upsample1")(up(deep, middle)) * middle
        s1 = (
            cbn(c, "conv_upsample2")(up(m1, shallow))
            * cbn(c, "conv_upsample3")(up(middle, shallow))
            * shallow
        )
        m2 = jnp.concatenate([m1, cbn(c, "conv_upsample4")(up(deep, middle))], -1)
        m2 = cbn(2 * c, "conv_concat2")(m2)
        s2 = jnp.concatenate([s1, cbn(2 * c, "conv_upsample5")(up(m2, shallow))], -1)
        s2 = cbn(3 * c, "conv_concat3")(s2)
        s2 = cbn(3 * c, "conv4")(s2)
        return Conv(1, (1, 1), name="conv5", **kw)(s2)


class GRA(nn.Module):
    """Group-reversal attention: ``x`` split into ``groups`` chunks, each followed by ``y``.

    ``x <- x + ReLU(conv3x3([x_1, y, x_2, y, ..., x_g, y]))``, ``y <- y + conv3x3(x)``.
    ``(B, H, W, C), (B, H, W, 1) -> (B, H, W, C), (B, H, W, 1)``.
    """

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, h, w, c = x.shape
        g = self.groups
        if c % g:
            raise ValueError(f"GRA: {c} channels cannot be split into {g} groups.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xs = x.reshape(b, h, w, g, c // g)
        ys = jnp.broadcast_to(y[..., None, :].astype(x.dtype), (b, h, w, g, 1))
        cat = jnp.concatenate([xs, ys], -1).reshape(b, h, w, c + g)
        x = x + nn.relu(Conv(c, (3, 3), padding=1, name="conv", **kw)(cat))
        y = y + Conv(1, (3, 3), padding=1, name="score", **kw)(x)
        return x, y


class ReverseStage(nn.Module):
    """``y -> 1 - sigmoid(y)``, then three GRA blocks (1, channels/8, channels groups).

    With ``enhanced`` the input has IFE channels appended and is first mapped back to
    ``channels`` by a 3x3 convolution (with bias). Returns the refinement of ``y``.
    """

    channels: int = 32
    enhanced: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.channels
        if self.enhanced:
            x = Conv(c, (3, 3), padding=1, name="first_conv", **kw)(x)
        y = 1.0 - jax.nn.sigmoid(y)
        x, y = GRA(1, name="weak_gra", **kw)(x, y)
        x, y = GRA(c // 8, name="medium_gra", **kw)(x, y)
        _, y = GRA(c, name="strong_gra", **kw)(x, y)
        return y


class SINetV2(nn.Module):
    """SINetV2 on a Res2Net-50 v1b backbone, with optional IFE before the reverse stages.

    Attributes:
      num_classes: must be 1 (SINetV2's maps are single-channel logits).
      ife: ``None``, ``"curvature"`` or ``"entropy"``.
      ratios: IFE ratios for the TEM outputs of stages 2, 3 and 4 (shallow to deep), each in
        [0, 1]. A ratio of 1.0 appends all channels, reordered by score; 0 means no IFE there.
      channels: TEM/decoder width (32; a multiple of 8).
      entropy_mode: see :func:`ife_jax.entropy_scores`.
      blocks, planes: backbone size (Res2Net-50: (3, 4, 6, 3), 64); smaller for tests.

    Call: ``model.apply(variables, images, train=False)`` with ``images`` (B, H, W, C), H and W
    preferably multiples of 32 (and at least 65 with IFE, which needs 3 x 3 stride-32 maps).
    Training: a tuple of four (B, H, W, 1) logit maps ``(S_g, S_5, S_4, S_3)`` (use
    ``mutable=["batch_stats"]``). Evaluation: ``S_3`` only.

    Example:
      >>> model = SINetV2(ife="curvature")
      >>> x = jnp.zeros((1, 352, 352, 3))
      >>> variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)  # rbg: fast init
    """

    num_classes: int = 1
    ife: str | None = None
    ratios: Sequence[float] = SINET_RATIOS
    channels: int = 32
    entropy_mode: str = "paper"
    blocks: Sequence[int] = RES2NET50_BLOCKS
    planes: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def output_weights(self) -> tuple[float, ...]:
        """Loss weights of the four training outputs: all 1 (the reference sums the losses)."""
        return (1.0, 1.0, 1.0, 1.0)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False):
        if self.num_classes != 1:
            raise ValueError(
                f"SINetV2 predicts one map; num_classes must be 1, got {self.num_classes}."
            )
        if self.channels % 8 or self.channels < 8:
            raise ValueError(f"channels must be a positive multiple of 8; got {self.channels}.")
        if images.ndim != 4:
            raise ValueError(f"SINetV2 expects NHWC images (B, H, W, C); got shape {images.shape}.")
        check_ife(self.ife, tuple(self.ratios), 3, name="SINetV2")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        size = images.shape[1:3]
        backbone = Res2Net(blocks=tuple(self.blocks), planes=self.planes, name="backbone", **kw)
        _, x2, x3, x4 = backbone(images, train)
        if self.ife is not None and min(x4.shape[1:3]) < 3:
            raise ValueError(
                f"SINetV2 with IFE needs the stride-32 features to be at least 3 x 3 (inputs of "
                f"65 x 65 pixels or more); got {size[0]} x {size[1]} images."
            )
        t2 = TEM(self.channels, name="rfb2_1", **kw)(x2, train)
        t3 = TEM(self.channels, name="rfb3_1", **kw)(x3, train)
        t4 = TEM(self.channels, name="rfb4_1", **kw)(x4, train)

        s_g = NCD(self.channels, name="NCD", **kw)(t4, t3, t2, train)

        def enhance(t, ratio, name):
            if self.ife is None or ratio == 0:
                return t
            return IFE(
                criterion=self.ife,
                ratio=float(ratio),
                order="selected_first",
                entropy_mode=self.entropy_mode,
                name=name,
            )(t)

        e2 = enhance(t2, self.ratios[0], "ife2")
        e3 = enhance(t3, self.ratios[1], "ife3")
        e4 = enhance(t4, self.ratios[2], "ife4")

        def stage(ratio, name):
            enhanced = self.ife is not None and ratio > 0
            return ReverseStage(self.channels, enhanced=enhanced, name=name, **kw)

        guidance = _resize(s_g, t4.shape[1:3])
        s_5 = stage(self.ratios[2], "RS5")(e4, guidance) + guidance
        guidance = _resize(s_5, t3.shape[1:3])
        s_4 = stage(self.ratios[1], "RS4")(e3, guidance) + guidance
        guidance = _resize(s_4, t2.shape[1:3])
        s_3 = stage(self.ratios[0], "RS3")(e2, guidance) + guidance

        if not train:
            return _resize(s_3, size)
        return tuple(_resize(s, size) for s in (s_g, s_5, s_4, s_3))
