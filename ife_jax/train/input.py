"""Training and evaluation inputs as the loop consumes them.

The loop needs two things: a resumable iterator of training batches
(``{"image": (b, S, S, 3) float32, "mask": (b, S, S, 1) float32}``, ``get_state``/``set_state``,
``steps_per_epoch``, and ``first_images(n)`` when the BatchNorm statistics are recomputed
(``precise_bn_examples``); the grain loader of ``ife_jax.data`` through
``ife_jax.train.datasets.GrainTrainInput``) and a sequence of evaluation :class:`Example` at
their original size, which :mod:`ife_jax.train.inference` maps through the evaluation
transform and its inverse (those of ``ife_jax.data``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ife_jax.data import transforms


@dataclasses.dataclass
class Example:
    """One image and its mask at their original size.

    Attributes:
      image: (H, W, 3) uint8 RGB.
      mask: (H, W) uint8 in {0, 1}.
      image_id, modality, anatomy: identifiers used to group results.
    """

    image: np.ndarray
    mask: np.ndarray
    image_id: str = ""
    modality: str = ""
    anatomy: str = ""


def eval_transform(image: np.ndarray, size: int) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 -> (size, size, 3) float32 and the metadata its inverse needs."""
    return transforms.eval_transform(image, size=size)


def invert_eval_transform(prob: np.ndarray, meta: dict) -> np.ndarray:
    """(S, S) map from ``eval_transform``'s output -> the original image's (H, W)."""
    return transforms.invert_eval(prob, **meta)


def __getattr__(name: str):
    if name == "ArrayInput":
        raise AttributeError(
            "ife_jax.train.input.ArrayInput was removed (it served only the tests); give "
            "train_and_evaluate(inputs=...) any iterator of batches with steps_per_epoch, "
            "get_state() and set_state(), such as ife_jax.train.datasets.GrainTrainInput"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
