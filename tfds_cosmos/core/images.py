"""Image and mask reading for the builders: the functions of :mod:`ife_jax.data.images`.

The builders store exactly what :func:`ife_jax.data.images.read_image` returns, so a file reads
the same way when it is built into a dataset and when it is given to ``ife-jax predict``.
"""

from ife_jax.data.images import (
    IMAGE_EXTENSIONS,
    MaskInfo,
    UnreadableImageError,
    encode_png,
    open_image,
    read_image,
    read_mask,
    to_binary_mask,
    to_rgb8,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MaskInfo",
    "UnreadableImageError",
    "encode_png",
    "open_image",
    "read_image",
    "read_mask",
    "to_binary_mask",
    "to_rgb8",
]
