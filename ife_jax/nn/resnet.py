"""ResNet-50/101 in the torchvision layout (bottleneck v1.5), with dilation for stride 8/16.

The dilated stages follow torchvision's ``replace_stride_with_dilation`` by default; with
``multi_grid`` set, layer4 instead uses DeepLabV3's multi-grid unit rates times the stage
dilation (the layout the reference DeepLabV3+ trains). Dilation changes no parameter.

Submodule names follow torchvision's state-dict names so that ImageNet weights map one to one
(see :mod:`ife_jax.nn.pretrained`): ``conv1``, ``bn1``, ``layer{1..4}_{block}`` with
``conv1..3``, ``bn1..3`` and, in the first block of a stage, ``downsample_conv`` and
``downsample_bn`` (torchvision's ``layerX.Y.downsample.0`` and ``.1``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.layers import Dtype, batch_norm, conv

#: Bottleneck blocks per stage.
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
#: Which of layer2..layer4 trade their stride for dilation, per output stride.
DILATE_STAGES = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
#: DeepLabV3's multi-grid unit rates of layer4's three blocks (the reference DeepLabV3+'s).
MULTI_GRID = (1, 2, 4)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 width) with BN, residual add, ReLU."""

    width: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = conv(self.width, 1, name="conv1", **kw)(x)
        out = nn.relu(batch_norm(train, name="bn1", **kw)(out))
        out = conv(self.width, 3, stride=self.stride, dilation=self.dilation, name="conv2", **kw)(
            out
        )
        out = nn.relu(batch_norm(train, name="bn2", **kw)(out))
        out = conv(self.width * 4, 1, name="conv3", **kw)(out)
        out = batch_norm(train, name="bn3", **kw)(out)
        if self.downsample:
            x = conv(self.width * 4, 1, stride=self.stride, name="downsample_conv", **kw)(x)
            x = batch_norm(train, name="downsample_bn", **kw)(x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """torchvision ResNet-50/101 without the classifier: returns the four stage outputs.

    Attributes:
      depth: ``"resnet50"`` or ``"resnet101"``.
      output_stride: 32 (classification layout), 16 (layer4 dilated) or 8 (layers 3-4 dilated),
        with torchvision's ``replace_stride_with_dilation`` semantics.
      base_width: width of the first stage's bottleneck (64 in torchvision; smaller for tests).
      multi_grid: ``None`` for torchvision's layout, where a dilated stage's first block keeps
        the previous dilation and the others take the stage's (layer4 at output stride 16:
        1, 2, 2). Otherwise one unit rate per layer4 block, multiplied by layer4's stage
        dilation (2 at output stride 16, 4 at 8): :data:`MULTI_GRID` gives 2, 4, 8 at output
        stride 16 and 4, 8, 16 at 8. Stride 32 has no dilated stage and ignores it.

    Call: ``(B, H, W, C) -> (layer1, layer2, layer3, layer4)``, strides 4, 8, 16 and 32 (or
    less when dilated), channels ``4 * base_width * (1, 2, 4, 8)``.
    """

    depth: str = "resnet50"
    output_stride: int = 16
    base_width: int = 64
    multi_grid: tuple[int, ...] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def block_dilations(self) -> tuple[tuple[int, ...], ...]:
        """The 3x3 dilation of every bottleneck, per stage: ``((layer1...), ..., (layer4...))``."""
        if self.depth not in RESNET_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)}; got {self.depth!r}.")
        if self.output_stride not in DILATE_STAGES:
            raise ValueError(f"output_stride must be 8, 16 or 32; got {self.output_stride!r}.")
        blocks = RESNET_BLOCKS[self.depth]
        if self.multi_grid is not None and (
            len(self.multi_grid) != blocks[3] or not all(int(g) >= 1 for g in self.multi_grid)
        ):
            raise ValueError(
                f"multi_grid must hold {blocks[3]} unit rates >= 1 (one per layer4 block); "
                f"got {self.multi_grid!r}."
            )
        dilate = (False,) + DILATE_STAGES[self.output_stride]
        dilation, out = 1, []
        for stage, (n, dil) in enumerate(zip(blocks, dilate, strict=True)):
            previous = dilation
            if dil:
                dilation *= 2
            rates = (previous,) + (dilation,) * (n - 1)
            if stage == 3 and dil and self.multi_grid is not None:
                rates = tuple(int(g) * dilation for g in self.multi_grid)
            out.append(rates)
        return tuple(out)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        all_rates = self.block_dilations()  # validates depth, output_stride and multi_grid
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.base_width, 7, stride=2, name="conv1", **kw)(x)
        x = nn.relu(batch_norm(train, name="bn1", **kw)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        dilate = (False,) + DILATE_STAGES[self.output_stride]
        features = []
        for stage, (rates, dil) in enumerate(zip(all_rates, dilate, strict=True)):
            width = self.base_width * 2**stage
            stride = 1 if stage == 0 or dil else 2
            for b, rate in enumerate(rates):
                x = Bottleneck(
                    width,
                    stride=stride if b == 0 else 1,
                    dilation=rate,
                    downsample=b == 0,
                    name=f"layer{stage + 1}_{b}",
                    **kw,
                )(x, train)
            features.append(x)
        return tuple(features)
