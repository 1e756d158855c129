"""The reference recipe's input sizes and augmentation settings: plain constants and a frozen
dataclass that need no optional package, so that :class:`ife_jax.train.config.TrainConfig` can be
built and checked without the ``data`` extra (the train step and its benchmarks on a machine
without grain or OpenCV). :mod:`ife_jax.data.transforms` applies them and exports the same names.
"""

from __future__ import annotations

import dataclasses

#: Reference training sizes: each batch is resized to one of these.
TRAIN_SIZES = (224, 256, 288, 320, 352, 384)
#: Reference evaluation size.
EVAL_SIZE = 224


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and limits of the training augmentation (defaults: the reference recipe).

    Attributes:
      p_intensity: probability of the intensity step (brightness/contrast, then CLAHE).
      p_brightness_contrast: probability of brightness/contrast inside it; ``limit`` its range.
      p_clahe: probability of CLAHE inside it; ``clahe_clip``, ``clahe_grid`` its settings.
      p_vflip, p_hflip: flip probabilities.
      p_rotate: probability of a rotation by an integer angle in ``[-max_angle, max_angle]``.
    """

    p_intensity: float = 0.9
    p_brightness_contrast: float = 0.5
    limit: float = 0.2
    p_clahe: float = 0.5
    clahe_clip: float = 1.5
    clahe_grid: int = 8
    p_vflip: float = 0.5
    p_hflip: float = 0.5
    p_rotate: float = 0.5
    max_angle: int = 90


REFERENCE_AUGMENT = AugmentConfig()  #: the reference recipe
NO_AUGMENT = AugmentConfig(
    p_intensity=0.0, p_vflip=0.0, p_hflip=0.0, p_rotate=0.0
)  #: padding and normalisation only
NO_ROTATION_AUGMENT = AugmentConfig(p_rotate=0.0)  #: the reference recipe without its rotation

#: The augmentations a training configuration names (``TrainConfig.augment``).
AUGMENTATIONS = {
    "reference": REFERENCE_AUGMENT,
    "no_rotation": NO_ROTATION_AUGMENT,
    "none": NO_AUGMENT,
}
