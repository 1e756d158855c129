"""The IFE ops: pure, jittable JAX functions over NHWC feature maps and NDHWC volumes."""

from ife_jax.ops._checks import num_selected
from ife_jax.ops.curvature import (
    CURVATURE_KERNEL,
    CURVATURE_KERNEL_3D,
    curvature_response,
    curvature_scores,
)
from ife_jax.ops.enhance import channel_scores, enhance
from ife_jax.ops.entropy import (
    DEFAULT_MEMORY_BUDGET,
    entropy_scores,
    fused_pair_values,
    neighbour_mean,
    reference_histogram,
)
from ife_jax.ops.selection import select_channels, top_channels

__all__ = [
    "CURVATURE_KERNEL",
    "CURVATURE_KERNEL_3D",
    "DEFAULT_MEMORY_BUDGET",
    "channel_scores",
    "curvature_response",
    "curvature_scores",
    "enhance",
    "entropy_scores",
    "fused_pair_values",
    "neighbour_mean",
    "num_selected",
    "reference_histogram",
    "select_channels",
    "top_channels",
]
