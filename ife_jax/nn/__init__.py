"""Flax (Linen) modules: the IFE block and the segmentation networks that use it."""

from ife_jax.nn.deeplabv3plus import ASPP, DeepLabV3Plus
from ife_jax.nn.ife import IFE, enhanced_channels
from ife_jax.nn.pretrained import (
    load_pretrained_backbone,
    load_resnet_state_dict,
    read_state_dict,
    resnet_to_state_dict,
)
from ife_jax.nn.resnet import ResNet
from ife_jax.nn.unet import UNet

__all__ = [
    "ASPP",
    "IFE",
    "DeepLabV3Plus",
    "ResNet",
    "UNet",
    "enhanced_channels",
    "load_pretrained_backbone",
    "load_resnet_state_dict",
    "read_state_dict",
    "resnet_to_state_dict",
]
