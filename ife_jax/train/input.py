"""Training and evaluation inputs as the loop consumes them.

The loop needs two things: a resumable iterator of training batches
(``{"image": (b, S, S, 3) float32, "mask": (b, S, S, 1) float32}``, ``get_state``/``set_state``,
``steps_per_epoch``) and a list of evaluation examples at their original size with the
evaluation transform and its inverse (those of ``ife_jax.data``). ``ArrayInput`` serves
examples held in memory (NumPy images and masks): every batch is a pure function of
``(seed, step)`` and each process takes its rows of every global batch, so any number of
processes trains exactly like one. Datasets on disk go through the grain loader of
``ife_jax.data`` instead (``ife_jax.train.datasets``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import cv2
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


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)


def eval_transform(image: np.ndarray, size: int) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 -> (size, size, 3) float32 and the metadata its inverse needs."""
    return transforms.eval_transform(image, size=size)


def invert_eval_transform(prob: np.ndarray, meta: dict) -> np.ndarray:
    """(S, S) map from ``eval_transform``'s output -> the original image's (H, W)."""
    return transforms.invert_eval(prob, **meta)


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
            image, _, _ = transforms.pad_to_square(ex.image)
            mask, _, _ = transforms.pad_to_square(ex.mask.astype(np.float32))
            flip = flips[self.process_index * self.local_batch_size + row]
            if flip[0]:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if flip[1]:
                image, mask = image[::-1], mask[::-1]
            images.append(transforms.normalize(_resize(np.ascontiguousarray(image), size)))
            masks.append(_resize(np.ascontiguousarray(mask), size)[..., None])
        return {"image": np.stack(images), "mask": np.stack(masks)}
