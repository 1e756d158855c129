"""Flax (Linen) modules: the IFE block and the segmentation networks that use it."""

from ife_jax.nn.deeplabv3plus import ASPP, DeepLabV3Plus
from ife_jax.nn.ife import IFE, enhanced_channels
from ife_jax.nn.nnunet import NNUNet
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
    "NNUNet",
    "Res2Net",
    "ResNet",
    "SINetV2",
    "UNet",
    "UNet3D",
    "enhanced_channels",
    "load_pretrained_backbone",
    "load_pretrained_res2net",
    "load_res2net_state_dict",
    "load_resnet_state_dict",
    "read_state_dict",
    "res2net_to_state_dict",
    "resnet_to_state_dict",
]

#: Planner names ``ife_jax.nn`` used to re-export; they live in ``ife_jax.nnunet.image_plans``.
_MOVED = (
    "Fingerprint",
    "NNUNetPlan",
    "compute_fingerprint",
    "format_plan",
    "plan_dataset",
    "plan_from_fingerprint",
)


def __getattr__(name):
    if name in _MOVED:
        import warnings

        from ife_jax.nnunet import image_plans

        warnings.warn(
            f"ife_jax.nn.{name} is deprecated; import it from ife_jax.nnunet.image_plans.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(image_plans, name)
    raise AttributeError(f"module 'ife_jax.nn' has no attribute {name!r}")
