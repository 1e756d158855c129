"""Flax (Linen) modules: the IFE block and the segmentation networks that use it."""

from ife_jax.nn.ife import IFE, enhanced_channels

__all__ = ["IFE", "enhanced_channels"]
