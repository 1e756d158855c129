"""Keras 3 front end: the IFE layer, the UNet, the structure loss, the Dice metric, and Flax
networks of this package as Keras models.

Importing this package imports Keras. ``IFELayer``, ``unet``, ``StructureLoss`` and ``Dice`` run
on every Keras backend (JAX through the pure functions of ``ife_jax``, TensorFlow and PyTorch
through ``keras.ops``); ``from_flax`` needs the JAX backend.
"""

from ife_jax.keras.export import FlaxModule, from_flax
from ife_jax.keras.layers import IFELayer
from ife_jax.keras.losses import Dice, StructureLoss
from ife_jax.keras.models import load_flax_unet_weights, unet

__all__ = [
    "Dice",
    "FlaxModule",
    "IFELayer",
    "StructureLoss",
    "from_flax",
    "load_flax_unet_weights",
    "unet",
]
