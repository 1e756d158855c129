"""The nnU-Net network ("PlainConvUNet"), 2-D or 3-D, built from a plan, with IFE on skips.

Every convolution block is ``k conv (bias) -> instance norm (affine, eps 1e-5) -> leaky ReLU
(0.01)`` with the plan's per-stage kernel ``k`` (3 x 3 or 3 x 3 x 3 unless the plan says
otherwise, e.g. 1 x 3 x 3 on the coarse axis of anisotropic volumes). The number of spatial
axes is the length of the strides. Encoder stage ``s`` has ``encoder_convs`` blocks, the first
with the plan's stride
(strided convolution instead of pooling). Decoder stage ``s`` (deep to shallow) up-samples the
stage below with a transposed convolution (kernel = stride), concatenates the skip feature of
encoder stage ``s`` (``[up, skip]``), and applies ``decoder_convs`` blocks; a 1x1 convolution
head gives the logits. With ``ife`` set, the skips listed in ``plan.ife_levels`` are enhanced
first (raw channels first, then the selected ones, as in the reference UNet), so that decoder
stage's first convolution takes ``2 F + int(r F)`` channels; a ratio of 0 leaves that skip
without IFE.

Deep supervision follows nnU-Net: decoder stage ``i`` has the loss weight ``2^-i``, the
coarsest decoder stage gets 0, and the weights are normalised to sum to 1. The zero-weight
stage has no head here (nnU-Net computes and discards it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ife_jax.nn.concat import concat_channels
from ife_jax.nn.conv import Conv, ConvTranspose
from ife_jax.nn.ife import IFE
from ife_jax.nn.init import variance_scaling
from ife_jax.nn.layers import Dtype
from ife_jax.nnunet.image_plans import NNUNetPlan  # the field's type (model files rebuild it)

#: He-normal initialisation for leaky ReLU (slope 0.01), as nnU-Net initialises convolutions.
he_init = variance_scaling(2.0 / (1.0 + 0.01**2), "fan_in", "normal")


def deep_supervision_weights(num_stages: int, deep_supervision: bool = True) -> tuple[float, ...]:
    """nnU-Net's loss weights of the outputs that have a non-zero weight, full resolution first.

    With ``S`` stages there are ``S - 1`` decoder outputs weighted ``2^-i``; the coarsest is
    set to 0 (and not returned), the rest normalised to sum to 1. Without deep supervision, or
    with fewer than three stages, only the main output remains: ``(1.0,)``.
    """
    n = num_stages - 2 if deep_supervision else 1
    if n <= 1:
        return (1.0,)
    w = [0.5**i for i in range(n)]
    total = sum(w)
    return tuple(v / total for v in w)


class ConvNormAct(nn.Module):
    """``conv k (bias, stride, 'same' padding) -> InstanceNorm (affine) -> LeakyReLU(0.01)``."""

    features: int
    stride: tuple[int, ...] = (1, 1)
    kernel: tuple[int, ...] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = tuple(self.kernel or (3,) * len(self.stride))
        x = Conv(
            self.features,
            kernel,
            strides=tuple(self.stride),
            padding=tuple((k // 2, k // 2) for k in kernel),
            kernel_init=he_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        norm = nn.InstanceNorm(
            epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name="norm"
        )
        x = norm(x)
        return nn.leaky_relu(x, 0.01)


class NNUNet(nn.Module):
    """A 2-D or 3-D nnU-Net from a plan.

    The plan is any object with the fields of :class:`~ife_jax.nnunet.image_plans.NNUNetPlan` that
    describe the network (``features``, ``strides``, ``encoder_convs``, ``decoder_convs``,
    ``in_channels``, ``num_classes``, ``ife_levels``, ``ife_ratios``, ``deep_supervision``,
    ``total_stride``, ``num_stages``) and optionally ``kernel_sizes`` (one per stage): the 2-D
    plan of :mod:`ife_jax.nnunet.image_plans` or a configuration of :mod:`ife_jax.nnunet.plans`.
    Volumes are (B, D, H, W, C) when the strides have three entries.

    Attributes:
      plan: the configuration (stages, widths, strides, convolutions, IFE levels and ratios).
      ife: ``None``, ``"curvature"`` or ``"entropy"``: enhance the skips in ``plan.ife_levels``.
      entropy_mode: see :func:`ife_jax.entropy_scores`.

    Call: ``model.apply(variables, images, train=False)``, ``images`` (B, H, W,
    ``plan.in_channels``). Training needs H and W divisible by ``plan.total_stride`` and returns
    a tuple ``(main, *deep)``: the main logits (B, H, W, num_classes), then the deep-supervision
    logits at 1/2, 1/4, ... resolution (per the strides), weighted by :attr:`output_weights`.
    Evaluation zero-pads the input to a multiple of the total stride, and returns the main
    logits cropped back to (B, H, W, num_classes). No batch statistics: nothing is mutable.
    """

    plan: NNUNetPlan
    ife: str | None = None
    entropy_mode: str = "paper"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def output_weights(self) -> tuple[float, ...]:
        """Loss weights of the training outputs (nnU-Net's normalised ``2^-i``)."""
        return deep_supervision_weights(self.plan.num_stages, self.plan.deep_supervision)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False):
        plan = self.plan
        if self.ife not in (None, "curvature", "entropy"):
            raise ValueError(
                f"NNUNet: ife must be None, 'curvature' or 'entropy'; got {self.ife!r}."
            )
        dims = len(plan.strides[0])
        axes = "B, D, H, W" if dims == 3 else "B, H, W"
        if images.ndim != dims + 2 or images.shape[-1] != plan.in_channels:
            raise ValueError(
                f"NNUNet expects ({axes}, {plan.in_channels}) inputs; got shape {images.shape}."
            )
        size = images.shape[1:-1]
        pad = tuple(-n % t for n, t in zip(size, plan.total_stride, strict=True))
        if any(pad):
            if train:
                raise ValueError(
                    f"NNUNet training needs spatial sizes divisible by {plan.total_stride}; "
                    f"got {size}."
                )
            images = jnp.pad(images, ((0, 0), *((0, p) for p in pad), (0, 0)))
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kernels = getattr(plan, "kernel_sizes", None) or ((3,) * dims,) * plan.num_stages
        ones = (1,) * dims

        x, skips = images.astype(self.dtype), []
        for s, (f, stride) in enumerate(zip(plan.features, plan.strides, strict=True)):
            for i in range(plan.encoder_convs):
                x = ConvNormAct(
                    f,
                    tuple(stride) if i == 0 else ones,
                    tuple(kernels[s]),
                    name=f"enc{s}_{i}",
                    **kw,
                )(x)
            skips.append(x)

        outputs = {}
        x = skips.pop()
        for s in range(plan.num_stages - 2, -1, -1):
            f, stride = plan.features[s], tuple(plan.strides[s + 1])
            x = ConvTranspose(
                f, stride, strides=stride, padding="VALID", kernel_init=he_init, name=f"up{s}", **kw
            )(x)
            skip = skips.pop()
            r = plan.ife_ratios[plan.ife_levels.index(s)] if s in plan.ife_levels else 0.0
            if self.ife is not None and r > 0:
                if min(skip.shape[1:-1]) < 3:
                    raise ValueError(
                        f"NNUNet: IFE on skip level {s} needs its feature map to be at least 3 "
                        f"along every axis; got {skip.shape[1:-1]} (a larger input or other "
                        "ife_levels)."
                    )
                ife = IFE(self.ife, r, "raw_first", entropy_mode=self.entropy_mode, name=f"ife{s}")
                skip = ife(skip, lazy=True)
            x = concat_channels(x, skip)
            for i in range(plan.decoder_convs):
                x = ConvNormAct(f, ones, tuple(kernels[s]), name=f"dec{s}_{i}", **kw)(x)
            if s < len(self.output_weights):  # a head exactly where the loss weight is non-zero
                # Always computed so that parameters exist in both modes; unused ones are
                # removed by XLA.
                outputs[s] = Conv(
                    plan.num_classes, ones, kernel_init=he_init, name=f"head{s}", **kw
                )(x)

        if not train:
            return outputs[0][(slice(None), *(slice(0, n) for n in size))]
        return tuple(outputs[s] for s in range(len(self.output_weights)))
