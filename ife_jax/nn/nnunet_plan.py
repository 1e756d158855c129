"""Deprecated: the 2-D image planner moved to :mod:`ife_jax.nnunet.image_plans`."""

import warnings

from ife_jax.nnunet.image_plans import (  # noqa: F401
    NORMALIZATIONS,
    PLAN_VERSION,
    REFERENCE_ACTIVATIONS,
    REFERENCE_BATCH,
    REFERENCE_MEMORY_GB,
    ChannelIntensity,
    Fingerprint,
    NNUNetPlan,
    activation_count,
    compute_fingerprint,
    default_ife_levels,
    folder_pairs,
    format_plan,
    normalize_image,
    plan_dataset,
    plan_from_fingerprint,
    pooling,
)

warnings.warn(
    "ife_jax.nn.nnunet_plan is deprecated; import from ife_jax.nnunet.image_plans.",
    DeprecationWarning,
    stacklevel=2,
)
