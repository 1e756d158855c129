"""Keras 3 front end: the IFE layer, the UNet, the structure loss and the Dice metric.

Importing this package imports Keras; the JAX backend is the one the project tests most, and
the layer also runs on the TensorFlow and PyTorch backends through ``keras.ops``.
"""

from ife_jax.keras.layers import IFELayer
from ife_jax.keras.losses import Dice, StructureLoss
from ife_jax.keras.models import load_flax_unet_weights, unet

__all__ = [
    "Dice",
    "IFELayer",
    "StructureLoss",
    "load_flax_unet_weights",
    "unet",
]
