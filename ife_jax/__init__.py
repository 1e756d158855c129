"""ife-jax: Instructive Feature Enhancement for dichotomous medical image segmentation.

The IFE ops are re-exported here; models live in ``ife_jax.nn`` (Flax) and ``ife_jax.keras``
(Keras 3), metrics in ``ife_jax.metrics``, the input pipeline in ``ife_jax.data`` and training
in ``ife_jax.train``. Importing ``ife_jax`` itself loads JAX only; the subpackages that need
more name the extra to install (``pip install 'ife-jax[all]'`` installs every one).
"""

from importlib import metadata as _metadata

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

try:
    __version__ = _metadata.version("ife-jax")  # the version is set in pyproject.toml only
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

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
