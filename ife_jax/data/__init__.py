"""Input pipeline: image files to arrays, reference-recipe transforms and grain loaders.

``read_image`` / ``read_mask`` are the one way a file becomes model input (``images``);
``make_train_loader`` builds the resumable grain training pipeline (``make_eval_loader``
and ``invert_eval_batch`` are deprecated: evaluation is ``ife_jax.train.inference``);
``transforms`` holds the per-example NumPy/OpenCV steps and the inverse evaluation mapping.
"""

from ife_jax._extras import missing_extra

try:
    import cv2  # noqa: F401
    import grain  # noqa: F401
    import PIL  # noqa: F401
    import tqdm  # noqa: F401
except ModuleNotFoundError as err:
    raise missing_extra(err, "data") from None

from ife_jax.data.arrays import to_arrays
from ife_jax.data.images import UnreadableImageError, read_image, read_mask
from ife_jax.data.loader import invert_eval_batch, make_eval_loader, make_train_loader
from ife_jax.data.transforms import (
    AUGMENTATIONS,
    EVAL_SIZE,
    MEAN,
    NO_AUGMENT,
    NO_ROTATION_AUGMENT,
    REFERENCE_AUGMENT,
    STD,
    TRAIN_SIZES,
    AugmentConfig,
    denormalize,
    eval_transform,
    invert_eval,
    normalize,
    pad_to_square,
    train_augment,
)

__all__ = [
    "AUGMENTATIONS",
    "EVAL_SIZE",
    "MEAN",
    "NO_AUGMENT",
    "NO_ROTATION_AUGMENT",
    "REFERENCE_AUGMENT",
    "STD",
    "TRAIN_SIZES",
    "AugmentConfig",
    "UnreadableImageError",
    "denormalize",
    "eval_transform",
    "invert_eval",
    "invert_eval_batch",
    "make_eval_loader",
    "make_train_loader",
    "normalize",
    "pad_to_square",
    "read_image",
    "read_mask",
    "to_arrays",
    "train_augment",
]
