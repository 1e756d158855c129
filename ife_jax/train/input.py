"""Training and evaluation inputs as the loop consumes them.

The loop needs two things: a resumable iterator of training batches
(``{"image": (b, S, S, 3) float32, "mask": (b, S, S, 1) float32}``, ``get_state``/``set_state``,
``steps_per_epoch``) and a list of evaluation examples at their original size with the
evaluation transform and its inverse. ``ArrayInput`` provides both for examples held in memory
(NumPy images and masks); every batch is a pure function of ``(seed, step)``, so a restored
state gives exactly the next batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

#: The reference's normalisation, on 0-255 values.
MEAN = np.array([124.55, 118.90, 102.94], np.float32)
STD = np.array([56.77, 55.97, 57.50], np.float32)


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


def normalize(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> float32 with the reference mean and standard deviation."""
    return (image.astype(np.float32) - MEAN) / STD


def pad_to_square(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pads (H, W, ...) to a centred (L, L, ...) square, L = max(H, W); returns the offsets."""
    h, w = x.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side, *x.shape[2:]), x.dtype)
    out[top : top + h, left : left + w] = x
    return out, (top, left)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) float32: pad to a centred square, resize, normalise."""
    square, _ = pad_to_square(image)
    return normalize(_resize(square, size))


def invert_eval_transform(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S) map from ``eval_transform``'s output -> (height, width) map of the original image."""
    side = max(height, width)
    full = _resize(prob.astype(np.float32), side)
    top, left = (side - height) // 2, (side - width) // 2
    return full[top : top + height, left : left + width]


class ArrayInput:
    """Resumable training batches from in-memory examples, split over processes.

    Each epoch visits the examples in a fresh random order (incomplete last batch dropped);
    each batch is resized to one size drawn from ``sizes``; images and masks share a random
    horizontal and vertical flip. Process ``p`` of ``n`` gets rows ``[p*b, (p+1)*b)`` of every
    global batch of ``n*b`` rows.

    Args:
      examples: the training examples.
      global_batch_size: rows of a global batch.
      sizes: square training sizes.
      seed: order, sizes and flips.
      process_index, process_count: this process and how many read the data.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        global_batch_size: int,
        sizes: Sequence[int],
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch_size={global_batch_size} must be divisible by the number of processes "
                f"({process_count})"
            )
        if len(examples) < global_batch_size:
            raise ValueError(
                f"batch_size={global_batch_size} exceeds the {len(examples)} training examples"
            )
        self.examples = list(examples)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.sizes = tuple(int(s) for s in sizes)
        self.seed = seed
        self.process_index = process_index
        self.steps_per_epoch = len(self.examples) // global_batch_size
        self._step = 0

    def get_state(self) -> dict:
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        self._step = int(state["step"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self._step)
        self._step += 1
        return batch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        flips = rng.random((self.global_batch_size, 2)) < 0.5
        images, masks = [], []
        for row in range(self.local_batch_size):
            ex = self.examples[int(order[start + row])]
            image, _ = pad_to_square(ex.image)
            mask, _ = pad_to_square(ex.mask.astype(np.float32))
            flip = flips[self.process_index * self.local_batch_size + row]
            if flip[0]:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if flip[1]:
                image, mask = image[::-1], mask[::-1]
            images.append(normalize(_resize(np.ascontiguousarray(image), size)))
            masks.append(_resize(np.ascontiguousarray(mask), size)[..., None])
        return {"image": np.stack(images), "mask": np.stack(masks)}
