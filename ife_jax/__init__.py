"""ife-jax: Instructive Feature Enhancement for dichotomous medical image segmentation.

The IFE ops are re-exported here; models live in ``ife_jax.nn`` (Flax) and ``ife_jax.keras``
(Keras 3), metrics in ``ife_jax.metrics``, the input pipeline in ``ife_jax.data`` and training
in ``ife_jax.train``. Importing ``ife_jax`` itself loads JAX only.
"""

from ife_jax.ops import (
    CURVATURE_KERNEL,
    CURVATURE_KERNEL_3D,
    channel_scores,
    curvature_scores,
    enhance,
    entropy_scores,
    num_selected,
    select_channels,
    top_channels,
)

__version__ = "0.1.0"

__all__ = [
    "CURVATURE_KERNEL",
    "CURVATURE_KERNEL_3D",
    "__version__",
    "channel_scores",
    "curvature_scores",
    "enhance",
    "entropy_scores",
    "num_selected",
    "select_channels",
    "top_channels",
]
