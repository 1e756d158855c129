"""Input checks and conversions shared by the metric modules (host NumPy arrays)."""

from __future__ import annotations

import math

import numpy as np

#: Empty-mask cases, as reported per image: neither mask empty, both empty, only the
#: prediction empty, only the ground truth empty.
EMPTY_CASES = ("none", "both", "pred", "gt")


def as_unit(x, *, name: str = "mask") -> tuple[np.ndarray, bool]:
    """A (H, W) map as float values in [0, 1], and whether it was given on the 0-255 scale.

    Booleans map to {0, 1}. A map whose maximum exceeds 1 is read as 0-255 and divided by 255.

    Raises:
      ValueError: ``x`` is not 2-D, is empty, holds NaN/inf, or values outside [0, 255].
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}.")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}.")
    if a.dtype == np.bool_:
        return a.astype(np.float64), False
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {a.dtype}.")
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} holds NaN or infinite values.")
    if lo < 0 or hi > 255:
        raise ValueError(f"{name} values must lie in [0, 1] or [0, 255], got [{lo}, {hi}].")
    if hi > 1:
        return a.astype(np.float64) / 255.0, True
    return a.astype(np.float64), False


def binarize(x, *, name: str = "mask") -> np.ndarray:
    """Foreground of a (H, W) map: ``> 0.5`` on [0, 1], ``> 128`` on 0-255 (the DIS rule).

    Booleans are returned unchanged (as a bool array).
    """
    a = np.asarray(x)
    if a.dtype == np.bool_:
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"{name} must be a non-empty 2-D (H, W) array, got {a.shape}.")
        return a
    u, was255 = as_unit(a, name=name)
    return u > (128.0 / 255.0 if was255 else 0.5)


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape.")


def normalize_spacing(spacing) -> tuple[float, float]:
    """``spacing`` (a number or a (row, column) pair) as two positive floats."""
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.shape == (1,):
        s = np.repeat(s, 2)
    if s.shape != (2,):
        raise ValueError(f"spacing must be a number or a (row, col) pair, got {spacing!r}.")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}.")
    return float(s[0]), float(s[1])


def image_diagonal(shape: tuple[int, int], spacing: tuple[float, float]) -> float:
    """Diagonal of the image extent, ``sqrt((H*sy)^2 + (W*sx)^2)``, in spacing units.

    It exceeds every distance between two pixels of the image: the stand-in for a distance
    when exactly one mask is empty.
    """
    return math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])


def empty_case(pred_bin: np.ndarray, gt_bin: np.ndarray) -> str:
    """One of :data:`EMPTY_CASES` for two boolean masks."""
    p, g = bool(pred_bin.any()), bool(gt_bin.any())
    if p and g:
        return "none"
    if not p and not g:
        return "both"
    return "pred" if not p else "gt"


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Bounding box of the True pixels grown by ``margin`` and clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)),
    )
