"""A data source as in-memory NumPy arrays, for small experiments (Keras ``fit``, notebooks)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ife_jax.data.transforms import eval_transform, pad_to_square


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def to_arrays(source, *, size: int = 224, limit: int | None = None, progress: bool = True):
    """Every example of a random-access source through the evaluation transform.

    Images are padded to a centred square, normalised with the reference mean/std and resized
    to ``size``; masks get the same padding and resize (bilinear, soft edges in [0, 1]).

    Args:
      source: a random-access source of ``tfds_cosmos`` (``len(source)``, ``source[i]``).
      size: output side in pixels.
      limit: use only the first ``limit`` examples.
      progress: show a progress bar.

    Returns:
      ``dict(image=(N, size, size, 3) float32, mask=(N, size, size, 1) float32,
      modality=(N,) str, anatomy=(N,) str, image_id=(N,) str)``.

    Raises:
      ValueError: an empty source or a non-positive ``size``.
    """
    import cv2

    n = len(source) if limit is None else min(int(limit), len(source))
    if n <= 0:
        raise ValueError(f"the source holds no examples (len {len(source)}, limit {limit}).")
    if size <= 0:
        raise ValueError(f"size must be positive; got {size}.")
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.empty((n, size, size, 1), np.float32)
    names = {"modality": [], "anatomy": [], "image_id": []}
    for i in tqdm(range(n), desc="examples", disable=not progress, leave=False):
        record = source[i]
        images[i], _ = eval_transform(record["image"], size=size)
        mask, _, _ = pad_to_square(np.asarray(record["mask"]).reshape(record["image"].shape[:2]))
        mask = (mask > 0).astype(np.float32)
        masks[i, :, :, 0] = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
        for key in names:
            names[key].append(_text(record[key]))
    return dict(image=images, mask=masks, **{k: np.array(v) for k, v in names.items()})
