"""Sliding-window inference as nnU-Net does it.

- **Windows** (:func:`window_starts`): along an axis of size ``n`` with patch ``p``, the
  ``k = ceil((n - p) / (step p)) + 1`` starts ``round(i (n - p) / (k - 1))`` (one start 0 when
  ``n <= p``; the case is zero-padded up to the patch first).
- **Weighting** (:func:`gaussian_weights`): a Gaussian centred on the patch with sigma 1/8 of
  the patch per axis, scaled to a maximum of 1, its zeros replaced by its smallest non-zero
  value; the prediction is ``sum_w g * logits_w / sum_w g``, so a constant network gives that
  constant everywhere, borders included.
- **Mirroring** (``mirror=True``): the logits are averaged over all ``2^d`` flips of the
  spatial axes.
- ``2d`` configurations run the windows of every slice; windows go through the network in
  batches of ``batch`` on the device.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """The window starts along one axis (module docstring)."""
    if size <= patch:
        return [0]
    k = math.ceil((size - patch) / (step * patch)) + 1
    actual = (size - patch) / (k - 1)
    return [int(round(actual * i)) for i in range(k)]


def gaussian_weights(patch, sigma_scale: float = 1 / 8) -> np.ndarray:
    """The importance map of one window (module docstring), float32 of shape ``patch``."""
    tmp = np.zeros(patch, np.float64)
    tmp[tuple(p // 2 for p in patch)] = 1.0
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], mode="constant", cval=0.0)
    g = g / g.max()
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32)


def sliding_window(
    apply_fn,
    image: np.ndarray,
    patch,
    *,
    num_classes: int,
    step: float = 0.5,
    mirror: bool = True,
    batch: int = 4,
) -> np.ndarray:
    """Logits ``(K, *S)`` of a ``(C, *S)`` image, ``apply_fn((B, *patch, C)) -> (B, *patch, K)``.

    Args:
      apply_fn: the network on a batch of windows (channels last).
      image: ``(C, *S)`` with ``len(patch)`` spatial axes.
      patch: the window size.
    """
    patch = tuple(int(p) for p in patch)
    dims = len(patch)
    shape = image.shape[1:]
    pad = [max(p - n, 0) for n, p in zip(shape, patch, strict=True)]
    lo = [p // 2 for p in pad]
    padded = np.pad(image, [(0, 0)] + [(a, p - a) for a, p in zip(lo, pad, strict=True)])
    full = padded.shape[1:]
    starts = list(
        itertools.product(*(window_starts(n, p, step) for n, p in zip(full, patch, strict=True)))
    )
    g = gaussian_weights(patch)
    logits = np.zeros((num_classes, *full), np.float32)
    weight = np.zeros(full, np.float32)
    flips = [()]
    if mirror:
        flips = [c for r in range(dims + 1) for c in itertools.combinations(range(dims), r)]

    def predict(windows):
        x = jnp.asarray(np.moveaxis(windows, 1, -1))
        out = 0.0
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            y = apply_fn(jnp.flip(x, ax) if ax else x)
            out = out + (jnp.flip(y, ax) if ax else y)
        return np.moveaxis(np.asarray(out / len(flips)), -1, 1)

    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        windows = np.stack(
            [
                padded[(slice(None), *(slice(s, s + p) for s, p in zip(st, patch, strict=True)))]
                for st in chunk
            ]
        )
        out = predict(windows)
        for st, o in zip(chunk, out, strict=True):
            where = tuple(slice(s, s + p) for s, p in zip(st, patch, strict=True))
            logits[(slice(None), *where)] += o * g
            weight[where] += g
    logits /= weight
    crop = tuple(slice(a, a + n) for a, n in zip(lo, shape, strict=True))
    return logits[(slice(None), *crop)]


def predict_volume(apply_fn, data: np.ndarray, config, *, step=0.5, mirror=True, batch=4):
    """Class probabilities (K, Z, Y, X) of a preprocessed (C, Z, Y, X) case."""
    k = config.num_classes
    if len(config.patch_size) == 3:
        logits = sliding_window(
            apply_fn, data, config.patch_size, num_classes=k, step=step, mirror=mirror, batch=batch
        )
    else:
        logits = np.stack(
            [
                sliding_window(
                    apply_fn,
                    data[:, z],
                    config.patch_size,
                    num_classes=k,
                    step=step,
                    mirror=mirror,
                    batch=batch,
                )
                for z in range(data.shape[1])
            ],
            axis=1,
        )
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=0))
