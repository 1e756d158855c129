"""Builds the network a ``TrainConfig`` names (the only place that maps names to classes)."""

from __future__ import annotations

import jax.numpy as jnp

from ife_jax.train.config import TrainConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: TrainConfig, *, plan=None):
    """The Linen module for ``config`` (one logit channel, compute dtype from ``precision``).

    Args:
      config: the training configuration (``model``, ``ife``, ``ratios``, ``model_kwargs``).
      plan: the nnUNet plan (required for ``model="nnunet"``; it fixes the stages, widths,
        IFE levels and ratios, and has one output map for dichotomous segmentation).
    """
    kwargs = dict(config.model_kwargs)
    kwargs.update(num_classes=1, ife=config.ife, dtype=_DTYPES[config.precision])
    if config.ratios is not None:
        kwargs["ratios"] = tuple(config.ratios)
    if config.model == "unet":
        from ife_jax.nn.unet import UNet

        return UNet(**kwargs)
    if config.model == "deeplabv3plus":
        from ife_jax.nn.deeplabv3plus import DeepLabV3Plus

        return DeepLabV3Plus(**kwargs)
    if config.model == "sinetv2":
        from ife_jax.nn.sinetv2 import SINetV2

        return SINetV2(**kwargs)
    if config.model == "nnunet":
        from ife_jax.nn.nnunet import NNUNet

        if plan is None:
            raise ValueError("model='nnunet' needs a plan (see `ife-jax plan`)")
        if config.ratios is not None:
            raise ValueError("ratios: nnUNet takes its IFE ratios from the plan (ife_ratios)")
        kwargs.pop("num_classes")
        return NNUNet(plan=plan, **kwargs)
    raise ValueError(f"model={config.model!r} is not a known network")
