"""Flax (Linen) modules: the IFE block and the segmentation networks that use it."""

from ife_jax.nn.deeplabv3plus import ASPP, DeepLabV3Plus
from ife_jax.nn.ife import IFE, enhanced_channels
from ife_jax.nn.nnunet import NNUNet
from ife_jax.nn.nnunet_plan import (
    Fingerprint,
    NNUNetPlan,
    compute_fingerprint,
    format_plan,
    plan_dataset,
    plan_from_fingerprint,
)
from ife_jax.nn.pretrained import (
    load_pretrained_backbone,
    load_resnet_state_dict,
    read_state_dict,
    resnet_to_state_dict,
)
from ife_jax.nn.res2net import (
    Res2Net,
    load_pretrained_res2net,
    load_res2net_state_dict,
    res2net_to_state_dict,
)
from ife_jax.nn.resnet import ResNet
from ife_jax.nn.sinetv2 import SINetV2
from ife_jax.nn.unet import UNet
from ife_jax.nn.unet3d import UNet3D

__all__ = [
    "ASPP",
    "IFE",
    "DeepLabV3Plus",
    "Fingerprint",
    "NNUNet",
    "NNUNetPlan",
    "Res2Net",
    "ResNet",
    "SINetV2",
    "UNet",
    "UNet3D",
    "compute_fingerprint",
    "enhanced_channels",
    "format_plan",
    "load_pretrained_backbone",
    "load_pretrained_res2net",
    "load_res2net_state_dict",
    "load_resnet_state_dict",
    "plan_dataset",
    "plan_from_fingerprint",
    "read_state_dict",
    "res2net_to_state_dict",
    "resnet_to_state_dict",
]
