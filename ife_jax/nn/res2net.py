"""Res2Net-50 v1b (26w x 4s), the SINetV2 backbone, and its state-dict loader.

Res2Net (Gao et al., TPAMI 2021) replaces the 3x3 convolution of a ResNet bottleneck by
``scale`` groups of ``width`` channels processed hierarchically: group ``i`` is convolved
after adding the output of group ``i - 1``, which widens the receptive field inside one block.
The "v1b" variant has a deep stem (three 3x3 convolutions, 32-32-64 channels) and downsamples
the shortcut with an average pool followed by a stride-1 1x1 convolution.

Submodule names follow the public PyTorch layout so that ImageNet weights map one to one (see
:func:`load_res2net_state_dict`): ``conv1_0``, ``conv1_1``, ``conv1_3``, ``conv1_4``,
``conv1_6`` (the stem's ``conv1.{0,1,3,4,6}``), ``bn1``, ``layer{1..4}_{block}`` with
``conv1``, ``bn1``, ``convs_{i}``, ``bns_{i}``, ``conv3``, ``bn3`` and, in the first block of
a stage, ``downsample_conv`` / ``downsample_bn`` (``downsample.1`` / ``.2``; ``.0`` is the
parameter-free pool).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ife_jax.nn import pretrained
from ife_jax.nn.layers import Dtype, batch_norm, conv
from ife_jax.nn.pretrained import _leaves, _subtree

#: Bottleneck blocks per stage of Res2Net-50.
RES2NET50_BLOCKS = (3, 4, 6, 3)


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 -> ``scale`` hierarchical 3x3 groups -> 1x1 (x4), residual, ReLU.

    Attributes:
      planes: bottleneck planes; the output has ``4 * planes`` channels.
      stride: spatial stride of the 3x3 convolutions (and of the shortcut pool).
      first: first block of a stage ("stage" type): the groups are not chained, the last
        group is average-pooled (3x3, ``stride``, zero padding counted) instead of passed on,
        and the shortcut is projected.
      base_width: width of a group at ``planes = 64`` (26 for 26w); a group has
        ``floor(planes * base_width / 64)`` channels.
      scale: number of groups (4 for 4s).
    """

    planes: int
    stride: int = 1
    first: bool = False
    base_width: int = 26
    scale: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.scale < 2:
            raise ValueError(f"scale must be >= 2; got {self.scale}.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = int(math.floor(self.planes * (self.base_width / 64.0)))
        out = conv(width * self.scale, 1, name="conv1", **kw)(x)
        out = nn.relu(batch_norm(train, name="bn1", **kw)(out))
        groups = jnp.split(out, self.scale, axis=-1)
        outs, sp = [], None
        for i in range(self.scale - 1):
            sp = groups[i] if (i == 0 or self.first) else sp + groups[i]
            sp = conv(width, 3, stride=self.stride, name=f"convs_{i}", **kw)(sp)
            sp = nn.relu(batch_norm(train, name=f"bns_{i}", **kw)(sp))
            outs.append(sp)
        last = groups[-1]
        if self.first:
            s = self.stride
            last = nn.avg_pool(last, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))
        out = jnp.concatenate([*outs, last], axis=-1)
        out = conv(self.planes * 4, 1, name="conv3", **kw)(out)
        out = batch_norm(train, name="bn3", **kw)(out)
        if self.first:
            x = _shortcut_pool(x, self.stride)
            x = conv(self.planes * 4, 1, name="downsample_conv", **kw)(x)
            x = batch_norm(train, name="downsample_bn", **kw)(x)
        return nn.relu(out + x)


def _shortcut_pool(x: jax.Array, stride: int) -> jax.Array:
    """``AvgPool(stride, stride, ceil_mode=True, count_include_pad=False)`` of the v1b shortcut."""
    if stride == 1:
        return x
    ph, pw = -x.shape[1] % stride, -x.shape[2] % stride
    return nn.avg_pool(
        x,
        (stride, stride),
        strides=(stride, stride),
        padding=((0, ph), (0, pw)),
        count_include_pad=False,
    )


class Res2Net(nn.Module):
    """Res2Net v1b without the classifier: returns the four stage outputs.

    Attributes:
      blocks: bottleneck blocks per stage ((3, 4, 6, 3) for Res2Net-50).
      base_width, scale: 26 and 4 for the 26w x 4s variant.
      planes: planes of the first stage (64); stages use ``planes * (1, 2, 4, 8)``. Smaller
        values give tiny networks for tests.
      stem_width: channels of the first two stem convolutions (32); the third has ``planes``.

    Call: ``(B, H, W, C) -> (layer1, layer2, layer3, layer4)`` at strides 4, 8, 16 and 32, with
    ``4 * planes * (1, 2, 4, 8)`` channels (256, 512, 1024, 2048 for Res2Net-50).
    """

    blocks: Sequence[int] = RES2NET50_BLOCKS
    base_width: int = 26
    scale: int = 4
    planes: int = 64
    stem_width: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts; got {self.blocks!r}.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.stem_width, 3, stride=2, name="conv1_0", **kw)(x)
        x = nn.relu(batch_norm(train, name="conv1_1", **kw)(x))
        x = conv(self.stem_width, 3, name="conv1_3", **kw)(x)
        x = nn.relu(batch_norm(train, name="conv1_4", **kw)(x))
        x = conv(self.planes, 3, name="conv1_6", **kw)(x)
        x = nn.relu(batch_norm(train, name="bn1", **kw)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats = []
        for stage, n in enumerate(self.blocks):
            for b in range(n):
                x = Bottle2neck(
                    self.planes * 2**stage,
                    stride=2 if (stage > 0 and b == 0) else 1,
                    first=b == 0,
                    base_width=self.base_width,
                    scale=self.scale,
                    name=f"layer{stage + 1}_{b}",
                    **kw,
                )(x, train)
            feats.append(x)
        return tuple(feats)


# --------------------------------------------------------------------------- weights


def _torch_name(path: Sequence[str], collection: str) -> str:
    """Flax path inside the backbone -> name in the public Res2Net v1b state dict (its shortcut
    starts with an average pool, so the convolution and BatchNorm are ``downsample.1``/``.2``)."""
    return pretrained._torch_name(
        path,
        collection,
        downsample=("downsample.1", "downsample.2"),
        numbered=r"conv1|layer\d+|convs|bns",
    )


def res2net_to_state_dict(
    variables: Mapping, *, prefix: Sequence[str] = ("backbone",)
) -> dict[str, np.ndarray]:
    """The Res2Net under ``prefix`` as a PyTorch-layout state dict (weights OIHW, NumPy)."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, value in _leaves(_subtree(variables[collection], prefix, collection)):
            arr = np.asarray(value)
            if path[-1] == "kernel":
                arr = np.transpose(arr, (3, 2, 0, 1))
            out[_torch_name(path, collection)] = arr
    return out


def load_res2net_state_dict(
    variables: Mapping,
    state_dict: Mapping[str, Any],
    *,
    prefix: Sequence[str] = ("backbone",),
    ignore: Sequence[str] = pretrained.DEFAULT_IGNORE,
    strict: bool = True,
) -> dict:
    """Return ``variables`` with the Res2Net at ``prefix`` replaced by a PyTorch state dict.

    The names are those of the public Res2Net v1b code (``conv1.0.weight``,
    ``layer1.0.convs.0.weight``, ``layer2.0.downsample.1.weight``, ...). Convolution weights
    are transposed OIHW -> HWIO; BatchNorm running statistics go to ``batch_stats``; values are
    cast to the dtype of the parameters they replace. For a 1-channel model, 3-channel stem
    filters are summed (exact for grey images replicated to RGB).

    Args:
      variables: the model's ``{"params": ..., "batch_stats": ...}`` (e.g. from ``init``).
      state_dict: ``{name: array}``.
      prefix: where the Res2Net sits (``("backbone",)`` in :class:`~ife_jax.nn.SINetV2`,
        ``()`` for a bare :class:`Res2Net`).
      ignore: regular expressions of names to skip (BatchNorm counters, the classifier).
      strict: raise on missing or unexpected names; shape mismatches always raise.

    Returns:
      A new variables dict (the input is not modified).

    Raises:
      ValueError: listing every missing name, unexpected name and shape mismatch.
    """
    return pretrained.load_state_dict(
        variables,
        state_dict,
        torch_name=_torch_name,
        stem="conv1.0.weight",
        network="Res2Net",
        prefix=prefix,
        ignore=ignore,
        strict=strict,
    )


def load_pretrained_res2net(variables: Mapping, path: str | os.PathLike, **kwargs) -> dict:
    """Read a ``.safetensors`` / ``.npz`` / ``.pth`` state dict and :func:`load_res2net_state_dict`.

    Nothing is downloaded: pass the file of ImageNet weights you already have (the public
    ``res2net50_v1b_26w_4s`` checkpoint).
    """
    return load_res2net_state_dict(variables, pretrained.read_state_dict(path), **kwargs)
